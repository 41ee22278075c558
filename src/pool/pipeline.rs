//! A worker's pipeline: jobs sent ahead to a worker while it runs another, so that a worker
//! of a busy pool goes from one quick task to the next without waiting for the parent.
//!
//! A job sent ahead stays queued (its status, its place in `stats()`) until the worker says
//! `Started` as it begins it, right after the answer to the job before it; only then does it
//! run (its pid, its start time, its timeout). Until then the pool may withdraw it (`Skip`):
//! when it is cancelled, when the job before it has run for [`SLOW`] (it then goes to
//! whichever worker is free first), and before its worker is stopped. A worker that dies or is
//! stopped has started none of the jobs whose `Started` did not arrive (the pipe keeps what it
//! wrote before it went), so they go back to the pool, in front of the queue, for another
//! worker. docs/architecture.md has the whole argument.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future;

use super::driver::Driver;
use super::submit::Job;
use crate::protocol::{frame, ToWorker};
use crate::supervise::{piped_marker, Feed, ATOMIC_WRITE};
use crate::sys::signal::Stopper;

/// The most jobs sent ahead to one worker.
pub(crate) const DEPTH: usize = 64;

/// Jobs are sent ahead once this few or fewer are out, so that each write carries several.
const REFILL: usize = DEPTH / 2;

/// A job that has run this long is slow: no more jobs are sent ahead behind it, those sent
/// are withdrawn for the first worker that is idle, and none are sent behind the next job of
/// its worker until one runs quicker.
pub(crate) const SLOW: Duration = Duration::from_millis(1);

/// The jobs sent ahead to one worker, and what is to be written about them.
pub(crate) struct Pipeline<'a> {
    driver: &'a Driver,
    /// What lets the handle of the job the worker runs alone stop the worker (a local one).
    stopper: Option<Arc<Stopper>>,
    state: RefCell<State>,
    /// How many more jobs the worker may be given (its share under `max_tasks_per_worker`).
    room: Cell<usize>,
}

#[derive(Default)]
struct State {
    /// Jobs sent ahead, in order, each with whether its withdrawal was asked.
    sent: VecDeque<(Job, bool)>,
    /// What [`Feed::next`] returned that is not known to be written.
    unsent: Option<Unsent>,
    /// Whether jobs may be sent ahead: the running job was piped and is not slow yet.
    open: bool,
    /// When the running job turns slow, and whether it has.
    slow_at: Option<Instant>,
    slow: bool,
    /// Withdraw every job sent ahead: the running job is slow and a worker is idle, or it
    /// ended from outside.
    withdraw: bool,
    /// [`Driver::ends_away`] when the jobs sent ahead were last checked for cancels.
    ends_seen: u64,
    /// The id of the job the worker runs.
    running: u64,
}

/// Frames returned by [`Feed::next`] and not yet written: the jobs and withdrawals in them.
struct Unsent {
    frames: Vec<u8>,
    jobs: Vec<Job>,
    skips: Vec<u64>,
}

impl<'a> Pipeline<'a> {
    pub(crate) fn new(driver: &'a Driver, stopper: Option<Arc<Stopper>>) -> Self {
        Pipeline {
            driver,
            stopper,
            state: RefCell::new(State::default()),
            room: Cell::new(usize::MAX),
        }
    }

    /// Arms the worker's stopper for job `id`, which it runs, if it holds no job ahead:
    /// returns the stopper for the job's handle.
    pub(crate) fn arm(&self, id: u64) -> Option<&Arc<Stopper>> {
        let stopper = self.stopper.as_ref().filter(|_| self.is_empty())?;
        stopper.arm(id);
        Some(stopper)
    }

    /// Disarms the worker's stopper before the worker may begin another job; returns whether
    /// a handle stopped the worker (it must then be given nothing more).
    pub(crate) fn disarm(&self) -> bool {
        self.stopper
            .as_ref()
            .is_some_and(|stopper| stopper.disarm())
    }

    /// Whether no job is out ahead.
    pub(crate) fn is_empty(&self) -> bool {
        self.state.borrow().sent.is_empty()
    }

    /// Whether the job this worker takes now is worth piping (jobs then go ahead behind
    /// it): its last job was quick, more jobs wait than the other idle workers can take, and
    /// the launcher carries a pipeline well.
    /// `idle` says whether this worker is counted as idle.
    pub(crate) fn worth_piping(&self, last_was_quick: bool, idle: bool) -> bool {
        let others_idle = self.idle_workers().saturating_sub(usize::from(idle));
        last_was_quick
            && self.driver.backlog.len() > others_idle
            && self.driver.options.launcher.pipelines()
    }

