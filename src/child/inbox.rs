//! The worker's inbox: the jobs the parent sent ahead that have not started yet, and the input
//! thread that reads the parent while a watched task runs.
//!
//! The main thread reads its input itself between tasks, so that a job sent to an idle worker
//! never waits for another thread to be woken. While a task runs that must still hear the
//! parent, the main thread lends its input to the input thread, which reads what comes: jobs
//! sent ahead (kept here, in order), `Skip` (a job withdrawn: answered `Skipped` if it is still
//! here), a stream's `Credit`, and for a remote worker `Stop` and the end of input, obeyed at
//! once. A task is watched if the parent piped it (more jobs may follow while it runs), if it
//! is a stream (its credit comes while it runs), or if the worker is remote.
//!
//! A job leaves the inbox under the same lock as a `Skip` looks for it, and its `Started` is
//! written under that lock: so the parent gets either `Skipped` or `Started` for a job it
//! withdraws, never both, and never `Skipped` for a job that began.

use std::collections::VecDeque;
use std::fs::File;
use std::io::BufReader;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rustix::fd::OwnedFd;

use crate::inside::Channel;
use crate::protocol::{frame, FromWorker, Run, ToWorker};
use crate::sys::region::Region;
use crate::sys::signal::{kill_own_group, Signal};

/// The protocol input, and what was read of a job whose `Run` has not come yet.
pub(super) struct Input {
    pub(super) reader: BufReader<File>,
    /// The `Piped` marker read last, for the `Run` that follows it: `Some(confirm)`.
    pub(super) marker: Option<bool>,
    /// The shared memory large frames come through, if the parent set it up.
    pub(super) jobs: Option<Region>,
}

/// A frame the parent sent that waits for the main thread.
pub(super) enum Waiting {
    /// A job: its header, its frame body, and where its payload starts in it.
    Job(Queued),
    /// `Shutdown`, or the end of a local worker's input: serve no more.
    End,
}

/// A job read ahead.
pub(super) struct Queued {
    pub(super) run: Run,
    pub(super) body: Vec<u8>,
    /// Whether it was piped (watched while it runs).
    pub(super) piped: bool,
    /// Whether its start is confirmed with `Started`.
    pub(super) confirm: bool,
}

/// The jobs read ahead, and the way to the input thread.
pub(super) struct Inbox {
    waiting: Mutex<VecDeque<Waiting>>,
    /// Notified when a frame is added to `waiting` while the main thread waits for one.
    arrived: Condvar,
    /// Whether the main thread waits on `arrived` (set and read under the `waiting` lock).
    sleeping: AtomicBool,
    channel: &'static Channel,
    remote: bool,
    /// Lends the input to the input thread.
    lend: mpsc::Sender<Input>,
    /// Asks the input thread to give the input back.
    wake: OwnedFd,
    /// Where the input thread gives it back.
    given_back: Mutex<mpsc::Receiver<Input>>,
}

