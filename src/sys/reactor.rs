//! The driver thread's own poller, for the pipes of its workers.
//!
//! Under async-io's `block_on` (smol's, and the driver's before this), every thread that
//! blocks competes for the one global reactor, and whichever holds it handles every event.
//! A caller blocked in smol's `block_on` would then take a worker's answer, wake the driver
//! thread to read it, and be woken again with the result: two more wake-ups per round trip
//! than a caller under Tokio (docs/performance.md has the figures). So the driver blocks in
//! [`block_on`] here, on a [`Poller`] of its own, and its workers' pipes are [`Pipe`]s
//! registered with it: their events reach the driver thread directly, whatever the caller
//! runs. Its own timers ([`sleep`]) are kept here too, so that arming one costs no word to
//! another thread. What else the driver awaits (async-io timers, a child's exit, channels)
//! still wakes it through its waker, from whichever thread saw it.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};

use super::poller::{Events, Poller};

/// The poller of the thread that runs [`block_on`], and what waits on it.
struct Reactor {
    poller: Arc<Poller>,
    /// Per registered pipe (its key is the index), the tasks waiting for it to be readable
    /// and writable; `None` for a free slot.
    sources: RefCell<Vec<Option<Source>>>,
    /// The tasks sleeping until a deadline, by deadline (and a number that tells apart two
    /// with the same one).
    timers: RefCell<BTreeMap<(Instant, u64), Waker>>,
    next_timer: Cell<u64>,
}

#[derive(Default)]
struct Source {
    read: Option<Waker>,
    write: Option<Waker>,
}

thread_local! {
    /// The notifier of the future this thread is polling in [`block_on`], if it is (only
    /// compared, never dereferenced).
    static POLLING: Cell<*const Notifier> = const { Cell::new(std::ptr::null()) };
    /// The reactor of this thread, while it runs [`block_on`].
    static CURRENT: RefCell<Option<Rc<Reactor>>> = const { RefCell::new(None) };
}

/// The reactor of this thread, inside [`block_on`].
fn current() -> Option<Rc<Reactor>> {
    CURRENT.with(|current| current.borrow().clone())
}

/// Wakes the thread blocked in [`block_on`].
struct Notifier {
    poller: Arc<Poller>,
    /// Set when woken, cleared before each poll of the future.
    woken: AtomicBool,
}

impl Wake for Notifier {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Only the first wake-up since the last poll needs to interrupt the wait.
        if !self.woken.swap(true, Ordering::AcqRel) {
            // A wake-up from this thread while it polls its future or runs the wakers of its
            // events needs no word: the loop sees `woken` at its top, and polls again.
            if POLLING.with(|polling| polling.get() == Arc::as_ptr(self)) {
                return;
            }
            // A failed notification leaves the thread in `wait`; it has no cause to fail.
            let _ = self.poller.notify();
        }
    }
}

