//! A slot: one worker place in the pool, served by successive worker processes.
//!
//! A slot is a plain sequential loop: wait for its turn (the breaker, demand for an elastic
//! slot), start a worker (handshake, `init`); take jobs from the queue one at a time, send
//! each and wait for its reply; start a replacement whenever the worker dies, misbehaves, or
//! is stopped because its task was cancelled or timed out. The queue is an MPMC channel, so an
//! idle slot takes the next job the moment it is spawned.

use std::io;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future;

use super::backlog::Backlog;
use super::breaker::AfterFailure;
use super::driver::{Background, Driver, Finished};
use super::pipeline::{Pipeline, SLOW};
use super::state::Gauge;
use super::submit::Job;
use crate::error::TaskError;
use crate::supervise::{Ahead, Lost, Reply, Starting, WorkerLink};
use crate::sys::reactor::{sleep, sleep_until};
use crate::sys::wait::within;
use crate::task::shared::{report_start, until_finished};
use crate::task::TaskStatus;
use crate::trace;

/// How long a slot waits for a stopped worker to exit before it leaves the rest of the stop to
/// the background and starts a replacement.
const QUICK_EXIT: Duration = Duration::from_millis(2);

/// One worker place in the pool: serves jobs with successive worker processes.
///
/// A slot that is not `elastic` keeps a worker at all times (replacing it when it ends); an
/// elastic one starts a worker only when a task waits and no worker is idle for it, and
/// retires it after the pool's idle timeout.
pub(crate) async fn slot(
    driver: Rc<Driver>,
    mut first: Option<Starting>,
    elastic: bool,
) -> Finished {
    let queue = &driver.backlog;
    let state = &driver.state;
    let counters = &state.counters;
    // A job taken from the queue before a worker existed for it (on-demand slots, the
    // breaker's probe).
    let mut waiting: Option<Job> = None;
    let mut replacing = false;
    loop {
        // Whether this start is the breaker's probe.
        let mut probe = false;
        let starting = match first.take() {
            Some(starting) => Ok(starting),
            None => {
                match turn(&driver, elastic, &mut waiting).await {
                    Some(probing) => probe = probing,
                    None => return Finished::Slot,
                }
                driver.options.launch()
            }
        };
        let started = {
            let _starting = Gauge::up(&counters.starting);
            start(&driver, starting).await
        };
        match started {
            Ok(worker) => {
                // Set exactly while the breaker is open (since its trip).
                if state.startup_error().is_some() {
                    state.set_startup_error(None);
                }
                driver.breaker.succeeded();
                if replacing {
                    counters.replaced.fetch_add(1, Ordering::Relaxed);
                    trace::worker_replaced(worker.pid());
                }
                match serve(&driver, worker, elastic, &mut waiting).await {
                    End::QueueClosed => return Finished::Slot,
                    End::Replace => replacing = true,
                    End::Retired => replacing = false,
                }
            }
            Err(error) => {
                counters.start_failures.fetch_add(1, Ordering::Relaxed);
                match driver.breaker.failed(probe) {
                    AfterFailure::Retry(pause) => {
                        sleep(pause).await;
                    }
                    AfterFailure::Open => {}
                    AfterFailure::Tripped => {
                        // No task waits for a worker that cannot start: fail every queued one.
                        // Taken first, so that a task spawned by whoever sees these failures
                        // waits for the next attempt instead.
                        let queued = waiting.take().into_iter();
                        let queued: Vec<Job> = queued
                            .chain(std::iter::from_fn(|| queue.try_recv()))
                            .collect();
                        state.set_startup_error(Some(error.clone()));
                        for job in queued {
                            fail(&driver, job, &error);
                        }
                    }
                }
            }
        }
    }
}

/// Fails a job that no worker could be started for.
fn fail(driver: &Driver, job: Job, error: &TaskError) {
    if !job.task.is_finished() {
        job.task.finish_with_error(error.clone());
        driver.state.report_end(&*job.task);
    }
}

