//! How a worker process is started, which identity it must show, and how it is killed.
//!
//! Today there is one way, a local exec of this same executable; the next launchers (ssh,
//! srun, a command prefix) start the same worker elsewhere with its stdin and stdout
//! forwarded, and answer the same three questions here.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use async_process::{Child, ChildStderr, ChildStdin, ChildStdout};

use crate::protocol::build::build_id;
use crate::protocol::WORKER_FLAG;
use crate::sys::exe::current_program;
use crate::sys::signal::{Pidfd, Signal};
use crate::sys::wait::within;

/// Where and how a pool's workers are started.
#[derive(Debug, Clone, Default)]
pub(crate) enum Launcher {
    /// `current_program() --worker` on this machine.
    #[default]
    Local,
}

/// A worker process just started, before the handshake.
pub(crate) struct Launched {
    pub(crate) process: Process,
    /// Its stdin: the protocol towards the worker.
    pub(crate) input: ChildStdin,
    /// Its stdout: the protocol from the worker.
    pub(crate) output: ChildStdout,
    /// Its stderr, when asked for with `pipe_stderr`.
    pub(crate) stderr: Option<ChildStderr>,
}

impl Launcher {
    /// Starts one worker process with piped stdin and stdout (and stderr if `pipe_stderr`),
    /// in its own process group so that a terminal's Ctrl-C reaches only the parent, which
    /// decides what workers do.
    pub(crate) fn start(&self, pipe_stderr: bool) -> io::Result<Launched> {
        match self {
            Launcher::Local => {
                let mut command = std::process::Command::new(current_program());
                command.arg(WORKER_FLAG).process_group(0);
                let mut command = async_process::Command::from(command);
                command
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(match pipe_stderr {
                        true => Stdio::piped(),
                        false => Stdio::inherit(),
                    })
                    .kill_on_drop(true);
                let mut child = command.spawn()?;
                let pidfd = Pidfd::open(child.id());
                let missing = || io::Error::other("worker pipes were not created");
                let input = child.stdin.take().ok_or_else(missing)?;
                let output = child.stdout.take().ok_or_else(missing)?;
                widen_pipe(&input);
                widen_pipe(&output);
                let stderr = child.stderr.take();
                Ok(Launched {
                    process: Process { child, pidfd },
                    input,
                    output,
                    stderr,
                })
            }
        }
    }

    /// The build identity a worker started by this launcher must answer the handshake with.
    pub(crate) fn expected_build(&self) -> u64 {
        match self {
            Launcher::Local => build_id(),
        }
    }
}

/// A started worker process, as far as signals and exit go.
pub(crate) struct Process {
    child: Child,
    /// Opened right after the spawn, before anything could reap the child.
    pidfd: Pidfd,
}

impl Process {
    /// The worker's pid on its host.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first signal of a stop, which needs no waiting: `SIGTERM`, or `SIGKILL` for a zero
    /// grace.
    pub(crate) fn signal_stop(&self, grace: Duration) {
        let first = match grace.is_zero() {
            true => Signal::KILL,
            false => Signal::TERM,
        };
        let _ = self.pidfd.signal(first);
    }

    /// `SIGKILL`. Only ever sent before the process is reaped (the pidfd names it alone).
    pub(crate) fn kill(&self) {
        let _ = self.pidfd.signal(Signal::KILL);
    }

    /// Waits for the exit and reaps.
    pub(crate) async fn reap(&mut self) -> io::Result<ExitStatus> {
        self.child.status().await
    }

    /// Waits up to `limit` for the exit; reaps and returns the status if it came.
    pub(crate) async fn exit_within(&mut self, limit: Duration) -> Option<io::Result<ExitStatus>> {
        // Dropping `status()` before it returns reaps nothing, so the pidfd stays valid.
        within(limit, self.child.status()).await
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
