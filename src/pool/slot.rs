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

use async_channel::Receiver;
use async_io::Timer;
use futures_lite::future;

use super::breaker::AfterFailure;
use super::driver::{Background, Driver, Finished};
use super::state::Gauge;
use super::submit::Job;
use crate::error::TaskError;
use crate::supervise::{Lost, Reply, Starting, WorkerLink};
use crate::sys::wait::within;
use crate::task::shared::{report_start, until_finished};
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
    queue: Receiver<Job>,
) -> Finished {
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
                match turn(&driver, elastic, &queue, &mut waiting).await {
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
                match serve(&driver, worker, elastic, &queue, &mut waiting).await {
                    End::QueueClosed => return Finished::Slot,
                    End::Replace => replacing = true,
                    End::Retired => replacing = false,
                }
            }
            Err(error) => {
                counters.start_failures.fetch_add(1, Ordering::Relaxed);
                match driver.breaker.failed(probe) {
                    AfterFailure::Retry(pause) => {
                        Timer::after(pause).await;
                    }
                    AfterFailure::Open => {}
                    AfterFailure::Tripped => {
                        // No task waits for a worker that cannot start: fail every queued one.
                        // Taken first, so that a task spawned by whoever sees these failures
                        // waits for the next attempt instead.
                        let queued = waiting.take().into_iter();
                        let queued: Vec<Job> = queued
                            .chain(std::iter::from_fn(|| queue.try_recv().ok()))
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
async fn turn(
    driver: &Driver,
    elastic: bool,
    queue: &Receiver<Job>,
    waiting: &mut Option<Job>,
) -> Option<bool> {
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
                for job in queued.chain(std::iter::from_fn(|| queue.try_recv().ok())) {
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
                Timer::at(until).await;
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
        if queue.is_closed() && queue.is_empty() {
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
async fn next_live_job(queue: &Receiver<Job>) -> Option<Job> {
    loop {
        match queue.recv().await {
            Ok(job) if job.task.is_finished() => continue, // cancelled meanwhile
            Ok(job) => return Some(job),
            Err(_) => return None,
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

/// Serves jobs (`waiting` first, then from `queue`) with `worker` until the queue closes, the
/// worker is lost, or it has served its share.
async fn serve(
    driver: &Driver,
    mut worker: WorkerLink,
    elastic: bool,
    queue: &Receiver<Job>,
    waiting: &mut Option<Job>,
) -> End {
    let counters = &driver.state.counters;
    // Counts the worker while it serves; dropped the moment it is known to be lost.
    let mut serving = Some(Gauge::up(&counters.workers));
    driver.state.startup.notify(usize::MAX);
    let idle_timeout = driver.options.idle_timeout.filter(|_| elastic);
    let mut served = 0;
    // A job already started by the previous `run_job`, and whether it was written.
    let mut following: Option<(Job, bool)> = None;
    loop {
        let (job, written) = match following.take() {
            Some(following) => following,
            None => {
                if driver.options.max_tasks_per_worker == Some(served) {
                    let _ = driver.background.try_send(Background::Retire(worker));
                    return End::Replace;
                }
                let job = match waiting.take() {
                    Some(job) => job,
                    None => match wait_idle(&mut worker, queue, idle_timeout).await {
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
                if !job.task.start(worker.pid(), worker.host()) {
                    continue; // ended while queued
                }
                (job, false)
            }
        };
        // The next job may follow this one only while the worker may take it.
        let may_follow = driver
            .options
            .max_tasks_per_worker
            .map_or(true, |max| served + 2 <= max);
        let queue = may_follow.then_some(queue);
        match run_job(driver, worker, job, written, queue, &mut serving).await {
            Some((kept, next)) => {
                worker = kept;
                following = next;
            }
            None => return End::Replace,
        }
        served += 1;
    }
}

/// Waits for a job for an idle worker, or for the worker to write or end on its own, or for
/// `idle_timeout` to pass.
async fn wait_idle(
    worker: &mut WorkerLink,
    queue: &Receiver<Job>,
    idle_timeout: Option<Duration>,
) -> Idle {
    let idle = future::or(
        async {
            match queue.recv().await {
                Ok(job) => Idle::Job(job),
                Err(_) => Idle::QueueClosed,
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

/// Runs a started job on `worker` (writing its frame unless `written`). Returns the worker if
/// it can serve on, with the next job from `queue` already started when there was one, and
/// written when small: the worker then gets it before this job's result is handed out. Returns `None`
/// if the worker is gone or on its way out, in which case `serving` was dropped as soon as
/// that was known. The flag beside the next job says whether its frame was written.
async fn run_job<'a>(
    driver: &Driver,
    mut worker: WorkerLink,
    job: Job,
    written: bool,
    queue: Option<&Receiver<Job>>,
    serving: &mut Option<Gauge<'a>>,
) -> Option<(WorkerLink, Option<(Job, bool)>)> {
    let _busy = Gauge::up(&driver.state.counters.busy);
    let task = job.task;
    report_start(&*task);
    let timeout = task.options().timeout;
    let step = {
        let exchange = async {
            if !written && worker.send(&job.frame).await.is_err() {
                return Err(Lost::Died);
            }
            worker.reply(job.id, &*task).await
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
    // The task ended when its reply arrived, whatever is done before it is handed out.
    let replied_at = Instant::now();
    drop(job.frame);
    let mut next = None;
    if let Step::Reply(Ok(_)) = step {
        // The worker is idle: give it the next job before handing this result out, if its
        // frame fits in the pipe at once (a larger one would delay this result).
        next = queue.and_then(next_started(&worker)).map(|job| {
            let write_now = job.frame.len() <= EARLY_WRITE;
            (job, write_now)
        });
        if let Some((next, true)) = &next {
            report_start(&*next.task);
            // A failed write shows as the worker's loss when its reply is read.
            let _ = worker.send(&next.frame).await;
        }
    }
    match step {
        Step::Reply(Ok(Reply::Done { payload_start })) => {
            task.finish_with_reply(Ok(worker.payload(payload_start)), replied_at);
        }
        Step::Reply(Ok(Reply::Failed(error))) => {
            task.finish_with_reply(Err(error), replied_at);
        }
        Step::Reply(Err(lost @ (Lost::Died | Lost::CutShort))) => {
            serving.take();
            let error = match (worker.bury(task.captured_stderr()).await, lost) {
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
            };
            task.finish_with_error(error);
            task.settle();
            driver.state.report_end(&*task);
            return None;
        }
        Step::Reply(Err(Lost::Broken(msg))) => {
            serving.take();
            worker.stop(Duration::ZERO, "it broke the protocol").await;
            task.finish_with_error(TaskError::Protocol(msg));
            task.settle();
            driver.state.report_end(&*task);
            return None;
        }
        Step::Ended | Step::TimedOut(_) => {
            serving.take();
            if let Step::TimedOut(after) = step {
                task.finish_with_error(TaskError::TimedOut { after });
                driver.state.report_end(&*task);
            }
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
    Some((worker, next))
}

/// The largest frame written to a worker before the result of its previous job is handed out:
/// one that small fits in any pipe buffer at once.
const EARLY_WRITE: usize = 64 * 1024;

/// Takes the next job from a queue that has one ready and starts it on worker `pid`,
/// skipping jobs that ended while queued.
fn next_started(worker: &WorkerLink) -> impl FnOnce(&Receiver<Job>) -> Option<Job> + '_ {
    move |queue| loop {
        let job = queue.try_recv().ok()?;
        if job.task.start(worker.pid(), worker.host()) {
            return Some(job);
        }
    }
}