/// Waits until the slot may start a worker: at once for a fixed slot; for an on-demand one,
/// once it holds a job; for an elastic one, once more tasks wait than idle and starting
/// workers can take. While the breaker is open, only its probe starts a worker, holding a job,
/// after the back-off (or at once, if another start closed the breaker meanwhile). Returns
/// whether this start is the probe, or `None` when the queue is closed and drained.
async fn turn(driver: &Driver, elastic: bool, waiting: &mut Option<Job>) -> Option<bool> {
    let queue = &driver.backlog;
    let breaker = &driver.breaker;
    let counters = &driver.state.counters;
    // Whether this slot holds the breaker's probe.
    let mut probe = false;
    loop {
        let changed = breaker.listen();
        if let Some(until) = breaker.open_until() {
            if !probe && !breaker.take_probe() {
                // Another slot makes the next attempt: this one's job fails with the rest.
                if let Some(job) = waiting.take() {
                    let error = driver.state.startup_error();
                    fail(driver, job, &error.unwrap_or(TaskError::PoolClosed));
                }
                changed.await;
                continue;
            }
            probe = true;
            let demand = driver.state.demand.listen();
            if queue.is_closed() {
                // Shutting down while no worker can start: what is queued fails now instead
                // of waiting for the back-off and one more attempt.
                let error = driver
                    .state
                    .startup_error()
                    .unwrap_or(TaskError::PoolClosed);
                let queued = waiting.take().into_iter();
                for job in queued.chain(std::iter::from_fn(|| queue.try_recv())) {
                    fail(driver, job, &error);
                }
                breaker.drop_probe();
                return None;
            }
            let Some(job) = waiting.as_ref() else {
                let next = future::or(async { Some(next_live_job(queue).await) }, async {
                    changed.await;
                    None
                });
                match next.await {
                    Some(Some(job)) => *waiting = Some(job),
                    Some(None) => {
                        breaker.drop_probe();
                        return None;
                    }
                    None => {} // the breaker changed: look again
                }
                continue;
            };
            if Instant::now() >= until {
                return Some(true);
            }
            let back_off = async {
                sleep_until(until).await;
            };
            // A job cancelled during the back-off needs no worker; a closed queue, none at all.
            let job_ended = until_finished(&*job.task);
            future::or(back_off, future::or(job_ended, future::or(changed, demand))).await;
            if job.task.is_finished() {
                *waiting = None;
                breaker.drop_probe();
                probe = false;
            }
            continue;
        }
        // The breaker is closed (a success also ends any probe).
        if waiting.is_some() {
            return Some(false);
        }
        if driver.options.on_demand {
            match next_live_job(queue).await {
                Some(job) => *waiting = Some(job),
                None => return None,
            }
            continue;
        }
        if !elastic {
            return Some(false);
        }
        let demand = driver.state.demand.listen();
        if queue.is_drained() {
            return None;
        }
        let workers = counters.workers.load(Ordering::Relaxed);
        let idle = workers.saturating_sub(counters.busy.load(Ordering::Relaxed));
        let starting = counters.starting.load(Ordering::Relaxed);
        if queue.len() > idle + starting {
            return Some(false);
        }
        future::or(demand, changed).await;
    }
}

/// The next job of the queue that did not end while queued; `None` once it is closed and empty.
async fn next_live_job(queue: &Backlog) -> Option<Job> {
    loop {
        match queue.recv().await {
            Some(job) if job.task.is_finished() => continue, // cancelled meanwhile
            Some(job) => return Some(job),
            None => return None,
        }
    }
}

/// Completes a worker's start-up: handshake, the copy of its stderr, the pool's `init`.
async fn start(driver: &Driver, starting: io::Result<Starting>) -> Result<WorkerLink, TaskError> {
    let spawn_error = |err| TaskError::Spawn(Arc::new(err));
    let mut worker = starting
        .map_err(spawn_error)?
        .handshake()
        .await
        .map_err(spawn_error)?;
    if let Some(forward) = worker.forward_stderr() {
        let forward = Background::ForwardStderr(Box::pin(forward));
        let _ = driver.background.try_send(forward);
    }
    match driver.options.init {
        None => Ok(worker),
        Some(entry) => worker
            .initialize(entry, driver.options.init_timeout)
            .await
            .map_err(|message| TaskError::InitFailed { message }),
    }
}