    /// Whether an elastic slot may still start a worker (for the jobs that wait).
    fn can_grow(&self) -> bool {
        let counters = &self.driver.state.counters;
        let workers = counters.workers.load(Ordering::Relaxed);
        workers + counters.starting.load(Ordering::Relaxed) < self.driver.options.workers
    }

    fn idle_workers(&self) -> usize {
        let counters = &self.driver.state.counters;
        let workers = counters.workers.load(Ordering::Relaxed);
        workers.saturating_sub(counters.busy.load(Ordering::Relaxed))
    }

    /// Job `id` starts on the worker: if it is `piped`, jobs may be sent ahead behind it (up
    /// to `room` more for this worker) until it turns slow.
    pub(crate) fn job_started(&self, id: u64, piped: bool, room: usize) {
        let mut state = self.state.borrow_mut();
        state.running = id;
        state.open = piped;
        state.slow_at = piped.then(|| Instant::now() + SLOW);
        state.slow = false;
        state.withdraw = false;
        self.room.set(room);
    }

    /// The running job ended from outside (cancelled, timed out): withdraw everything.
    pub(crate) fn withdraw_all(&self) {
        let mut state = self.state.borrow_mut();
        state.open = false;
        state.withdraw = true;
    }

    /// The worker started job `id`: the first sent ahead, which leaves the pipeline.
    pub(crate) fn started(&self, id: u64) -> Result<Job, String> {
        let mut state = self.state.borrow_mut();
        match state.sent.front() {
            Some((job, _)) if job.id == id => {
                let (job, _) = state.sent.pop_front().expect("just seen");
                self.count_out(1);
                job.task.send_ahead(false);
                Ok(job)
            }
            _ => Err(format!(
                "Started for task {id}, which is not the next sent ahead"
            )),
        }
    }

    /// Gives back to the pool every job of this pipeline that has not started: after the
    /// worker is gone (what it did not confirm it did not start), and what was never written.
    /// Jobs that ended meanwhile (cancelled) are settled instead.
    pub(crate) fn give_back_unstarted(&self) {
        let mut state = self.state.borrow_mut();
        self.count_out(state.sent.len());
        let sent = std::mem::take(&mut state.sent)
            .into_iter()
            .map(|(job, _)| job);
        let unsent = state.unsent.take().map(|u| u.jobs).unwrap_or_default();
        let jobs: Vec<Job> = sent.chain(unsent).collect();
        drop(state);
        self.give_back(jobs);
    }

    /// Takes the jobs sent ahead, whose fate is not known; gives back the rest.
    pub(crate) fn take_sent(&self) -> Vec<Job> {
        let sent = std::mem::take(&mut self.state.borrow_mut().sent);
        self.count_out(sent.len());
        self.give_back_unstarted();
        sent.into_iter().map(|(job, _)| job).collect()
    }

    /// Gives back what was taken for the pipeline and never written (the reply came first).
    pub(crate) fn give_back_unsent(&self) {
        let mut state = self.state.borrow_mut();
        let Some(unsent) = state.unsent.take() else {
            return;
        };
        if !unsent.skips.is_empty() {
            // Withdrawals not written: looked for again next time.
            state.ends_seen = u64::MAX;
        }
        drop(state);
        self.give_back(unsent.jobs);
    }

    /// Counts `n` jobs sent ahead as no longer out (started, withdrawn, given back).
    fn count_out(&self, n: usize) {
        let counter = &self.driver.state.counters.sent_ahead;
        counter.fetch_sub(n, Ordering::Relaxed);
    }

    fn give_back(&self, jobs: Vec<Job>) {
        let mut live = Vec::with_capacity(jobs.len());
        for job in jobs {
            job.task.send_ahead(false);
            if job.task.is_finished() {
                job.task.settle();
            } else {
                live.push(job);
            }
        }
        if !live.is_empty() {
            self.driver.backlog.give_back(live);
            self.driver.state.demand.notify(usize::MAX);
        }
    }

