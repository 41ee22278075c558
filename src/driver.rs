//! The driver: one named thread per pool that owns every worker process and pipe.
//!
//! The thread runs `async_io::block_on` over one future per worker slot. A slot starts a
//! worker, takes jobs from the pool's queue one at a time, writes each to the worker and reads
//! the reply, and starts a replacement whenever its worker dies or misbehaves. The queue is an
//! MPMC channel, so an idle slot takes the next job the moment it is spawned.

use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{mpsc, Arc, OnceLock};
use std::thread;
use std::time::Duration;

use async_channel::{Receiver, Sender};
use async_io::Timer;
use async_process::{Child, ChildStdin, ChildStdout};
use futures_lite::io::BufReader;
use futures_lite::{future, AsyncBufReadExt, AsyncWriteExt, StreamExt};
use futures_util::stream::FuturesUnordered;

use crate::entry::build_id;
use crate::error::{Error, TaskError};
use crate::task::Completion;
use crate::wire::{self, CodecFailure, FromWorker, ToWorker};

/// How long a new worker may take to answer the handshake before it is killed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a worker that closed its output may take to exit before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// Longest pause between attempts to start a worker after failures.
const MAX_RESPAWN_BACKOFF: Duration = Duration::from_secs(1);

/// The name of the thread that drives a pool.
pub(crate) const THREAD_NAME: &str = "offload-driver";

/// Size of the buffer in front of each worker's output pipe.
const READ_BUFFER: usize = 64 * 1024;

/// One task on its way to a worker.
pub(crate) struct Job {
    pub(crate) id: u64,
    /// The complete `Run` frame, arguments included.
    pub(crate) frame: Vec<u8>,
    pub(crate) task: Arc<dyn Completion>,
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

/// Starts the driver thread and its `workers` processes; returns the queue's sending side.
///
/// Workers are spawned by the driver thread itself, because `PR_SET_PDEATHSIG` fires when the
/// *thread* that forked a child exits: spawning from a caller's short-lived thread would kill
/// the workers with it.
pub(crate) fn start(workers: usize) -> Result<Sender<Job>, Error> {
    let (jobs, queue) = async_channel::unbounded();
    let (ready, started) = mpsc::sync_channel(1);
    thread::Builder::new()
        .name(THREAD_NAME.into())
        .spawn(move || {
            let spawned: io::Result<Vec<Process>> =
                (0..workers).map(|_| Process::spawn()).collect();
            match spawned {
                Ok(processes) => {
                    let _ = ready.send(Ok(()));
                    async_io::block_on(run(processes, queue));
                }
                // The processes spawned so far are killed and reaped by `kill_on_drop`.
                Err(err) => drop(ready.send(Err(err))),
            }
        })
        .map_err(Error::Spawn)?;
    match started.recv() {
        Ok(Ok(())) => Ok(jobs),
        Ok(Err(err)) => Err(Error::Spawn(err)),
        Err(_) => Err(Error::Spawn(io::Error::other(
            "the driver thread ended early",
        ))),
    }
}

/// The driver's whole life: all slots, until the queue is closed and drained.
async fn run(processes: Vec<Process>, queue: Receiver<Job>) {
    let mut slots: FuturesUnordered<_> = processes
        .into_iter()
        .map(|process| slot(process, queue.clone()))
        .collect();
    while slots.next().await.is_some() {}
}

/// One worker place in the pool: serves jobs with successive worker processes.
async fn slot(first: Process, queue: Receiver<Job>) {
    let mut next = Ok(first);
    let mut failures: u32 = 0;
    loop {
        let started = match next {
            Ok(process) => process.handshake().await,
            Err(err) => Err(err),
        };
        match started {
            Ok(worker) => {
                failures = 0;
                if let End::QueueClosed = serve(worker, &queue).await {
                    return;
                }
            }
            Err(err) => {
                failures += 1;
                // A broken setup (say, `init()` missing from `main`) must fail tasks loudly
                // rather than leave them queued forever; one retry absorbs a transient error.
                if failures > 1 {
                    match queue.recv().await {
                        Ok(job) => job.task.fail(TaskError::Spawn(Arc::new(err))),
                        Err(_) => return,
                    }
                }
                let backoff = Duration::from_millis(10 << failures.min(7));
                Timer::after(backoff.min(MAX_RESPAWN_BACKOFF)).await;
            }
        }
        next = Process::spawn();
    }
}

/// Why a worker stopped serving.
enum End {
    /// The queue is closed and empty; the worker was shut down.
    QueueClosed,
    /// The worker died or was killed; a replacement is needed.
    Replace,
}

/// What happened while a worker was idle.
enum Idle {
    Job(Job),
    QueueClosed,
    /// The worker wrote something or closed its output without being asked.
    Worker(io::Result<usize>),
}

/// Serves jobs from `queue` with `worker` until the queue closes or the worker is lost.
async fn serve(mut worker: Worker, queue: &Receiver<Job>) -> End {
    loop {
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
                worker.kill().await;
                return End::Replace;
            }
        };
        if !job.task.start(worker.pid) {
            continue; // ended while queued
        }
        if worker.input.write_all(&job.frame).await.is_err() {
            job.task.fail(worker.bury().await);
            return End::Replace;
        }
        drop(job.frame);
        match worker.reply(job.id).await {
            Ok(Reply::Done(payload)) => job.task.succeed(payload),
            Ok(Reply::Failed(error)) => job.task.fail(error),
            Err(Lost::Died) => {
                job.task.fail(worker.bury().await);
                return End::Replace;
            }
            Err(Lost::Broken(msg)) => {
                worker.kill().await;
                job.task.fail(TaskError::Protocol(msg));
                return End::Replace;
            }
        }
    }
}