/// Why a worker stopped serving.
enum End {
    /// The queue is closed and empty; the worker was shut down.
    QueueClosed,
    /// The worker is gone or being stopped; a replacement is needed.
    Replace,
    /// The worker of an elastic slot was idle for the idle timeout and was let go.
    Retired,
}

/// What happened while a worker was idle.
enum Idle {
    Job(Job),
    QueueClosed,
    /// The worker wrote something or closed its output without being asked.
    Worker(io::Result<usize>),
    /// The worker of an elastic slot was idle for the idle timeout.
    TimedOut,
}

/// What ended the wait for a running task.
enum Step {
    Reply(Result<Reply, Lost>),
    /// The task ended from outside: it was cancelled.
    Ended,
    TimedOut(Duration),
}

/// A job about to run on a worker.
struct Next {
    job: Job,
    /// Whether its frame was written already.
    written: bool,
    /// Whether it is piped: jobs may go ahead behind it.
    piped: bool,
}

/// Serves jobs (`waiting` first, then from the backlog) with `worker` until the queue closes,
/// the worker is lost, or it has served its share.
async fn serve(
    driver: &Driver,
    mut worker: WorkerLink,
    elastic: bool,
    waiting: &mut Option<Job>,
) -> End {
    let counters = &driver.state.counters;
    // Counts the worker while it serves; dropped the moment it is known to be lost.
    let mut serving = Some(Gauge::up(&counters.workers));
    driver.state.startup.notify(usize::MAX);
    let idle_timeout = driver.options.idle_timeout.filter(|_| elastic);
    let max_tasks = driver.options.max_tasks_per_worker;
    let pipeline = Pipeline::new(driver, worker.stopper());
    let mut served = 0;
    // Whether the last job of this worker ran quicker than `SLOW`: only then are jobs piped.
    let mut quick = false;
    // A job already started by the previous `run_job`.
    let mut following: Option<Next> = None;
    loop {
        let next = match following.take() {
            Some(next) => next,
            None if !pipeline.is_empty() => match next_ahead(&mut worker, &pipeline).await {
                Ok(Some(job)) => Next {
                    job,
                    written: true,
                    piped: true,
                },
                Ok(None) => continue, // every job ahead was withdrawn
                Err(lost) => {
                    serving.take();
                    pipeline.give_back_unstarted();
                    lose(worker, lost, None).await;
                    return End::Replace;
                }
            },
            None => {
                if max_tasks == Some(served) {
                    pipeline.give_back_unstarted();
                    let _ = driver.background.try_send(Background::Retire(worker));
                    return End::Replace;
                }
                let job = match waiting.take() {
                    Some(job) => job,
                    None => match wait_idle(driver, &mut worker, idle_timeout).await {
                        Idle::Job(job) => job,
                        Idle::TimedOut => {
                            serving.take();
                            let _ = driver.background.try_send(Background::Retire(worker));
                            return End::Retired;
                        }
                        Idle::QueueClosed => {
                            worker.shut_down().await;
                            return End::QueueClosed;
                        }
                        Idle::Worker(Ok(0)) | Idle::Worker(Err(_)) => {
                            serving.take();
                            worker.bury(None).await;
                            return End::Replace;
                        }
                        Idle::Worker(Ok(_)) => {
                            serving.take();
                            worker.stop(Duration::ZERO, "it wrote while idle").await;
                            return End::Replace;
                        }
                    },
                };
                if !start_job(&worker, &pipeline, &job) {
                    continue; // ended while queued
                }
                let piped = pipeline.worth_piping(quick, true);
                Next {
                    job,
                    written: false,
                    piped,
                }
            }
        };
        // How many more jobs the worker may take after this one.
        let room = max_tasks.map_or(usize::MAX, |max| max.saturating_sub(served + 1));
        match run_job(driver, worker, next, &pipeline, room, &mut serving).await {
            Some((kept, next, was_quick)) => {
                worker = kept;
                following = next;
                quick = was_quick;
            }
            None => {
                pipeline.give_back_unstarted();
                return End::Replace;
            }
        }
        served += 1;
    }
}

