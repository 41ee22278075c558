//! A worker process seen from the parent: starting it, the handshake, reading its replies,
//! and the ways it ends (burial after death, stop, graceful shutdown).

use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use async_channel::Receiver;
use async_io::Timer;
use async_process::{Child, ChildStderr, ChildStdin, ChildStdout};
use futures_lite::io::BufReader;
use futures_lite::{future, AsyncWriteExt};

use crate::entry::build_id;
use crate::error::TaskError;
use crate::kill::{self, Pidfd};
use crate::trace;
use crate::wire::{self, CodecFailure, FromWorker, ToWorker};

/// How long a new worker may take to answer the handshake before it is killed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a worker that closed its output, or was asked to shut down, may take to exit
/// before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// Size of the buffer in front of each worker's output pipe.
const READ_BUFFER: usize = 64 * 1024;

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

/// A worker's answer to a job.
pub(crate) enum Reply {
    /// The encoded result is in the worker's buffer from `payload_start` on.
    Done {
        payload_start: usize,
    },
    Failed(TaskError),
}

/// How a worker was lost while running a job.
pub(crate) enum Lost {
    /// Its output ended: it exited or was killed.
    Died,
    /// Its output ended in the middle of a frame.
    CutShort,
    /// It wrote something that breaks the protocol.
    Broken(String),
}

/// A spawned worker process that has not answered the handshake yet.
pub(crate) struct Process {
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
    pub(crate) fn spawn(memory_limit: Option<u64>) -> io::Result<Process> {
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
    pub(crate) async fn handshake(self) -> io::Result<Worker> {
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
pub(crate) struct Worker {
    pub(crate) pid: u32,
    pub(crate) child: Child,
    pub(crate) pidfd: Pidfd,
    pub(crate) input: ChildStdin,
    pub(crate) output: BufReader<ChildStdout>,
    /// The body of the last frame read.
    pub(crate) buf: Vec<u8>,
    pub(crate) memory_limit: Option<u64>,
    /// Its stderr, until the slot starts forwarding it.
    pub(crate) stderr: Option<ChildStderr>,
    /// Tells, once its stderr ended, whether it reported an allocation failure.
    pub(crate) out_of_memory: Option<Receiver<bool>>,
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
    pub(crate) async fn reply(&mut self, id: u64) -> Result<Reply, Lost> {
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
    pub(crate) async fn bury(mut self) -> TaskError {
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
    pub(crate) async fn stop(self, grace: Duration, reason: &str) {
        self.begin_stop(grace, reason);
        self.finish_stop(grace).await;
    }

    /// Sends the first signal of a stop at once (`SIGTERM`, or `SIGKILL` for a zero grace),
    /// so that the CPU is freed before anything else happens; see
    /// [`finish_stop`](Worker::finish_stop).
    pub(crate) fn begin_stop(&self, grace: Duration, reason: &str) {
        trace::worker_stopped(self.pid, reason);
        kill::begin_stop(&self.pidfd, grace);
    }

    /// Waits up to `limit` for the worker to exit, and reaps it if it did.
    pub(crate) async fn exited_within(&mut self, limit: Duration) -> bool {
        // Dropping `status()` before it returns reaps nothing, so the pidfd stays valid.
        future::or(async { self.child.status().await.is_ok() }, async {
            Timer::after(limit).await;
            false
        })
        .await
    }

    /// Waits out the grace of a stop begun with [`begin_stop`](Worker::begin_stop), kills if
    /// needed, and reaps.
    pub(crate) async fn finish_stop(mut self, grace: Duration) {
        drop(self.input);
        kill::finish_stop(&mut self.child, &self.pidfd, grace).await;
    }

    /// Asks an idle worker to exit and reaps it; kills it if it does not exit in time.
    pub(crate) async fn shut_down(mut self) {
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
pub(crate) async fn forward_stderr(mut stderr: ChildStderr) -> bool {
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
