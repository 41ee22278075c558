//! Stopping a worker: `SIGTERM`, a grace period, `SIGKILL`, reaping — through a pidfd.
//!
//! A pidfd names one process, not a number, so a signal sent through it can never reach
//! another process that was later given the same pid. Where pidfds are missing (old kernels,
//! other Unixes), `kill(2)` is used, and only while the child is unreaped in our hands, which
//! keeps its pid from being recycled.

use std::io;
use std::os::fd::OwnedFd;
use std::process::ExitStatus;
use std::time::Duration;

use async_io::Timer;
use async_process::Child;
use futures_lite::future;
use rustix::process::{Pid, Signal};

/// A handle for signalling one child process.
pub(crate) struct Pidfd {
    pid: u32,
    fd: Option<OwnedFd>,
}

impl Pidfd {
    /// Opens a pidfd for `child`, which must not have been reaped yet.
    pub(crate) fn open(child: &Child) -> Pidfd {
        let pid = child.id();
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let fd = Pid::from_raw(pid as i32).and_then(|pid| {
            rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
        });
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let fd = None;
        Pidfd { pid, fd }
    }

    /// Sends `signal`. A process that already exited is not an error.
    pub(crate) fn signal(&self, signal: Signal) -> io::Result<()> {
        let sent = match &self.fd {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Some(fd) => rustix::process::pidfd_send_signal(fd, signal),
            _ => match Pid::from_raw(self.pid as i32) {
                Some(pid) => rustix::process::kill_process(pid, signal),
                None => return Ok(()),
            },
        };
        match sent {
            Err(rustix::io::Errno::SRCH) => Ok(()),
            other => other.map_err(io::Error::from),
        }
    }
}

/// Stops `child`: `SIGTERM`, then `SIGKILL` if it is still alive after `grace` (at once for a
/// zero grace), and reaps it. Returns its exit status when it could be read.
pub(crate) async fn stop(child: &mut Child, pidfd: &Pidfd, grace: Duration) -> Option<ExitStatus> {
    begin_stop(pidfd, grace);
    finish_stop(child, pidfd, grace).await
}

/// The first step of [`stop`], which needs no waiting: `SIGTERM`, or `SIGKILL` for a zero
/// grace.
pub(crate) fn begin_stop(pidfd: &Pidfd, grace: Duration) {
    let first = if grace.is_zero() {
        Signal::KILL
    } else {
        Signal::TERM
    };
    let _ = pidfd.signal(first);
}

/// The rest of [`stop`] after [`begin_stop`]: waits up to `grace` for the exit, sends
/// `SIGKILL` if it did not come, and reaps.
pub(crate) async fn finish_stop(
    child: &mut Child,
    pidfd: &Pidfd,
    grace: Duration,
) -> Option<ExitStatus> {
    if !grace.is_zero() {
        let exited = future::or(async { Some(child.status().await) }, async {
            Timer::after(grace).await;
            None
        })
        .await;
        if let Some(status) = exited {
            return status.ok();
        }
        // The child is not reaped yet (its status was not returned), so this reaches it alone.
        let _ = pidfd.signal(Signal::KILL);
    }
    child.status().await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper() -> Child {
        async_process::Command::new("sleep")
            .arg("30")
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    #[test]
    fn stop_terminates_and_reaps_and_a_later_signal_is_harmless() {
        futures_lite::future::block_on(async {
            let mut child = sleeper();
            let pidfd = Pidfd::open(&child);
            #[cfg(target_os = "linux")]
            assert!(pidfd.fd.is_some(), "Linux signals through a pidfd");
            let status = stop(&mut child, &pidfd, Duration::from_secs(5))
                .await
                .unwrap();
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.signal(), Some(Signal::TERM.as_raw()));
            assert!(!std::path::Path::new(&format!("/proc/{}", pidfd.pid)).exists());
            // The pidfd names the reaped process: signalling it now reaches no one.
            #[cfg(target_os = "linux")]
            pidfd.signal(Signal::KILL).unwrap();
        });
    }

    #[test]
    fn zero_grace_kills_at_once() {
        futures_lite::future::block_on(async {
            let mut child = sleeper();
            let pidfd = Pidfd::open(&child);
            let status = stop(&mut child, &pidfd, Duration::ZERO).await.unwrap();
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.signal(), Some(Signal::KILL.as_raw()));
        });
    }
}