/// Marks `job` as started on `worker` (see [`AnyTask::start`]); returns `false` if it ended
/// while queued. While the worker holds no other job, its stopper is armed for the job and
/// given to it, so that a cancel signals the worker from the handle's thread.
///
/// [`AnyTask::start`]: crate::task::shared::AnyTask::start
fn start_job(worker: &WorkerLink, pipeline: &Pipeline<'_>, job: &Job) -> bool {
    let stopper = pipeline.arm(job.id);
    let started = job.task.start(worker.pid(), worker.host(), stopper);
    if !started && stopper.is_some() {
        pipeline.disarm(); // nothing could fire it: the task never had it
    }
    started
}

/// Waits for the worker to say which job sent ahead it starts, now that the job before them
/// answered. Returns it (marked as started, unless it was cancelled meanwhile), or `None` if
/// all were withdrawn.
async fn next_ahead(worker: &mut WorkerLink, pipeline: &Pipeline<'_>) -> Result<Option<Job>, Lost> {
    while !pipeline.is_empty() {
        match worker.ahead(pipeline).await? {
            Ahead::Started(id) => {
                let job = pipeline.started(id).map_err(Lost::Broken)?;
                // A task cancelled as it started still ran: `run_job` stops it.
                start_job(worker, pipeline, &job);
                return Ok(Some(job));
            }
            Ahead::Skipped => {} // the pipeline has it back
            Ahead::Answered => {
                return Err(Lost::Broken(
                    "an answer while no task ran on the worker".into(),
                ))
            }
        }
    }
    Ok(None)
}

/// How a worker was found after the job it ran ended from outside, and the jobs ahead of it
/// were withdrawn.
enum Withdrawn {
    /// It had answered, and started this job sent ahead: it serves on.
    MovedOn(Job),
    /// It had answered, and every job ahead was withdrawn: it is idle.
    Idle,
    /// Every job ahead was withdrawn, and it still runs the job.
    Busy,
    /// It did not say within [`WITHDRAW_WAIT`] whether it had started the jobs ahead.
    Unanswered,
    Lost(Lost),
}

/// How long a worker may take to answer the withdrawal of the jobs sent ahead.
const WITHDRAW_WAIT: Duration = Duration::from_secs(1);

/// Withdraws every job sent ahead to a worker whose job ended from outside, and finds out
/// what the worker is doing.
async fn withdraw(worker: &mut WorkerLink, pipeline: &Pipeline<'_>) -> Withdrawn {
    pipeline.withdraw_all();
    let withdrawn = async {
        if worker.send_ready(pipeline).await.is_err() {
            return Withdrawn::Lost(Lost::Died);
        }
        let mut answered = false;
        while !pipeline.is_empty() {
            match worker.ahead(pipeline).await {
                Ok(Ahead::Started(id)) => {
                    return match pipeline.started(id) {
                        Ok(job) => {
                            start_job(worker, pipeline, &job);
                            Withdrawn::MovedOn(job)
                        }
                        Err(msg) => Withdrawn::Lost(Lost::Broken(msg)),
                    }
                }
                Ok(Ahead::Skipped) => {}
                Ok(Ahead::Answered) => answered = true,
                Err(lost) => return Withdrawn::Lost(lost),
            }
        }
        match answered {
            true => Withdrawn::Idle,
            false => Withdrawn::Busy,
        }
    };
    within(WITHDRAW_WAIT, withdrawn)
        .await
        .unwrap_or(Withdrawn::Unanswered)
}