/// Runs `future` to completion on this thread, waiting in this thread's own poller between
/// polls; [`Pipe`]s made inside it are registered with that poller. If no poller can be
/// made (no descriptor left), runs it on async-io's `block_on`, where [`Pipe::new`] fails.
pub(crate) fn block_on<T>(future: impl Future<Output = T>) -> T {
    let poller = match Poller::new() {
        Ok(poller) => Arc::new(poller),
        Err(_) => return async_io::block_on(future),
    };
    let reactor = Rc::new(Reactor {
        poller: poller.clone(),
        sources: RefCell::new(Vec::new()),
        timers: RefCell::new(BTreeMap::new()),
        next_timer: Cell::new(0),
    });
    CURRENT.with(|current| *current.borrow_mut() = Some(reactor.clone()));
    // Unset on the way out, panics included.
    struct Unset;
    impl Drop for Unset {
        fn drop(&mut self) {
            CURRENT.with(|current| current.borrow_mut().take());
            POLLING.with(|polling| polling.set(std::ptr::null()));
        }
    }
    let _unset = Unset;
    let notifier = Arc::new(Notifier {
        poller,
        woken: AtomicBool::new(true),
    });
    let waker = Waker::from(notifier.clone());
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    let mut events = Events::new();
    // Set while this thread runs the future or the wakers of its events and timers: their
    // wake-ups are seen at the top of the loop, and need no word to the poller.
    let on_this_thread = || POLLING.with(|polling| polling.set(Arc::as_ptr(&notifier)));
    let off_this_thread = || POLLING.with(|polling| polling.set(std::ptr::null()));
    loop {
        if notifier.woken.swap(false, Ordering::AcqRel) {
            on_this_thread();
            let polled = future.as_mut().poll(&mut cx);
            off_this_thread();
            if let Poll::Ready(output) = polled {
                return output;
            }
            // A wake-up during the poll sets `woken` again: poll at once.
            if notifier.woken.load(Ordering::Acquire) {
                continue;
            }
        }
        let timeout = reactor
            .timers
            .borrow()
            .keys()
            .next()
            .map(|(deadline, _)| deadline.saturating_duration_since(Instant::now()));
        // A signal only ends the wait early (with no events). A poller that fails (it has no
        // cause to) must not leave its tasks waiting for events it cannot report: every task
        // waiting on it is woken to try again, a millisecond from now, until it works again.
        let failed = reactor
            .poller
            .wait(&mut events, timeout)
            .is_err_and(|err| err.kind() != io::ErrorKind::Interrupted);
        if failed {
            std::thread::sleep(Duration::from_millis(1));
        }
        on_this_thread();
        match failed {
            true => reactor.wake_all(),
            false => reactor.dispatch(&events),
        }
        reactor.fire_timers();
        off_this_thread();
    }
}

impl Reactor {
    /// Wakes every task waiting for a pipe (a task woken for nothing tries again and waits
    /// again).
    fn wake_all(&self) {
        let wakers: Vec<Waker> = self
            .sources
            .borrow_mut()
            .iter_mut()
            .flatten()
            .flat_map(|source| [source.read.take(), source.write.take()])
            .flatten()
            .collect();
        for waker in wakers {
            waker.wake();
        }
    }

    /// Wakes the tasks waiting for the events that came.
    fn dispatch(&self, events: &Events) {
        let mut wakers = Vec::new();
        {
            let mut sources = self.sources.borrow_mut();
            for ready in events.iter() {
                let Some(Some(source)) = sources.get_mut(ready.key) else {
                    continue;
                };
                if ready.readable {
                    wakers.extend(source.read.take());
                }
                if ready.writable {
                    wakers.extend(source.write.take());
                }
            }
        }
        // Woken outside the borrow: a waker of this thread only sets `woken`, but keeps to
        // the rule that no code runs under it.
        for waker in wakers {
            waker.wake();
        }
    }

    /// Wakes the tasks whose deadline passed.
    fn fire_timers(&self) {
        let now = Instant::now();
        let due = {
            let mut timers = self.timers.borrow_mut();
            let later = timers.split_off(&(now, u64::MAX));
            std::mem::replace(&mut *timers, later)
        };
        for waker in due.into_values() {
            waker.wake();
        }
    }

    /// Records that the task of `waker` waits for `key` to turn readable (or writable). The
    /// poller reports every change of a registered fd: nothing is armed.
    fn wait_for(&self, key: usize, write: bool, waker: &Waker) {
        let mut sources = self.sources.borrow_mut();
        let source = sources[key].get_or_insert_with(Source::default);
        let slot = if write {
            &mut source.write
        } else {
            &mut source.read
        };
        match slot {
            Some(old) if old.will_wake(waker) => {}
            _ => *slot = Some(waker.clone()),
        }
    }
}

/// Waits for `duration`: see [`sleep_until`].
pub(crate) async fn sleep(duration: Duration) {
    sleep_until(Instant::now() + duration).await
}

/// Waits until `deadline`: on the poller of this thread inside [`block_on`] (no other thread
/// hears of it), on an async-io timer elsewhere.
pub(crate) async fn sleep_until(deadline: Instant) {
    match current() {
        Some(reactor) => {
            Sleep {
                reactor,
                deadline,
                key: None,
            }
            .await
        }
        None => {
            async_io::Timer::at(deadline).await;
        }
    }
}

