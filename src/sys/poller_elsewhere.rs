//! What the driver thread blocks in between polls where there is no epoll: the `polling`
//! crate (kqueue, event ports, poll), in edge mode, behind the interface of the Linux version
//! (`poller.rs`).

use std::io;
use std::time::Duration;

use rustix::fd::BorrowedFd;

/// As on Linux.
pub(crate) struct Poller(polling::Poller);

/// As on Linux.
pub(crate) struct Events(polling::Events);

/// As on Linux.
pub(crate) struct Ready {
    pub(crate) key: usize,
    pub(crate) readable: bool,
    pub(crate) writable: bool,
}

impl Events {
    pub(crate) fn new() -> Events {
        Events(polling::Events::new())
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = Ready> + '_ {
        self.0.iter().map(|event| Ready {
            key: event.key,
            readable: event.readable,
            writable: event.writable,
        })
    }
}

impl Poller {
    pub(crate) fn new() -> io::Result<Poller> {
        let poller = polling::Poller::new()?;
        if !poller.supports_edge() {
            return Err(io::ErrorKind::Unsupported.into());
        }
        Ok(Poller(poller))
    }

    /// As on Linux.
    ///
    /// # Safety
    ///
    /// `fd` must be [`delete`](Poller::delete)d before it is closed.
    pub(crate) unsafe fn add(&self, fd: BorrowedFd<'_>, key: usize) -> io::Result<()> {
        // SAFETY: this function's own contract is `polling::Poller::add_with_mode`'s: `fd` is
        // deleted before it is closed.
        unsafe {
            self.0
                .add_with_mode(&fd, polling::Event::all(key), polling::PollMode::Edge)
        }
    }

    pub(crate) fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.0.delete(fd)
    }

    pub(crate) fn wait(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<()> {
        events.0.clear();
        self.0.wait(&mut events.0, timeout).map(drop)
    }

    pub(crate) fn notify(&self) -> io::Result<()> {
        self.0.notify()
    }
}
