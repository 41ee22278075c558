//! What the driver thread blocks in between polls, on Linux: an epoll set its pipes are
//! registered with once, edge-triggered, and an eventfd that other threads wake it with.
//!
//! A wait is one `epoll_pwait`, and a pipe waited for costs no system call. The `polling`
//! crate, which this replaced, re-arms a timerfd and its notifier around every wait (four
//! calls besides the wait) and each one-shot interest with one more: eleven `epoll_ctl` per
//! trivial round trip with every process on one CPU (docs/performance.md has the figures).
//! Elsewhere, `poller_elsewhere.rs` puts `polling` in edge mode behind the same interface.

use std::io;
use std::time::Duration;

use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::event::{eventfd, EventfdFlags, Timespec};
use rustix::fd::{BorrowedFd, OwnedFd};

/// The key the notifier is registered under (a pipe's key is its index among the reactor's
/// sources, far below it).
const NOTIFY: u64 = u64::MAX;

/// The longest single wait: `i32::MAX` milliseconds, less one for the rounding up.
const MAX_WAIT: Duration = Duration::from_millis(i32::MAX as u64 - 1);

/// An epoll set and its notifier.
pub(crate) struct Poller {
    epoll: OwnedFd,
    notifier: OwnedFd,
}

/// What one wait found: for each registered fd that changed, its key and what it turned.
pub(crate) struct Events(Vec<epoll::Event>);

/// An fd that turned readable or writable (or hung up, which wakes both).
pub(crate) struct Ready {
    pub(crate) key: usize,
    pub(crate) readable: bool,
    pub(crate) writable: bool,
}

impl Events {
    pub(crate) fn new() -> Events {
        Events(Vec::with_capacity(64))
    }

    /// The fds that turned ready (not the notifier, whose event only ends the wait).
    pub(crate) fn iter(&self) -> impl Iterator<Item = Ready> + '_ {
        self.0
            .iter()
            .filter(|event| event.data.u64() != NOTIFY)
            .map(|event| {
                let flags = event.flags;
                let broken = flags.intersects(EventFlags::HUP | EventFlags::ERR);
                Ready {
                    key: event.data.u64() as usize,
                    readable: broken || flags.intersects(EventFlags::IN | EventFlags::RDHUP),
                    writable: broken || flags.contains(EventFlags::OUT),
                }
            })
    }
}

impl Poller {
    pub(crate) fn new() -> io::Result<Poller> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let notifier = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        // Edge-triggered, and never read: each write to an eventfd wakes its waiters, so each
        // notification ends one wait, and its counter (2^64 - 2 at most) cannot fill up.
        epoll::add(
            &epoll,
            &notifier,
            EventData::new_u64(NOTIFY),
            EventFlags::IN | EventFlags::ET,
        )?;
        Ok(Poller { epoll, notifier })
    }

    /// Registers `fd` under `key` for both directions, edge-triggered: a wait reports it each
    /// time it turns readable or writable. So a task waits for it only after an attempt found
    /// it not ready (as [`Pipe`](super::reactor::Pipe) does): a later change is a new edge.
    ///
    /// # Safety
    ///
    /// `fd` must be [`delete`](Poller::delete)d before it is closed. (epoll itself needs no
    /// such rule; it is the contract of the other platforms' poller, which this one shares.)
    pub(crate) unsafe fn add(&self, fd: BorrowedFd<'_>, key: usize) -> io::Result<()> {
        let flags = EventFlags::IN | EventFlags::OUT | EventFlags::RDHUP | EventFlags::ET;
        epoll::add(&self.epoll, fd, EventData::new_u64(key as u64), flags)?;
        Ok(())
    }

    pub(crate) fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        epoll::delete(&self.epoll, fd)?;
        Ok(())
    }

    /// Waits until a registered fd changes, [`notify`](Poller::notify) is called, or
    /// `timeout` passes (rounded up to the millisecond: never early; one of over 24 days
    /// ends early, and the caller waits again).
    pub(crate) fn wait(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<()> {
        events.0.clear();
        #[cfg(test)]
        if tests::FAILING.with(std::cell::Cell::get) {
            return Err(rustix::io::Errno::NOSYS.into()); // as a refused call gives
        }
        // Within what `epoll_pwait` takes in milliseconds: a longer one would need
        // `epoll_pwait2`, which kernels before 5.11 (and some seccomp filters) refuse.
        let timeout = timeout
            .map(|t| t.min(MAX_WAIT))
            .and_then(|t| Timespec::try_from(t).ok());
        epoll::wait(
            &self.epoll,
            rustix::buffer::spare_capacity(&mut events.0),
            timeout.as_ref(),
        )?;
        Ok(())
    }

    /// Ends the current wait, or the next one if none is under way. Any thread may call it.
    pub(crate) fn notify(&self) -> io::Result<()> {
        match rustix::io::write(&self.notifier, &1u64.to_ne_bytes()) {
            // A full counter still has a wake-up pending.
            Ok(_) | Err(rustix::io::Errno::AGAIN) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::Cell;

    thread_local! {
        /// Makes every wait of this thread's pollers fail, as a kernel or a seccomp filter
        /// that refuses the call would.
        pub(crate) static FAILING: Cell<bool> = const { Cell::new(false) };
    }
}