/// Waits for a job for an idle worker, or for the worker to write or end on its own, or for
/// `idle_timeout` to pass.
async fn wait_idle(
    driver: &Driver,
    worker: &mut WorkerLink,
    idle_timeout: Option<Duration>,
) -> Idle {
    let queue = &driver.backlog;
    if queue.len() == 0 {
        driver.went_idle.notify(usize::MAX);
    }
    let idle = future::or(
        async {
            match queue.recv().await {
                Some(job) => Idle::Job(job),
                None => Idle::QueueClosed,
            }
        },
        async { Idle::Worker(worker.unasked_output().await) },
    );
    match idle_timeout {
        // A job that arrives as the timeout passes stays queued: `recv` takes it only when
        // it completes.
        Some(limit) => within(limit, idle).await.unwrap_or(Idle::TimedOut),
        None => idle.await,
    }
}

/// Buries a worker that was lost (`serving` already dropped) and says how it went, for the
/// task it ran (`task`), if any.
async fn lose(
    worker: WorkerLink,
    lost: Lost,
    task: Option<&dyn crate::task::shared::AnyTask>,
) -> TaskError {
    let captured = task.and_then(|task| task.captured_stderr());
    match lost {
        Lost::Died | Lost::CutShort => match (worker.bury(captured).await, lost) {
            // Killed while writing: a death. Exiting mid-frame on its own: a broken frame.
            (
                TaskError::WorkerDied {
                    pid,
                    code: Some(code),
                    ..
                },
                Lost::CutShort,
            ) => TaskError::Protocol(format!(
                "worker {pid} exited with code {code} in the middle of a frame"
            )),
            (error, _) => error,
        },
        Lost::Broken(msg) => {
            worker.stop(Duration::ZERO, "it broke the protocol").await;
            TaskError::Protocol(msg)
        }
    }
}