/// Locks `mutex`; no code that can panic runs under it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inbox {
    /// Starts the input thread of a worker that writes to the parent through `channel`.
    pub(super) fn start(channel: &'static Channel, remote: bool) -> Result<&'static Inbox, String> {
        let (wake_read, wake) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| format!("could not make its wake-up pipe: {e}"))?;
        let (lend, lent) = mpsc::channel::<Input>();
        let (give_back, given_back) = mpsc::channel::<Input>();
        // Lives as long as the worker process: its thread holds it.
        let inbox: &'static Inbox = Box::leak(Box::new(Inbox {
            waiting: Mutex::new(VecDeque::new()),
            arrived: Condvar::new(),
            sleeping: AtomicBool::new(false),
            channel,
            remote,
            lend,
            wake,
            given_back: Mutex::new(given_back),
        }));
        std::thread::Builder::new()
            .name("offload-input".into())
            .spawn(move || inbox.read_while_lent(lent, wake_read, give_back))
            .map_err(|e| format!("could not start its input thread: {e}"))?;
        Ok(inbox)
    }

    /// Lends `input` to the input thread for the task about to run.
    pub(super) fn lend(&self, input: Input) -> Result<(), String> {
        self.lend
            .send(input)
            .map_err(|_| "its input thread ended".to_string())
    }

    /// Takes the input back from the input thread: wakes it and waits until it lets go.
    pub(super) fn take_back(&self) -> Result<Input, String> {
        rustix::io::write(&self.wake, &[1])
            .map_err(|e| format!("could not wake its input thread: {e}"))?;
        lock(&self.given_back)
            .recv()
            .map_err(|_| "its input thread ended".to_string())
    }

    /// Takes the next frame waiting here, and has `write` write what must go to the parent
    /// before it: the reply of the task that ended, then the `Started` of the job taken, if
    /// it confirms its start (one write, under the lock a `Skip` takes).
    pub(super) fn next(
        &self,
        write: impl FnOnce(Option<u64>) -> Result<(), String>,
    ) -> Result<Option<Waiting>, String> {
        let mut waiting = lock(&self.waiting);
        let next = waiting.pop_front();
        let started = match &next {
            Some(Waiting::Job(job)) if job.confirm => Some(job.run.id),
            _ => None,
        };
        write(started)?;
        Ok(next)
    }

    /// Waits up to `limit` for the input thread to bring a frame: a pipeline's next job is
    /// usually on its way. Returns whether one came.
    pub(super) fn wait_briefly(&self, limit: Duration) -> bool {
        let waiting = lock(&self.waiting);
        self.sleeping.store(true, Ordering::Relaxed);
        let (waiting, _) = self
            .arrived
            .wait_timeout_while(waiting, limit, |waiting| waiting.is_empty())
            .unwrap_or_else(PoisonError::into_inner);
        self.sleeping.store(false, Ordering::Relaxed);
        !waiting.is_empty()
    }

    /// Withdraws job `id` if it waits here, and says so to the parent; a job that is not here
    /// has started (its `Started` is on its way) or never came.
    pub(super) fn skip(&self, id: u64) {
        let mut waiting = lock(&self.waiting);
        let at = waiting
            .iter()
            .position(|w| matches!(w, Waiting::Job(job) if job.run.id == id));
        if let Some(at) = at {
            waiting.remove(at);
            // A failed write shows in the next reply's.
            let _ = self
                .channel
                .write(&frame::frame(&FromWorker::Skipped { id }));
        }
    }

    /// The input thread: while a task runs with the input lent, reads what the parent sends
    /// (see the module docs) until the main thread asks for it back.
    fn read_while_lent(
        &self,
        lent: mpsc::Receiver<Input>,
        wake: OwnedFd,
        give_back: mpsc::Sender<Input>,
    ) {
        use rustix::event::{PollFd, PollFlags};
        let mut body = Vec::new();
        // Set once a local worker's input ended: only the wake-up is waited for then.
        let mut ended = false;
        while let Ok(mut input) = lent.recv() {
            loop {
                // Frames already read from the pipe are taken first, without a system call;
                // the wake-up is looked at once they are.
                if ended || input.reader.buffer().is_empty() {
                    let mut fds = [
                        PollFd::new(&wake, PollFlags::IN),
                        PollFd::new(input.reader.get_ref(), PollFlags::IN),
                    ];
                    let watched = if ended { 1 } else { 2 };
                    if rustix::event::poll(&mut fds[..watched], None).is_err() {
                        continue; // interrupted
                    }
                    if !fds[0].revents().is_empty() {
                        let _ = rustix::io::read(&wake, &mut [0; 1]);
                        break;
                    }
                    if ended || fds[1].revents().is_empty() {
                        continue;
                    }
                }
                match frame::read_frame(&mut input.reader, &mut body, input.jobs.as_mut()) {
                    Ok(true) => self.take(&mut input, std::mem::take(&mut body)),
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                        eprintln!("offload worker: a broken frame from the parent: {e}");
                        kill_own_group()
                    }
                    Ok(false) | Err(_) => {
                        self.input_ended();
                        ended = true;
                    }
                }
            }
            if give_back.send(input).is_err() {
                return;
            }
        }
    }

    fn add(&self, frame: Waiting) {
        let mut waiting = lock(&self.waiting);
        waiting.push_back(frame);
        // A wake-up (a system call) only for a main thread that waits.
        if self.sleeping.load(Ordering::Relaxed) {
            self.arrived.notify_one();
        }
    }

    /// Acts on a frame the input thread read.
    fn take(&self, input: &mut Input, body: Vec<u8>) {
        match frame::split::<ToWorker>(&body) {
            Ok((ToWorker::Run(run), _)) => {
                let confirm = input.marker.take();
                self.add(Waiting::Job(Queued {
                    run,
                    body,
                    piped: confirm.is_some(),
                    confirm: confirm == Some(true),
                }));
            }
            Ok((ToWorker::Piped { confirm }, _)) => input.marker = Some(confirm),
            Ok((ToWorker::Skip { id }, _)) => self.skip(id),
            Ok((ToWorker::Credit { id, items }, _)) => self.channel.grant(id, items),
            Ok((ToWorker::Shutdown, _)) => self.add(Waiting::End),
            Ok((ToWorker::Stop { grace_ms }, _)) => stop_group(grace_ms),
            Ok((other, _)) => {
                eprintln!("offload worker: unexpected message {other:?} while running a task");
                kill_own_group()
            }
            Err(e) => {
                eprintln!("offload worker: undecodable message from the parent: {e}");
                kill_own_group()
            }
        }
    }

    /// The parent, or the connection to it, is gone. A remote worker goes at once with
    /// everything it started (no signal of the parent's reaches it); a local one, which dies
    /// with its parent anyway, ends after its task, and starts none of the jobs it holds.
    fn input_ended(&self) {
        if self.remote {
            kill_own_group()
        }
        lock(&self.waiting).clear();
        self.add(Waiting::End);
    }
}

/// `SIGTERM` to the process group, then `SIGKILL` after `grace_ms`: the same sequence as the
/// parent applies to a local worker. Does not return: the group includes this process.
pub(super) fn stop_group(grace_ms: u64) -> ! {
    let _ = rustix::process::kill_current_process_group(Signal::TERM);
    std::thread::sleep(Duration::from_millis(grace_ms));
    kill_own_group()
}
