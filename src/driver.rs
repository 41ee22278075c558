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
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock, PoisonError};
use std::thread;
use std::time::Duration;

use async_channel::{Receiver, Sender};
use async_io::Timer;
use async_process::{Child, ChildStderr, ChildStdin, ChildStdout};
use event_listener::Event;
use futures_lite::io::BufReader;
use futures_lite::{future, AsyncBufReadExt, AsyncWriteExt, StreamExt};
use futures_util::stream::FuturesUnordered;

use crate::entry::build_id;
use crate::error::{Error, TaskError};
use crate::kill::{self, Pidfd};
use crate::state::{finished, report_end, report_start, Completion, EndNotices, Tally};
use crate::trace;
use crate::wire::{self, CodecFailure, FromWorker, ToWorker};

/// How long a new worker may take to answer the handshake before it is killed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a worker that closed its output, or was asked to shut down, may take to exit
/// before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// Longest pause between attempts to start a worker after failures.
const MAX_RESPAWN_BACKOFF: Duration = Duration::from_secs(1);

/// The name of the thread that drives a pool.
pub(crate) const THREAD_NAME: &str = "offload-driver";

thread_local! {
    /// Whether this thread is a pool's driver thread.
    static ON_DRIVER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the current thread is a pool's driver thread (where callbacks run).
pub(crate) fn on_driver_thread() -> bool {
    ON_DRIVER.with(|flag| flag.get())
}

/// Size of the buffer in front of each worker's output pipe.
const READ_BUFFER: usize = 64 * 1024;

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

    pub(crate) fn unregister(&self, id: u64) {
        self.live_tasks().remove(&id);
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
    fn ended(&self, task: &dyn Completion) {
        self.unregister(task.id());
        report_end(task);
    }
}

/// The executable a worker is started from: `/proc/self/exe` where it exists, which still
/// names this process's file after a rebuild replaced it on disk.
pub(crate) fn worker_program() -> &'static Path {
    static PROGRAM: OnceLock<PathBuf> = OnceLock::new();
    PROGRAM.get_or_init(|| {
        let proc_exe = Path::new("/proc/self/exe");
        if proc_exe.exists() {
            proc_exe.to_path_buf()
        } else {
            std::env::current_exe().unwrap_or_else(|_| proc_exe.to_path_buf())
        }
    })
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
    /// Workers to stop in the background, so that their slots can start replacements at once.
    stopping: Sender<Stopping>,
}

/// Work for the driver beside its slots.
enum Stopping {
    /// Copy a worker's stderr to ours until it ends, watching for an allocation failure.
    Forward(LocalFuture),
    /// Its task was cancelled or timed out: stop it within the task's cancel timeout.
    Task {
        worker: Worker,
        task: Arc<dyn Completion>,
    },
    /// It ran its share of tasks: let it exit.
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
    let (stopping, stopping_queue) = async_channel::unbounded::<Stopping>();
    let driver = Rc::new(Driver {
        state: state.clone(),
        options,
        stopping,
    });
    let mut slots = processes.len();
    let mut work: FuturesUnordered<LocalFuture> = processes
        .into_iter()
        .map(|process| Box::pin(slot(driver.clone(), process, queue.clone())) as LocalFuture)
        .collect();

