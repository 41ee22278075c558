//! The driver: one named thread per pool that owns every worker process and pipe.
//!
//! The thread runs `async_io::block_on` over one future per worker slot, plus one future per
//! worker being stopped. A slot starts a worker, takes jobs from the pool's queue one at a
//! time, writes each to the worker and reads the reply, and starts a replacement whenever its
//! worker dies, misbehaves, or is stopped because its task was cancelled or timed out. The
//! queue is an MPMC channel, so an idle slot takes the next job the moment it is spawned.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};
use async_io::Timer;
use event_listener::Event;
use futures_lite::{future, AsyncBufReadExt, AsyncWriteExt, StreamExt};
use futures_util::stream::FuturesUnordered;

use crate::error::{Error, TaskError};
use crate::process::{forward_stderr, Lost, Process, Reply, Worker};
use crate::state::{finished, report_end, report_start, Completion, EndNotices, Tally};
use crate::trace;

/// How long a slot waits for a stopped worker to exit before it leaves the rest of the stop to
/// the background and starts a replacement.
const QUICK_EXIT: Duration = Duration::from_millis(2);

/// Longest pause between attempts to start a worker after failures.
const MAX_RESPAWN_BACKOFF: Duration = Duration::from_secs(1);

/// The name of the thread that drives a pool.
pub(crate) const THREAD_NAME: &str = "offload-driver";

thread_local! {
    /// Whether this thread is a pool's driver thread.
    static ON_DRIVER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Blocks the current thread on `future`, for the synchronous twins (`wait`, `map_blocking`).
///
/// # Panics
///
/// On a pool's driver thread (in a task callback), where it would wait for itself forever.
pub(crate) fn block_on<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    assert!(
        !ON_DRIVER.with(|flag| flag.get()),
        "{what} called on a pool's own thread (from a task callback), where it would wait forever"
    );
    futures_lite::future::block_on(future)
}

/// One task on its way to a worker.
pub(crate) struct Job {
    pub(crate) id: u64,
    /// The complete `Run` frame, arguments included.
    pub(crate) frame: Vec<u8>,
    pub(crate) task: Arc<dyn Completion>,
}

/// What a pool's handles and its driver share.
pub(crate) struct PoolState {
    /// Every task spawned and not yet reported ended, by id.
    live: Mutex<HashMap<u64, Arc<dyn Completion>>>,
    /// Ends that happened away from the driver, for it to report.
    notices: EndNotices,
    /// Set, and `stopped_event` notified, once every worker is reaped and the driver is gone.
    stopped: AtomicBool,
    stopped_event: Event,
    pub(crate) counters: Counters,
    pub(crate) tally: Arc<Tally>,
}

/// What [`PoolStats`](crate::PoolStats) reports, kept up to date by the driver.
#[derive(Default)]
pub(crate) struct Counters {
    /// Workers that passed the handshake and serve (or wait for) tasks.
    pub(crate) workers: AtomicUsize,
    /// Workers running a task.
    pub(crate) busy: AtomicUsize,
    /// Workers started in place of one that exited, died, was stopped or retired.
    pub(crate) replaced: AtomicU64,
}

/// Counts one up while it lives.
struct Gauge<'a>(&'a AtomicUsize);