/// A task waiting on this thread's poller until `deadline`.
struct Sleep {
    reactor: Rc<Reactor>,
    deadline: Instant,
    /// Its entry in the reactor's timers, once it waits.
    key: Option<(Instant, u64)>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            if let Some(key) = self.key.take() {
                self.reactor.timers.borrow_mut().remove(&key);
            }
            return Poll::Ready(());
        }
        let key = match self.key {
            Some(key) => key,
            None => {
                let number = self.reactor.next_timer.get();
                self.reactor.next_timer.set(number + 1);
                let key = (self.deadline, number);
                self.key = Some(key);
                key
            }
        };
        self.reactor
            .timers
            .borrow_mut()
            .insert(key, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.reactor.timers.borrow_mut().remove(&key);
        }
    }
}

/// A worker's pipe end, non-blocking, registered with the poller of the thread that made it
/// (inside [`block_on`]), and only ever used on that thread (it is not `Send`).
pub(crate) struct Pipe {
    fd: OwnedFd,
    key: usize,
    reactor: Rc<Reactor>,
}

impl Pipe {
    /// Registers `fd` (a pipe end) with this thread's poller, making it non-blocking. Fails
    /// outside [`block_on`].
    pub(crate) fn new(fd: impl Into<OwnedFd>) -> io::Result<Pipe> {
        let fd = fd.into();
        let reactor = current()
            .ok_or_else(|| io::Error::other("the pool's driver has no poller of its own"))?;
        rustix::io::ioctl_fionbio(&fd, true)?;
        let key = {
            let mut sources = reactor.sources.borrow_mut();
            let key = match sources.iter().position(Option::is_none) {
                Some(free) => free,
                None => {
                    sources.push(None);
                    sources.len() - 1
                }
            };
            sources[key] = Some(Source::default());
            key
        };
        // SAFETY: `fd` is deleted from the poller in `Drop`, before it is closed (the
        // `OwnedFd` field is dropped after `drop` returns), and `reactor`, held here, keeps
        // the poller alive until then.
        if let Err(err) = unsafe { reactor.poller.add(fd.as_fd(), key) } {
            reactor.sources.borrow_mut()[key] = None;
            return Err(err);
        }
        Ok(Pipe { fd, key, reactor })
    }

    /// Polls `op` (a read or a write of the fd) until it does not block; registers the task
    /// for the fd's readiness when it does.
    fn poll_io(
        &self,
        cx: &mut Context<'_>,
        write: bool,
        mut op: impl FnMut(BorrowedFd<'_>) -> rustix::io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            match op(self.fd.as_fd()) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => {}
                Err(err) => return Poll::Ready(Err(err.into())),
            }
            // The fd changes no more before the next wait of this thread, which reports any
            // change after the attempt (a new edge), and then wakes this task.
            self.reactor.wait_for(self.key, write, cx.waker());
            return Poll::Pending;
        }
    }
}

impl AsyncRead for Pipe {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_io(cx, false, |fd| rustix::io::read(fd, &mut *buf))
    }
}

