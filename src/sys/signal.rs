//! Signalling one child process through a pidfd.
//!
//! A pidfd names one process, not a number, so a signal sent through it can never reach
//! another process that was later given the same pid. Where pidfds are missing (old kernels,
//! other Unixes), `kill(2)` is used, and only while the child is unreaped in our hands, which
//! keeps its pid from being recycled.

use std::io;
use std::os::fd::OwnedFd;

use rustix::process::Pid;
pub(crate) use rustix::process::Signal;

/// A handle for signalling one child process.
pub(crate) struct Pidfd {
    pid: u32,
    fd: Option<OwnedFd>,
}

impl Pidfd {
    /// Opens a pidfd for child `pid`, which must not have been reaped yet.
    pub(crate) fn open(pid: u32) -> Pidfd {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn signals_reach_the_child_and_a_signal_after_reaping_reaches_no_one() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pidfd = Pidfd::open(child.id());
        #[cfg(target_os = "linux")]
        assert!(pidfd.fd.is_some(), "Linux signals through a pidfd");
        pidfd.signal(Signal::TERM).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(Signal::TERM.as_raw()));
        assert!(!std::path::Path::new(&format!("/proc/{}", child.id())).exists());
        // The pidfd names the reaped process: signalling it now reaches no one.
        #[cfg(target_os = "linux")]
        pidfd.signal(Signal::KILL).unwrap();
    }
}