/// Runs a started job on `worker` (writing its frame unless it was written), with the jobs
/// that `pipeline` sends ahead behind it if it is piped (up to `room` more for this worker).
/// Returns the worker if it can serve on, with the next job already started when there was
/// one, and whether this job was quick; returns `None` if the worker is gone or on its way
/// out, in which case `serving` was dropped as soon as that was known (the jobs still ahead
/// are the caller's to give back).
async fn run_job<'a>(
    driver: &Driver,
    mut worker: WorkerLink,
    next: Next,
    pipeline: &Pipeline<'_>,
    room: usize,
    serving: &mut Option<Gauge<'a>>,
) -> Option<(WorkerLink, Option<Next>, bool)> {
    let _busy = Gauge::up(&driver.state.counters.busy);
    let Next {
        job,
        written,
        piped,
    } = next;
    let task = job.task;
    // A job sent ahead and cancelled as its worker started it is not reported as started.
    if task.status() == TaskStatus::Running {
        report_start(&*task);
    }
    let timeout = task.options().timeout;
    let began = Instant::now();
    pipeline.job_started(job.id, piped, room);
    let step = {
        let exchange = async {
            if !written {
                let sent = match piped {
                    true => worker.send_piped(&job.frame).await,
                    false => worker.send(&job.frame).await,
                };
                if sent.is_err() {
                    return Err(Lost::Died);
                }
            }
            worker.reply(job.id, &*task, pipeline).await
        };
        let running = future::or(async { Step::Reply(exchange.await) }, async {
            until_finished(&*task).await;
            Step::Ended
        });
        match timeout {
            Some(after) => within(after, running)
                .await
                .unwrap_or(Step::TimedOut(after)),
            None => running.await,
        }
    };
    // A worker its task's handle stopped gets nothing more, even if its answer came first;
    // one seen dying (its output ended) is stopped as for any cancel, not buried as a death.
    let step = match (step, pipeline.disarm()) {
        (Step::Reply(_), true) => Step::Ended,
        (step, _) => step,
    };
    // The task ended when its reply arrived, whatever is done before it is handed out.
    let replied_at = Instant::now();
    let quick = replied_at - began < SLOW;
    pipeline.give_back_unsent();
    drop(job.frame);
    let mut next = None;
    if let (Step::Reply(Ok(_)), true) = (&step, pipeline.is_empty() && room > 0) {
        // The worker is idle: give it the next job before handing this result out, if its
        // frame fits in the pipe at once (a larger one would delay this result).
        next = next_live(&driver.backlog)
            .filter(|job| start_job(&worker, pipeline, job))
            .map(|job| (job, pipeline.worth_piping(quick, false)))
            .map(|(job, piped)| {
                let written = job.frame.len() <= EARLY_WRITE;
                Next {
                    job,
                    written,
                    piped,
                }
            });
        if let Some(next) = &next {
            if next.written {
                report_start(&*next.job.task);
                // A failed write shows as the worker's loss when its reply is read.
                let _ = match next.piped {
                    true => worker.send_piped(&next.job.frame).await,
                    false => worker.send(&next.job.frame).await,
                };
            }
        }
    }
    match step {
        Step::Reply(Ok(Reply::Done { payload_start })) => {
            task.finish_with_reply(Ok(worker.payload(payload_start)), replied_at);
        }
        Step::Reply(Ok(Reply::Failed(error))) => {
            task.finish_with_reply(Err(error), replied_at);
        }
        Step::Reply(Err(lost)) => {
            serving.take();
            pipeline.give_back_unstarted();
            let error = lose(worker, lost, Some(&*task)).await;
            task.finish_with_error(error);
            task.settle();
            driver.state.report_end(&*task);
            return None;
        }
        Step::Ended | Step::TimedOut(_) => {
            if let Step::TimedOut(after) = step {
                task.finish_with_error(TaskError::TimedOut { after });
                driver.state.report_end(&*task);
            }
            if !pipeline.is_empty() {
                // The worker may have gone on to a job sent ahead: that one must not be
                // stopped with it. Withdrawn first, then the worker says where it is.
                match withdraw(&mut worker, pipeline).await {
                    Withdrawn::MovedOn(job) => {
                        task.settle();
                        driver.state.report_end(&*task);
                        let next = Next {
                            job,
                            written: true,
                            piped: true,
                        };
                        return Some((worker, Some(next), false));
                    }
                    Withdrawn::Idle => {
                        task.settle();
                        driver.state.report_end(&*task);
                        return Some((worker, None, false));
                    }
                    Withdrawn::Busy => {}
                    Withdrawn::Unanswered => fail_unanswered(&worker, pipeline, driver),
                    Withdrawn::Lost(lost) => {
                        serving.take();
                        pipeline.give_back_unstarted();
                        lose(worker, lost, None).await;
                        task.settle();
                        driver.state.report_end(&*task);
                        return None;
                    }
                }
            }
            serving.take();
            let grace = task.options().cancel_timeout;
            worker
                .begin_stop(grace, "its task was cancelled or timed out")
                .await;
            // Most workers are gone a fraction of a millisecond after SIGTERM: reaped here,
            // the task settles before the replacement's start-up competes for the CPUs. One
            // that takes longer is stopped in the background, and the replacement starts now.
            if worker.exited_within(QUICK_EXIT).await {
                task.settle();
                driver.state.report_end(&*task);
            } else {
                let _ = driver
                    .background
                    .try_send(Background::Stop { worker, task });
            }
            return None;
        }
    }
    task.settle();
    driver.state.report_end(&*task);
    Some((worker, next, quick))
}

/// Fails the jobs still ahead on a worker that did not say whether it had started them: it is
/// stopped, and whether they ran is not known, so none is run again.
fn fail_unanswered(worker: &WorkerLink, pipeline: &Pipeline<'_>, driver: &Driver) {
    let pid = worker.pid();
    for job in pipeline.take_sent() {
        let error = TaskError::Protocol(format!(
            "worker {pid} did not say within {WITHDRAW_WAIT:?} whether it had started this \
             task, sent to it ahead, and was stopped"
        ));
        if job.task.finish_with_error(error) {
            driver.state.report_end(&*job.task);
        }
        job.task.settle();
    }
}

/// The largest frame written to a worker before the result of its previous job is handed out:
/// one that small fits in any pipe buffer at once.
const EARLY_WRITE: usize = 64 * 1024;

/// The next job of the backlog that did not end while queued, if one is ready.
fn next_live(queue: &Backlog) -> Option<Job> {
    loop {
        let job = queue.try_recv()?;
        if !job.task.is_finished() {
            return Some(job);
        }
    }
}