impl AsyncWrite for Pipe {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_io(cx, true, |fd| rustix::io::write(fd, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsFd for Pipe {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        // A failure leaves nothing to undo: the fd is closed right after, which removes it
        // from the epoll set as well.
        let _ = self.reactor.poller.delete(self.fd.as_fd());
        self.reactor.sources.borrow_mut()[self.key] = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::{AsyncReadExt, AsyncWriteExt};

    fn pipe() -> (Pipe, Pipe) {
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        (Pipe::new(read).unwrap(), Pipe::new(write).unwrap())
    }

    #[test]
    fn a_read_waits_for_what_another_thread_writes() {
        block_on(async {
            let (mut read, write) = pipe();
            // The write end leaves this thread as a plain descriptor.
            let write = rustix::io::dup(&write).unwrap();
            let writer = std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(20));
                rustix::io::write(&write, b"hello").unwrap();
            });
            let mut got = [0; 5];
            read.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"hello");
            writer.join().unwrap();
        });
    }

    #[test]
    fn a_full_pipe_takes_the_rest_once_it_is_read() {
        block_on(async {
            let (mut read, mut write) = pipe();
            let data = vec![9u8; 1 << 20];
            let sent = async {
                write.write_all(&data).await.unwrap();
                drop(write);
            };
            let received = async {
                let mut all = Vec::new();
                read.read_to_end(&mut all).await.unwrap();
                all
            };
            let ((), all) = futures_lite::future::zip(sent, received).await;
            assert_eq!(all, data);
        });
    }

    #[test]
    fn a_wake_from_another_thread_ends_the_wait() {
        let (send, recv) = async_channel::bounded::<u32>(1);
        let sender = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            send.send_blocking(7).unwrap();
        });
        assert_eq!(block_on(recv.recv()).unwrap(), 7);
        sender.join().unwrap();
    }

    #[test]
    fn data_that_came_while_nobody_waited_is_read_later() {
        // The poller reports each change once (edge-triggered): a change reported while no
        // task waits is dropped, and the next read must still find the data.
        block_on(async {
            let (mut read, mut write) = pipe();
            let mut got = [0; 2];
            // A read that waits, given up: its registration stays behind.
            let gave_up = futures_lite::future::or(
                async { read.read_exact(&mut got).await.map(|()| true) },
                async { Ok(false) },
            );
            assert!(!gave_up.await.unwrap());
            write.write_all(b"hi").await.unwrap();
            // A turn of the poller reports the change, with no task waiting for it.
            sleep(Duration::from_millis(5)).await;
            read.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"hi");
            // And the next change is reported again.
            let later = async {
                sleep(Duration::from_millis(5)).await;
                write.write_all(b"yo").await.unwrap();
            };
            let ((), got) = futures_lite::future::zip(later, async {
                let mut got = [0; 2];
                read.read_exact(&mut got).await.unwrap();
                got
            })
            .await;
            assert_eq!(&got, b"yo");
        });
    }

    #[test]
    fn a_poller_that_fails_still_lets_its_pipes_be_read() {
        // Every wait fails: the tasks waiting on the poller are woken to try again.
        super::super::poller::tests::FAILING.with(|failing| failing.set(true));
        let got = block_on(async {
            let (mut read, write) = pipe();
            let write = rustix::io::dup(&write).unwrap();
            let writer = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                rustix::io::write(&write, b"late").unwrap();
            });
            let mut got = [0; 4];
            read.read_exact(&mut got).await.unwrap();
            writer.join().unwrap();
            got
        });
        super::super::poller::tests::FAILING.with(|failing| failing.set(false));
        assert_eq!(&got, b"late");
    }

    #[test]
    fn a_future_that_wakes_itself_is_polled_again() {
        // Such a wake-up writes nothing to the poller: the loop must see it by itself.
        let mut polls = 0;
        block_on(futures_lite::future::poll_fn(|cx| {
            polls += 1;
            if polls == 3 {
                return Poll::Ready(());
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }));
        assert_eq!(polls, 3);
    }

    #[test]
    fn sleeps_end_in_the_order_of_their_deadlines() {
        let order = RefCell::new(Vec::new());
        let started = Instant::now();
        block_on(futures_lite::future::zip(
            async {
                sleep(Duration::from_millis(30)).await;
                order.borrow_mut().push(30);
            },
            async {
                sleep(Duration::from_millis(10)).await;
                order.borrow_mut().push(10);
            },
        ));
        assert_eq!(*order.borrow(), [10, 30]);
        assert!(started.elapsed() >= Duration::from_millis(30));
        // A sleep dropped before its deadline leaves nothing behind.
        block_on(async {
            let early = futures_lite::future::or(
                async {
                    sleep(Duration::from_secs(60)).await;
                    false
                },
                async { true },
            );
            assert!(early.await);
            let reactor = current().unwrap();
            assert!(reactor.timers.borrow().is_empty());
        });
    }

    #[test]
    fn outside_block_on_a_pipe_cannot_be_made() {
        let (read, _write) = rustix::pipe::pipe().unwrap();
        assert!(Pipe::new(read).is_err());
    }
}
