//! Signalling the process group a child leads, and waiting for the child's exit without
//! reaping it.
//!
//! A group is signalled by its number, which is the leader's pid, and only while the leader
//! is unreaped in our hands: an unreaped child keeps its pid, so no other process can be given
//! that number or lead a group of that number. That is why a child is waited for through a
//! pidfd, which turns readable at its exit without reaping it ([`Pidfd::exited`]), until its
//! group has had its last signal.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rustix::process::Pid;
pub(crate) use rustix::process::Signal;

/// A child process that leads a process group of its own: its group's signals, and its exit.
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

    /// Sends `signal` to the process group the child leads (it was started with
    /// `process_group(0)`), the child included. Must only be called before the child is
    /// reaped (see the module docs). A group with no live member left is not an error.
    pub(crate) fn signal_group(&self, signal: Signal) -> io::Result<()> {
        signal_group(self.pid, signal)
    }

    /// Waits until the child has exited, without reaping it: the pidfd turns readable then.
    /// Without a pidfd, the child's state is looked at every millisecond.
    pub(crate) async fn exited(&self) {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(readable) = self
            .fd
            .as_ref()
            .and_then(|fd| fd.try_clone().ok())
            .and_then(|fd| async_io::Async::new(fd).ok())
        {
            let _ = readable.readable().await;
            return;
        }
        let Some(pid) = Pid::from_raw(self.pid as i32) else {
            return;
        };
        use rustix::process::{waitid, WaitId, WaitIdOptions};
        let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
        while let Ok(None) = waitid(WaitId::Pid(pid), options) {
            async_io::Timer::after(std::time::Duration::from_millis(1)).await;
        }
    }
}

/// The first signal of a stop with `grace` before `SIGKILL`: `SIGTERM`, or `SIGKILL` at once
/// for a zero grace.
pub(crate) fn first_stop_signal(grace: Duration) -> Signal {
    match grace.is_zero() {
        true => Signal::KILL,
        false => Signal::TERM,
    }
}

/// Sends `signal` to the process group that child `pid` leads; see [`Pidfd::signal_group`].
fn signal_group(pid: u32, signal: Signal) -> io::Result<()> {
    let Some(pid) = Pid::from_raw(pid as i32) else {
        return Ok(());
    };
    match rustix::process::kill_process_group(pid, signal) {
        Err(rustix::io::Errno::SRCH) => Ok(()),
        other => other.map_err(io::Error::from),
    }
}

/// Lets the handle of the one task a worker runs stop that worker from the handle's own
/// thread, at the moment it cancels the task, without waiting for the driver thread to hear of
/// the cancel (docs/performance.md, "Cancel → worker gone").
///
/// The driver *arms* it with a task's id while its worker runs that task and holds no other
/// (nothing sent ahead), and *disarms* it before the worker may begin anything else and before
/// the worker is reaped: so the signal reaches the right process group, and only the task's
/// own worker. Firing and disarming take the same lock.
pub(crate) struct Stopper {
    /// The worker, which leads its process group.
    pid: u32,
    state: Mutex<Armed>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Armed {
    Not,
    /// The worker runs this task alone.
    For(u64),
    /// A handle stopped the worker: it does nothing more.
    Fired,
    /// The worker is reaped, or about to be: its number may be given to another process.
    Closed,
}

impl Stopper {
    pub(crate) fn new(pid: u32) -> Stopper {
        Stopper {
            pid,
            state: Mutex::new(Armed::Not),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Armed> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The worker runs task `id` and holds no other job.
    pub(crate) fn arm(&self, id: u64) {
        let mut state = self.lock();
        if *state == Armed::Not {
            *state = Armed::For(id);
        }
    }

    /// The worker may begin another job. Returns whether a handle stopped it: then it must
    /// be given nothing more.
    pub(crate) fn disarm(&self) -> bool {
        let mut state = self.lock();
        if let Armed::For(_) = *state {
            *state = Armed::Not;
        }
        *state == Armed::Fired
    }

    /// The worker is about to be reaped: no signal may be sent from here any more.
    pub(crate) fn close(&self) {
        *self.lock() = Armed::Closed;
    }

    /// Sends the worker's group the first signal of a stop with `grace` (see
    /// [`first_stop_signal`]) if it runs task `id` alone; returns whether it did.
    pub(crate) fn fire(&self, id: u64, grace: Duration) -> bool {
        let mut state = self.lock();
        if *state != Armed::For(id) {
            return false;
        }
        *state = Armed::Fired;
        // Under the lock: the worker is unreaped until `close`, which waits for it, so its
        // number still names its group alone (see the module docs).
        let _ = signal_group(self.pid, first_stop_signal(grace));
        true
    }
}

/// `SIGKILL` to this process's own process group, this process included: a worker whose
/// parent is gone, or that cannot follow the protocol, goes with everything its tasks started
/// that stayed in its group.
pub(crate) fn kill_own_group() -> ! {
    let _ = rustix::process::kill_current_process_group(Signal::KILL);
    // A signal a process sends its own group is delivered before `kill` returns; should the
    // group not be signalled at all, this process still goes.
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn a_stopper_signals_only_while_armed_for_the_task() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let stopper = Stopper::new(child.id());
        assert!(!stopper.fire(1, Duration::ZERO), "not armed");
        stopper.arm(1);
        assert!(!stopper.fire(2, Duration::ZERO), "armed for another task");
        assert!(!stopper.disarm(), "disarmed unfired");
        assert!(!stopper.fire(1, Duration::ZERO), "disarmed");
        stopper.arm(1);
        assert!(stopper.fire(1, Duration::ZERO));
        assert!(stopper.disarm(), "a fired stopper says so");
        assert_eq!(child.wait().unwrap().signal(), Some(Signal::KILL.as_raw()));
        stopper.close();
        stopper.arm(3);
        assert!(
            !stopper.fire(3, Duration::ZERO),
            "closed before the reap: never again"
        );
    }

    #[test]
    fn a_group_is_signalled_whole_and_an_exit_is_seen_without_reaping() {
        use std::os::unix::process::CommandExt;
        // A shell leading its own group, with a grandchild in that group.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & echo $!; wait"])
            .process_group(0)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let grandchild: u32 = line.trim().parse().unwrap();
        let pidfd = Pidfd::open(child.id());
        pidfd.signal_group(Signal::KILL).unwrap();
        futures_lite::future::block_on(pidfd.exited());
        // Exited but not reaped: still a zombie, so its number still names the group.
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap();
        assert!(
            stat[stat.rfind(')').unwrap()..].starts_with(") Z"),
            "{stat}"
        );
        assert_eq!(child.wait().unwrap().signal(), Some(Signal::KILL.as_raw()));
        // The grandchild got the signal too (it is gone, or a zombie waiting for init).
        let gone = || {
            std::fs::read_to_string(format!("/proc/{grandchild}/stat")).map_or(true, |stat| {
                stat[stat.rfind(')').unwrap()..].starts_with(") Z")
            })
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !gone() {
            assert!(
                std::time::Instant::now() < deadline,
                "the grandchild lives on"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