    enum Event {
        Finished(Option<Finished>),
        Stop(Box<Stopping>),
        Notice(Arc<dyn Completion>),
    }
    while slots > 0 || !work.is_empty() {
        let event = future::or(
            async { Event::Finished(work.next().await) },
            future::or(
                async {
                    match stopping_queue.recv().await {
                        Ok(stop) => Event::Stop(Box::new(stop)),
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
            Event::Stop(stop) => match *stop {
                Stopping::Task { worker, task } => {
                    let state = state.clone();
                    work.push(Box::pin(async move {
                        let reason = "its task was cancelled or timed out";
                        worker.stop(task.options().cancel_timeout, reason).await;
                        task.settle();
                        state.ended(&*task);
                        Finished::Stopped
                    }));
                }
                Stopping::Forward(forward) => work.push(forward),
                Stopping::Retire(worker) => {
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
                    let _ = driver.stopping.try_send(Stopping::Forward(forward));
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
    let _serving = Gauge::up(&counters.workers);
    let mut served = 0;
    loop {
        if driver.options.max_tasks_per_worker == Some(served) {
            let _ = driver.stopping.try_send(Stopping::Retire(worker));
            return End::Replace;
        }
        if let Some(job) = waiting.take() {
            if !job.task.start(worker.pid) {
                continue;
            }
            match run_job(driver, worker, job).await {
                Some(kept) => worker = kept,
                None => return End::Replace,
            }
            served += 1;
            continue;
        }
        let idle = future::or(
            async {
                match queue.recv().await {
                    Ok(job) => Idle::Job(job),
                    Err(_) => Idle::QueueClosed,
                }
            },
            async { Idle::Worker(worker.output.fill_buf().await.map(|b| b.len())) },
        )
        .await;
        let job = match idle {
            Idle::Job(job) => job,
            Idle::QueueClosed => {
                worker.shut_down().await;
                return End::QueueClosed;
            }
            Idle::Worker(Ok(0)) | Idle::Worker(Err(_)) => {
                worker.bury().await;
                return End::Replace;
            }
            Idle::Worker(Ok(_)) => {
                worker.stop(Duration::ZERO, "it wrote while idle").await;
                return End::Replace;
            }
        };
        if !job.task.start(worker.pid) {
            continue; // ended while queued
        }
        match run_job(driver, worker, job).await {
            Some(kept) => worker = kept,
            None => return End::Replace,
        }
        served += 1;
    }
}

/// Runs a started job on `worker`. Returns the worker if it can serve on; `None` if it is gone
/// or on its way out.
async fn run_job(driver: &Driver, mut worker: Worker, job: Job) -> Option<Worker> {
    let _busy = Gauge::up(&driver.state.counters.busy);
    let task = job.task;
    report_start(&*task);
    let timeout = task.options().timeout;
    let step = {
        let exchange = async {
            if worker.input.write_all(&job.frame).await.is_err() {
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
    drop(job.frame);
    match step {
        Step::Reply(Ok(Reply::Done { payload_start })) => {
            task.succeed(&worker.buf[payload_start..]);
        }
        Step::Reply(Ok(Reply::Failed(error))) => {
            task.fail(error);
        }
        Step::Reply(Err(lost @ (Lost::Died | Lost::CutShort))) => {
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
            worker.stop(Duration::ZERO, "it broke the protocol").await;
            task.fail(TaskError::Protocol(msg));
            task.settle();
            driver.state.ended(&*task);
            return None;
        }
        Step::Ended | Step::TimedOut(_) => {
            if let Step::TimedOut(after) = step {
                task.fail(TaskError::TimedOut { after });
                driver.state.ended(&*task);
            }
            // Stopped in the background, so that the replacement starts at once.
            let _ = driver.stopping.try_send(Stopping::Task { worker, task });
            return None;
        }
    }
    task.settle();
    driver.state.ended(&*task);
    Some(worker)
}

/// A worker's answer to a job.
enum Reply {
    /// The encoded result is in the worker's buffer from `payload_start` on.
    Done {
        payload_start: usize,
    },
    Failed(TaskError),
}

/// How a worker was lost while running a job.
enum Lost {
    /// Its output ended: it exited or was killed.
    Died,
    /// Its output ended in the middle of a frame.
    CutShort,
    /// It wrote something that breaks the protocol.
    Broken(String),
}

/// A spawned worker process that has not answered the handshake yet.
struct Process {
    child: Child,
    pidfd: Pidfd,
    input: ChildStdin,
    output: ChildStdout,
    /// Piped only under a memory limit, to tell an allocation failure from other deaths.
    stderr: Option<ChildStderr>,
    memory_limit: Option<u64>,
}

impl Process {
    /// Starts `worker_program() --worker` with piped stdin and stdout, in its own process group
    /// so that a terminal's Ctrl-C reaches only the parent, which decides what workers do.
    fn spawn(memory_limit: Option<u64>) -> io::Result<Process> {
        let mut command = std::process::Command::new(worker_program());
        command.arg("--worker").process_group(0);
        let mut command = async_process::Command::from(command);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(match memory_limit {
                Some(_) => Stdio::piped(),
                None => Stdio::inherit(),
            })
            .kill_on_drop(true);
        let mut child = command.spawn()?;
        let pidfd = Pidfd::open(&child);
        let missing = || io::Error::other("worker pipes were not created");
        let input = child.stdin.take().ok_or_else(missing)?;
        let output = child.stdout.take().ok_or_else(missing)?;
        widen_pipe(&input);
        widen_pipe(&output);
        let stderr = child.stderr.take();
        Ok(Process {
            child,
            pidfd,
            input,
            output,
            stderr,
            memory_limit,
        })
    }

    /// Exchanges `Hello`s: the worker must run this very build. Kills it on failure.
    async fn handshake(self) -> io::Result<Worker> {
        let mut worker = Worker {
            pid: self.child.id(),
            child: self.child,
            pidfd: self.pidfd,
            input: self.input,
            output: BufReader::with_capacity(READ_BUFFER, self.output),
            buf: Vec::new(),
            memory_limit: self.memory_limit,
            stderr: self.stderr,
            out_of_memory: None,
        };
        let answer = future::or(async { Some(worker.greet().await) }, async {
            Timer::after(HANDSHAKE_TIMEOUT).await;
            None
        })
        .await;
        let err = match answer {
            Some(Ok(())) => return Ok(worker),
            Some(Err(err)) => err,
            None => io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "worker {} did not answer within {HANDSHAKE_TIMEOUT:?}; {INIT_HINT}",
                    worker.pid
                ),
            ),
        };
        worker.stop(Duration::ZERO, "it failed the handshake").await;
        Err(err)
    }
}

/// The pipe buffer asked for: large payloads then cross in a few big copies instead of many
/// 64 KiB ones (which cost a wake-up each), measured in docs/performance.md.
const PIPE_BUFFER: usize = 1 << 20;

/// Grows a pipe's buffer towards [`PIPE_BUFFER`], as far as the system allows; a refusal
/// only costs speed.
fn widen_pipe(pipe: &impl std::os::fd::AsFd) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let max = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(PIPE_BUFFER);
        let _ = rustix::pipe::fcntl_setpipe_size(pipe, PIPE_BUFFER.min(max));
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = pipe;
}

/// The usual cause of a worker that does not speak the protocol.
const INIT_HINT: &str = "does `main` call offload::init() first?";

/// A worker process that passed the handshake.
struct Worker {
    pid: u32,
    child: Child,
    pidfd: Pidfd,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
    /// The body of the last frame read.
    buf: Vec<u8>,
    memory_limit: Option<u64>,
    /// Its stderr, until the slot starts forwarding it.
    stderr: Option<ChildStderr>,
    /// Tells, once its stderr ended, whether it reported an allocation failure.
    out_of_memory: Option<Receiver<bool>>,
}

impl Worker {
    async fn greet(&mut self) -> io::Result<()> {
        let hello = wire::frame(&ToWorker::Hello {
            build: build_id(),
            parent: std::process::id(),
            memory_limit: self.memory_limit,
        });
        let pid = self.pid;
        let sent = self.input.write_all(&hello).await;
        if !wire::read_frame_async(&mut self.output, &mut self.buf).await? {
            let status = self.child.status().await?;
            return Err(io::Error::other(format!(
                "worker {pid} exited during start-up ({status}); {INIT_HINT}"
            )));
        }
        sent?;
        match wire::split::<FromWorker>(&self.buf) {
            Ok((FromWorker::Hello { pid: got, build }, _)) if got == pid && build == build_id() => {
                Ok(())
            }
            Ok((FromWorker::Refused { reason }, _)) => Err(io::Error::other(format!(
                "worker {pid} refused to serve: {reason}"
            ))),
            Ok((FromWorker::Hello { .. }, _)) => Err(io::Error::other(format!(
                "worker {pid} runs a different build of the program"
            ))),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("worker {pid} did not answer the handshake; {INIT_HINT}"),
            )),
        }
    }

    /// Reads the worker's answer to job `id`.
    async fn reply(&mut self, id: u64) -> Result<Reply, Lost> {
        match wire::read_frame_async(&mut self.output, &mut self.buf).await {
            Ok(true) => {}
            Ok(false) => return Err(Lost::Died),
            Err(err) if err.kind() == io::ErrorKind::InvalidData => {
                return Err(Lost::Broken(err.to_string()))
            }
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Err(Lost::CutShort),
            // A failed read: the worker is gone or going.
            Err(_) => return Err(Lost::Died),
        }
        let (header, payload) = wire::split::<FromWorker>(&self.buf)
            .map_err(|e| Lost::Broken(format!("undecodable message: {e}")))?;
        match header {
            FromWorker::Done { id: got } if got == id => Ok(Reply::Done {
                payload_start: self.buf.len() - payload.len(),
            }),
            FromWorker::Panicked {
                id: got,
                message,
                location,
            } if got == id => Ok(Reply::Failed(TaskError::Panicked { message, location })),
            FromWorker::Failed { id: got, error } if got == id => Ok(Reply::Failed(match error {
                CodecFailure::Encode(msg) => TaskError::Encode(msg),
                CodecFailure::Decode(msg) => TaskError::Decode(msg),
            })),
            other => Err(Lost::Broken(format!(
                "unexpected {} message while running task {id}",
                other.kind()
            ))),
        }
    }

    /// Collects the exit status of a worker whose output ended, and says how it died.
    async fn bury(mut self) -> TaskError {
        drop(self.input);
        let pid = self.pid;
        let status = future::or(async { Some(self.child.status().await) }, async {
            Timer::after(EXIT_GRACE).await;
            None
        })
        .await;
        match status {
            Some(Ok(status)) if status.signal() == Some(SIGABRT) => {
                // An allocation over the limit aborts; its report on stderr tells it apart.
                let over_limit = match (&self.out_of_memory, self.memory_limit) {
                    (Some(seen), Some(limit)) => {
                        future::or(
                            async { seen.recv().await.unwrap_or(false).then_some(limit) },
                            async {
                                Timer::after(EXIT_GRACE).await;
                                None
                            },
                        )
                        .await
                    }
                    _ => None,
                };
                match over_limit {
                    Some(limit) => TaskError::MemoryLimit { pid, limit },
                    None => died(pid, status),
                }
            }
            Some(Ok(status)) => died(pid, status),
            Some(Err(_)) => TaskError::WorkerDied {
                pid,
                code: None,
                signal: None,
            },
            None => {
                kill::stop(&mut self.child, &self.pidfd, Duration::ZERO).await;
                TaskError::Protocol(format!(
                    "worker {pid} closed its output but kept running; it was killed"
                ))
            }
        }
    }

    /// Stops the worker (`SIGTERM`, `grace`, `SIGKILL`) and reaps it.
    async fn stop(mut self, grace: Duration, reason: &str) {
        trace::worker_stopped(self.pid, reason);
        drop(self.input);
        kill::stop(&mut self.child, &self.pidfd, grace).await;
    }

    /// Asks an idle worker to exit and reaps it; kills it if it does not exit in time.
    async fn shut_down(mut self) {
        let _ = self
            .input
            .write_all(&wire::frame(&ToWorker::Shutdown))
            .await;
        drop(self.input);
        let exited = future::or(async { self.child.status().await.is_ok() }, async {
            Timer::after(EXIT_GRACE).await;
            false
        })
        .await;
        if !exited {
            kill::stop(&mut self.child, &self.pidfd, Duration::ZERO).await;
        }
    }
}

/// The signal Rust's allocation failure handler ends a process with.
const SIGABRT: i32 = 6;

/// What Rust's default allocation failure handler writes before aborting.
const ALLOCATION_FAILED: &[u8] = b"memory allocation of ";

/// Copies a worker's stderr to ours until it ends; returns whether the worker reported a
/// failed allocation.
async fn forward_stderr(mut stderr: ChildStderr) -> bool {
    use std::io::Write;
    let mut seen = false;
    // The end of the previous chunk, so that a report split between two reads is found.
    let mut tail: Vec<u8> = Vec::new();
    let mut chunk = vec![0; 8192];
    loop {
        let n = match futures_lite::AsyncReadExt::read(&mut stderr, &mut chunk).await {
            Ok(0) | Err(_) => return seen,
            Ok(n) => n,
        };
        let _ = std::io::stderr().write_all(&chunk[..n]);
        tail.extend_from_slice(&chunk[..n]);
        seen |= tail
            .windows(ALLOCATION_FAILED.len())
            .any(|w| w == ALLOCATION_FAILED);
        let keep = tail.len().saturating_sub(ALLOCATION_FAILED.len());
        tail.drain(..keep);
    }
}

/// The error for a worker that ended with `status`.
fn died(pid: u32, status: ExitStatus) -> TaskError {
    TaskError::WorkerDied {
        pid,
        code: status.code(),
        signal: status.signal(),
    }
}