/// A worker's answer to a job.
enum Reply<'a> {
    /// The encoded result.
    Done(&'a [u8]),
    Failed(TaskError),
}

/// How a worker was lost while running a job.
enum Lost {
    /// Its output ended: it exited or was killed.
    Died,
    /// It wrote something that breaks the protocol.
    Broken(String),
}

/// A spawned worker process that has not answered the handshake yet.
struct Process {
    child: Child,
    input: ChildStdin,
    output: ChildStdout,
}

impl Process {
    /// Starts `worker_program() --worker` with piped stdin and stdout, in its own process group
    /// so that a terminal's Ctrl-C reaches only the parent, which decides what workers do.
    fn spawn() -> io::Result<Process> {
        let mut command = std::process::Command::new(worker_program());
        command.arg("--worker").process_group(0);
        let mut command = async_process::Command::from(command);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command.spawn()?;
        let missing = || io::Error::other("worker pipes were not created");
        let input = child.stdin.take().ok_or_else(missing)?;
        let output = child.stdout.take().ok_or_else(missing)?;
        Ok(Process {
            child,
            input,
            output,
        })
    }

    /// Exchanges `Hello`s: the worker must run this very build. Kills it on failure.
    async fn handshake(self) -> io::Result<Worker> {
        let mut worker = Worker {
            pid: self.child.id(),
            child: self.child,
            input: self.input,
            output: BufReader::with_capacity(READ_BUFFER, self.output),
            buf: Vec::new(),
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
        worker.kill().await;
        Err(err)
    }
}

/// The usual cause of a worker that does not speak the protocol.
const INIT_HINT: &str = "does `main` call offload::init() first?";

/// A worker process that passed the handshake.
struct Worker {
    pid: u32,
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
    /// The body of the last frame read.
    buf: Vec<u8>,
}

impl Worker {
    async fn greet(&mut self) -> io::Result<()> {
        let hello = wire::frame(&ToWorker::Hello {
            build: build_id(),
            parent: std::process::id(),
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
    async fn reply(&mut self, id: u64) -> Result<Reply<'_>, Lost> {
        match wire::read_frame_async(&mut self.output, &mut self.buf).await {
            Ok(true) => {}
            Ok(false) => return Err(Lost::Died),
            Err(err) if err.kind() == io::ErrorKind::InvalidData => {
                return Err(Lost::Broken(err.to_string()))
            }
            // A frame cut short or a failed read: the worker is gone or going.
            Err(_) => return Err(Lost::Died),
        }
        let (header, payload) = wire::split::<FromWorker>(&self.buf)
            .map_err(|e| Lost::Broken(format!("undecodable message: {e}")))?;
        match header {
            FromWorker::Done { id: got } if got == id => Ok(Reply::Done(payload)),
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
            Some(Ok(status)) => died(pid, status),
            Some(Err(_)) => TaskError::WorkerDied {
                pid,
                code: None,
                signal: None,
            },
            None => {
                let _ = self.child.kill();
                let _ = self.child.status().await;
                TaskError::Protocol(format!(
                    "worker {pid} closed its output but kept running; it was killed"
                ))
            }
        }
    }

    /// Kills the worker and reaps it.
    async fn kill(mut self) {
        // `Child::kill` never signals a process that was already reaped.
        let _ = self.child.kill();
        let _ = self.child.status().await;
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
            let _ = self.child.kill();
            let _ = self.child.status().await;
        }
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