    /// Builds what is to be written now: withdrawals, then jobs sent ahead.
    fn frames(&self) -> Option<Vec<u8>> {
        let mut state = self.state.borrow_mut();
        if let Some(unsent) = &state.unsent {
            return Some(unsent.frames.clone());
        }
        let state = &mut *state;
        if !state.slow && state.slow_at.is_some_and(|at| Instant::now() >= at) {
            state.slow = true;
            state.open = false;
        }
        if state.slow && !state.sent.is_empty() && (self.idle_workers() > 0 || self.can_grow()) {
            state.withdraw = true;
        }
        let mut frames = Vec::new();
        let mut skips = Vec::new();
        // Jobs sent ahead end only by a cancel, which the driver counts.
        let ends_away = self.driver.ends_away.get();
        let cancels = std::mem::replace(&mut state.ends_seen, ends_away) != ends_away;
        for (job, asked) in &state.sent {
            if !*asked && (state.withdraw || (cancels && job.task.is_finished())) {
                frames.extend_from_slice(&frame::frame(&ToWorker::Skip { id: job.id }));
                skips.push(job.id);
            }
        }
        let mut jobs = Vec::new();
        // An idle worker takes the next job itself: it must not wait behind this one.
        if state.open && state.sent.len() <= REFILL && self.idle_workers() == 0 && !self.can_grow()
        {
            let room = self.room.get().saturating_sub(state.sent.len());
            // The last job spawned that this worker runs or holds: jobs go ahead in spawning
            // order, so it is the running one or the last one sent.
            let mut latest = state
                .sent
                .back()
                .map_or(state.running, |(job, _)| job.id.max(state.running));
            while state.sent.len() + jobs.len() < DEPTH.min(room) {
                let Some(job) = self.driver.backlog.try_recv() else {
                    break;
                };
                if job.task.is_finished() {
                    continue; // cancelled while queued
                }
                // A job spawned before the last one this worker runs or holds was given back
                // (its worker died, or it was withdrawn): it goes to the next free worker,
                // never behind a later job, which could keep it waiting without end while
                // every worker runs jobs spawned after it.
                if job.id < latest {
                    self.driver.backlog.give_back([job]);
                    break;
                }
                // The first job ahead: from now on the worker holds more than the job it runs.
                if jobs.is_empty() && state.sent.is_empty() && self.disarm() {
                    self.driver.backlog.give_back([job]);
                    break; // its handle stopped it
                }
                let marker = piped_marker(true);
                if frames.len() + marker.len() + job.frame.len() > ATOMIC_WRITE {
                    // First in line for the next write, or for a free worker; a job too
                    // large to go ahead ends the pipeline.
                    if jobs.is_empty() && frames.is_empty() {
                        state.open = false;
                    }
                    self.driver.backlog.give_back([job]);
                    break;
                }
                frames.extend_from_slice(marker);
                frames.extend_from_slice(&job.frame);
                job.task.send_ahead(true);
                latest = job.id;
                jobs.push(job);
            }
        }
        if frames.is_empty() {
            return None;
        }
        state.unsent = Some(Unsent {
            frames: frames.clone(),
            jobs,
            skips,
        });
        Some(frames)
    }

    /// Waits until there may be something to write: a job sent ahead ended, the running job
    /// turns slow, a worker goes idle while it is, or a job is queued while there is room
    /// ahead.
    async fn changed(&self) {
        let (slow_at, wants_idle, wants_jobs) = {
            let state = self.state.borrow();
            let out = !state.sent.is_empty() && !state.withdraw;
            (
                state.slow_at.filter(|_| !state.slow && out),
                state.slow && out,
                state.open && state.sent.len() <= REFILL && state.sent.len() < self.room.get(),
            )
        };
        let ended = self.driver.ended_away.listen();
        let idle = async {
            match wants_idle {
                true => self.driver.went_idle.listen().await,
                false => future::pending().await,
            }
        };
        let slow = async {
            match slow_at {
                Some(at) => crate::sys::reactor::sleep_until(at).await,
                None => future::pending().await,
            }
        };
        let queued = async {
            if !wants_jobs || self.idle_workers() > 0 || self.can_grow() {
                return future::pending().await;
            }
            // `recv` loses nothing when dropped unfinished; a job it takes goes back in front
            // at once, for `frames` to take (or a worker that went idle meanwhile).
            match self.driver.backlog.recv().await {
                Some(job) => self.driver.backlog.give_back([job]),
                None => future::pending().await,
            }
        };
        future::or(future::or(ended, idle), future::or(slow, queued)).await;
    }
}

impl Feed for Pipeline<'_> {
    async fn next(&self) -> Vec<u8> {
        loop {
            if let Some(frames) = self.frames() {
                return frames;
            }
            self.changed().await;
        }
    }

    fn written(&self) {
        let mut state = self.state.borrow_mut();
        let Some(unsent) = state.unsent.take() else {
            return;
        };
        for id in unsent.skips {
            if let Some((_, asked)) = state.sent.iter_mut().find(|(job, _)| job.id == id) {
                *asked = true;
            }
        }
        let counter = &self.driver.state.counters.sent_ahead;
        counter.fetch_add(unsent.jobs.len(), Ordering::Relaxed);
        state
            .sent
            .extend(unsent.jobs.into_iter().map(|job| (job, false)));
    }

    fn skipped(&self, id: u64) -> Result<(), String> {
        let mut state = self.state.borrow_mut();
        let Some(at) = state.sent.iter().position(|(job, _)| job.id == id) else {
            return Err(format!("Skipped for task {id}, which was not sent ahead"));
        };
        let (job, _) = state.sent.remove(at).expect("just found");
        drop(state);
        self.count_out(1);
        self.give_back(vec![job]);
        Ok(())
    }
}