impl<'a> Gauge<'a> {
    fn up(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Gauge(counter)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl PoolState {
    pub(crate) fn notices(&self) -> &EndNotices {
        &self.notices
    }

    pub(crate) fn register(&self, task: Arc<dyn Completion>) {
        self.live_tasks().insert(task.id(), task);
    }

    /// The tasks spawned and not yet reported ended.
    pub(crate) fn live(&self) -> Vec<Arc<dyn Completion>> {
        self.live_tasks().values().cloned().collect()
    }

    fn live_tasks(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<dyn Completion>>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until the driver has stopped and every worker is reaped.
    pub(crate) async fn stopped(&self) {
        loop {
            if self.stopped.load(Ordering::Acquire) {
                return;
            }
            let listener = self.stopped_event.listen();
            if self.stopped.load(Ordering::Acquire) {
                return;
            }
            listener.await;
        }
    }

    /// Reports the end of `task`: it leaves the live set and its callbacks run.
    pub(crate) fn ended(&self, task: &dyn Completion) {
        self.live_tasks().remove(&task.id());
        report_end(task);
    }
}

/// Starts the driver thread and its `workers` processes; returns the queue's sending side and
/// the state shared with the driver.
///
/// Workers are spawned by the driver thread itself, because `PR_SET_PDEATHSIG` fires when the
/// *thread* that forked a child exits: spawning from a caller's short-lived thread would kill
/// the workers with it.
pub(crate) fn start(options: Options) -> Result<(Sender<Job>, Arc<PoolState>), Error> {
    let (jobs, queue) = async_channel::unbounded();
    let (notices, notice_queue) = async_channel::unbounded();
    let state = Arc::new(PoolState {
        live: Mutex::new(HashMap::new()),
        notices,
        stopped: AtomicBool::new(false),
        stopped_event: Event::new(),
        counters: Counters::default(),
        tally: Arc::default(),
    });
    let (ready, started) = mpsc::sync_channel(1);
    let driver_state = state.clone();
    thread::Builder::new()
        .name(THREAD_NAME.into())
        .spawn(move || {
            ON_DRIVER.with(|flag| flag.set(true));
            let spawned: io::Result<Vec<Option<Process>>> = (0..options.workers)
                .map(|_| match options.on_demand {
                    true => Ok(None),
                    false => Process::spawn(options.memory_limit).map(Some),
                })
                .collect();
            match spawned {
                Ok(processes) => {
                    let _ = ready.send(Ok(()));
                    let run = run(processes, options, queue, notice_queue, &driver_state);
                    async_io::block_on(run);
                }
                // The processes spawned so far are killed and reaped by `kill_on_drop`.
                Err(err) => drop(ready.send(Err(err))),
            }
            driver_state.stopped.store(true, Ordering::Release);
            driver_state.stopped_event.notify(usize::MAX);
        })
        .map_err(Error::Spawn)?;
    match started.recv() {
        Ok(Ok(())) => Ok((jobs, state)),
        Ok(Err(err)) => Err(Error::Spawn(err)),
        Err(_) => Err(Error::Spawn(io::Error::other(
            "the driver thread ended early",
        ))),
    }
}

/// How a pool's driver runs its workers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    pub(crate) workers: usize,
    /// Replace a worker after it has run this many tasks.
    pub(crate) max_tasks_per_worker: Option<usize>,
    /// Start a worker only when a task is waiting for it, instead of at once and after every
    /// replacement.
    pub(crate) on_demand: bool,
    /// Cap each worker's address space (`RLIMIT_AS`) at this many bytes.
    pub(crate) memory_limit: Option<u64>,
}

/// What the slots of one driver share.
struct Driver {
    state: Arc<PoolState>,
    options: Options,
    /// Work done beside the slots: workers to stop or retire (so that their slots can start
    /// replacements at once) and worker stderr to forward.
    background: Sender<Background>,
}

/// Work for the driver beside its slots.
enum Background {
    /// Copy a worker's stderr to ours until it ends, watching for an allocation failure.
    ForwardStderr(LocalFuture),
    /// A worker whose task was cancelled or timed out: stop it within the cancel timeout.
    Stop {
        worker: Worker,
        task: Arc<dyn Completion>,
    },
    /// A worker that ran its share of tasks: let it exit.
    Retire(Worker),
}

type LocalFuture = Pin<Box<dyn Future<Output = Finished>>>;

/// What ended among the driver's futures.
enum Finished {
    Slot,
    Stopped,
}

/// The driver's whole life: all slots and all stopping workers, until the queue is closed and
/// drained and every worker is reaped.
async fn run(
    processes: Vec<Option<Process>>,
    options: Options,
    queue: Receiver<Job>,
    notice_queue: Receiver<Arc<dyn Completion>>,
    state: &Arc<PoolState>,
) {
    let (background, background_queue) = async_channel::unbounded::<Background>();
    let driver = Rc::new(Driver {
        state: state.clone(),
        options,
        background,
    });
    let mut slots = processes.len();
    let mut work: FuturesUnordered<LocalFuture> = processes
        .into_iter()
        .map(|process| Box::pin(slot(driver.clone(), process, queue.clone())) as LocalFuture)
        .collect();

    enum Event {
        Finished(Option<Finished>),
        Background(Box<Background>),
        Notice(Arc<dyn Completion>),
    }
    while slots > 0 || !work.is_empty() {
        let event = future::or(
            async { Event::Finished(work.next().await) },
            future::or(
                async {
                    match background_queue.recv().await {
                        Ok(errand) => Event::Background(Box::new(errand)),
                        Err(_) => future::pending().await,
                    }
                },
                async {
                    match notice_queue.recv().await {
                        Ok(task) => Event::Notice(task),
                        Err(_) => future::pending().await,
                    }
                },
            ),
        )
        .await;
        match event {
            Event::Finished(Some(Finished::Slot)) => slots -= 1,
            Event::Finished(Some(Finished::Stopped)) | Event::Finished(None) => {}
            Event::Background(errand) => match *errand {
                Background::Stop { worker, task } => {
                    let state = state.clone();
                    work.push(Box::pin(async move {
                        worker.finish_stop(task.options().cancel_timeout).await;
                        task.settle();
                        state.ended(&*task);
                        Finished::Stopped
                    }));
                }
                Background::ForwardStderr(forward) => work.push(forward),
                Background::Retire(worker) => {
                    work.push(Box::pin(async move {
                        worker.shut_down().await;
                        Finished::Stopped
                    }));
                }
            },
            Event::Notice(task) => state.ended(&*task),
        }
    }
    while let Ok(task) = notice_queue.try_recv() {
        state.ended(&*task);
    }
}

/// One worker place in the pool: serves jobs with successive worker processes.
async fn slot(driver: Rc<Driver>, first: Option<Process>, queue: Receiver<Job>) -> Finished {
    let counters = &driver.state.counters;
    let mut next = first.map(Ok);
    // A job taken from the queue before a worker existed for it (on-demand slots).
    let mut waiting: Option<Job> = None;
    let mut failures: u32 = 0;
    let mut replacing = false;
    loop {
        let process = match next.take() {
            Some(process) => process,
            None => {
                if driver.options.on_demand && waiting.is_none() {
                    match queue.recv().await {
                        Ok(job) if job.task.is_finished() => continue, // cancelled meanwhile
                        Ok(job) => waiting = Some(job),
                        Err(_) => return Finished::Slot,
                    }
                }
                Process::spawn(driver.options.memory_limit)
            }
        };
        let started = match process {
            Ok(process) => process.handshake().await,
            Err(err) => Err(err),
        };
        match started {
            Ok(mut worker) => {
                failures = 0;
                if let Some(stderr) = worker.stderr.take() {
                    let (saw, seen) = async_channel::bounded(1);
                    worker.out_of_memory = Some(seen);
                    let forward = Box::pin(async move {
                        let _ = saw.try_send(forward_stderr(stderr).await);
                        Finished::Stopped
                    });
                    let _ = driver
                        .background
                        .try_send(Background::ForwardStderr(forward));
                }
                if replacing {
                    counters.replaced.fetch_add(1, Ordering::Relaxed);
                    trace::worker_replaced(worker.pid);
                }
                match serve(&driver, worker, &queue, &mut waiting).await {
                    End::QueueClosed => return Finished::Slot,
                    End::Replace => replacing = true,
                }
            }
            Err(err) => {
                failures += 1;
                // A broken setup (say, `init()` missing from `main`) must fail tasks loudly
                // rather than leave them queued forever; one retry absorbs a transient error.
                if failures > 1 {
                    let job = match waiting.take() {
                        Some(job) => Ok(job),
                        None => queue.recv().await,
                    };
                    match job {
                        Ok(job) => {
                            job.task.fail(TaskError::Spawn(Arc::new(err)));
                            driver.state.ended(&*job.task);
                        }
                        Err(_) => return Finished::Slot,
                    }
                }
                let backoff = Duration::from_millis(10 << failures.min(7));
                Timer::after(backoff.min(MAX_RESPAWN_BACKOFF)).await;
            }
        }
        if !driver.options.on_demand {
            next = Some(Process::spawn(driver.options.memory_limit));
        }
    }
}

/// Why a worker stopped serving.
enum End {
    /// The queue is closed and empty; the worker was shut down.
    QueueClosed,
    /// The worker is gone or being stopped; a replacement is needed.
    Replace,
}

/// What happened while a worker was idle.
enum Idle {
    Job(Job),
    QueueClosed,
    /// The worker wrote something or closed its output without being asked.
    Worker(io::Result<usize>),
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
    mut worker: Worker,
    queue: &Receiver<Job>,
    waiting: &mut Option<Job>,
) -> End {
    let counters = &driver.state.counters;
    // Counts the worker while it serves; dropped the moment it is known to be lost.
    let mut serving = Some(Gauge::up(&counters.workers));
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
                    None => match wait_idle(&mut worker, queue).await {
                        Idle::Job(job) => job,
                        Idle::QueueClosed => {
                            worker.shut_down().await;
                            return End::QueueClosed;
                        }
                        Idle::Worker(Ok(0)) | Idle::Worker(Err(_)) => {
                            serving.take();
                            worker.bury().await;
                            return End::Replace;
                        }
                        Idle::Worker(Ok(_)) => {
                            serving.take();
                            worker.stop(Duration::ZERO, "it wrote while idle").await;
                            return End::Replace;
                        }
                    },
                };
                if !job.task.start(worker.pid) {
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

/// Waits for a job for an idle worker, or for the worker to write or end on its own.
async fn wait_idle(worker: &mut Worker, queue: &Receiver<Job>) -> Idle {
    future::or(
        async {
            match queue.recv().await {
                Ok(job) => Idle::Job(job),
                Err(_) => Idle::QueueClosed,
            }
        },
        async { Idle::Worker(worker.output.fill_buf().await.map(|b| b.len())) },
    )
    .await
}

/// Runs a started job on `worker` (writing its frame unless `written`). Returns the worker if
/// it can serve on, with the next job from `queue` already started when there was one, and
/// written when small: the worker then gets it before this job's result is handed out. Returns `None`
/// if the worker is gone or on its way out, in which case `serving` was dropped as soon as
/// that was known. The flag beside the next job says whether its frame was written.
async fn run_job<'a>(
    driver: &Driver,
    mut worker: Worker,
    job: Job,
    written: bool,
    queue: Option<&Receiver<Job>>,
    serving: &mut Option<Gauge<'a>>,
) -> Option<(Worker, Option<(Job, bool)>)> {
    let _busy = Gauge::up(&driver.state.counters.busy);
    let task = job.task;
    report_start(&*task);
    let timeout = task.options().timeout;
    let step = {
        let exchange = async {
            if !written && worker.input.write_all(&job.frame).await.is_err() {
                return Err(Lost::Died);
            }
            worker.reply(job.id).await
        };
        future::or(
            async { Step::Reply(exchange.await) },
            future::or(
                async {
                    finished(&*task).await;
                    Step::Ended
                },
                async {
                    match timeout {
                        Some(after) => {
                            Timer::after(after).await;
                            Step::TimedOut(after)
                        }
                        None => future::pending().await,
                    }
                },
            ),
        )
        .await
    };
    // The task ended when its reply arrived, whatever is done before it is handed out.
    let replied_at = Instant::now();
    drop(job.frame);
    let mut next = None;
    if let Step::Reply(Ok(_)) = step {
        // The worker is idle: give it the next job before handing this result out, if its
        // frame fits in the pipe at once (a larger one would delay this result).
        next = queue.and_then(next_started(worker.pid)).map(|job| {
            let write_now = job.frame.len() <= EARLY_WRITE;
            (job, write_now)
        });
        if let Some((next, true)) = &next {
            report_start(&*next.task);
            // A failed write shows as the worker's loss when its reply is read.
            let _ = worker.input.write_all(&next.frame).await;
        }
    }
    match step {
        Step::Reply(Ok(Reply::Done { payload_start })) => {
            task.replied(Ok(&worker.buf[payload_start..]), replied_at);
        }
        Step::Reply(Ok(Reply::Failed(error))) => {
            task.replied(Err(error), replied_at);
        }
        Step::Reply(Err(lost @ (Lost::Died | Lost::CutShort))) => {
            serving.take();
            let error = match (worker.bury().await, lost) {
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
            task.fail(error);
            task.settle();
            driver.state.ended(&*task);
            return None;
        }
        Step::Reply(Err(Lost::Broken(msg))) => {
            serving.take();
            worker.stop(Duration::ZERO, "it broke the protocol").await;
            task.fail(TaskError::Protocol(msg));
            task.settle();
            driver.state.ended(&*task);
            return None;
        }
        Step::Ended | Step::TimedOut(_) => {
            serving.take();
            if let Step::TimedOut(after) = step {
                task.fail(TaskError::TimedOut { after });
                driver.state.ended(&*task);
            }
            let grace = task.options().cancel_timeout;
            worker.begin_stop(grace, "its task was cancelled or timed out");
            // Most workers are gone a fraction of a millisecond after SIGTERM: reaped here,
            // the task settles before the replacement's start-up competes for the CPUs. One
            // that takes longer is stopped in the background, and the replacement starts now.
            if worker.exited_within(QUICK_EXIT).await {
                task.settle();
                driver.state.ended(&*task);
            } else {
                let _ = driver
                    .background
                    .try_send(Background::Stop { worker, task });
            }
            return None;
        }
    }
    task.settle();
    driver.state.ended(&*task);
    Some((worker, next))
}

/// The largest frame written to a worker before the result of its previous job is handed out:
/// one that small fits in any pipe buffer at once.
const EARLY_WRITE: usize = 64 * 1024;

/// Takes the next job from a queue that has one ready and starts it on worker `pid`,
/// skipping jobs that ended while queued.
fn next_started(pid: u32) -> impl FnOnce(&Receiver<Job>) -> Option<Job> {
    move |queue| loop {
        let job = queue.try_recv().ok()?;
        if job.task.start(pid) {
            return Some(job);
        }
    }
}
