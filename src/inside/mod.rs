//! Inside a running task: what a task's code reports beside its result (its progress, the
//! items of a stream, its captured output, its `log` records), and the worker's one channel to
//! the parent that carries those reports and the reply, in order.
//!
//! Every frame a worker writes goes through [`Channel`], under one lock that also names the
//! task whose reports may be written. A report is written only while its task runs, and the
//! reply is written last, under the same lock that then closes the task: so nothing a task
//! reports ever follows its end, and nothing is written while the worker is idle (which the
//! parent takes for a broken worker).

pub(crate) mod capture;
pub(crate) mod logger;
pub(crate) mod progress;
pub(crate) mod stream;

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};

use crate::protocol::{frame, FromWorker, RUN_CAPTURE};
use crate::sys::region::Region;

/// The channel of this worker process, once it has taken over its descriptors.
static CHANNEL: OnceLock<Channel> = OnceLock::new();

/// The worker's output to its parent, and the state of the task being run.
pub(crate) struct Channel {
    output: Mutex<Output>,
    /// Whether a task runs: the quick check of every report.
    running: AtomicBool,
    /// The id of the task that runs (valid while `running`).
    current: AtomicU64,
    /// The `Run` flags of the task that runs.
    flags: AtomicU8,
    /// The stream window of the task that runs (0: not a stream).
    window: AtomicU64,
    progress: Mutex<progress::State>,
    credit: Mutex<stream::Credit>,
    credit_changed: Condvar,
}

/// The protocol output, and the task whose reports it takes.
struct Output {
    file: File,
    task: Option<u64>,
    /// The shared memory large frames go through, if the parent set it up.
    region: Option<Region>,
}

impl Output {
    /// Writes the frame of `head` (with its length prefix) and `payload`: through the region
    /// if it is large, and the region is free.
    fn write_frame(&mut self, head: &[u8], payload: &[u8]) -> std::io::Result<()> {
        let body = [&head[frame::LEN_PREFIX..], payload];
        if let Some(marker) = frame::into_region(self.region.as_mut(), &body) {
            return self.file.write_all(&marker);
        }
        self.file.write_all(head)?;
        if !payload.is_empty() {
            self.file.write_all(payload)?;
        }
        Ok(())
    }
}

/// Locks `mutex`; no code that can panic runs under these locks, but a poisoned one must not
/// spread panics.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Makes `output` (the protocol's output descriptor) this worker's channel to its parent.
/// Called once, when the worker takes over its descriptors.
pub(crate) fn install(output: File) -> &'static Channel {
    CHANNEL.get_or_init(|| Channel {
        output: Mutex::new(Output {
            file: output,
            task: None,
            region: None,
        }),
        running: AtomicBool::new(false),
        current: AtomicU64::new(0),
        flags: AtomicU8::new(0),
        window: AtomicU64::new(0),
        progress: Mutex::new(progress::State::default()),
        credit: Mutex::new(stream::Credit::default()),
        credit_changed: Condvar::new(),
    })
}

/// The channel, inside a worker; `None` in any other process.
pub(crate) fn channel() -> Option<&'static Channel> {
    CHANNEL.get()
}

impl Channel {
    /// Sends large frames through `region` from now on.
    pub(crate) fn use_region(&self, region: Region) {
        lock(&self.output).region = Some(region);
    }

    /// Writes a frame that belongs to no task (the handshake).
    pub(crate) fn write(&self, frame: &[u8]) -> Result<(), String> {
        lock(&self.output)
            .file
            .write_all(frame)
            .map_err(|e| format!("could not write to the parent: {e}"))
    }

    /// Writes a report of task `id`, `header` and then `payload` (empty for most), if that
    /// task still runs; a report of a task that ended is dropped. A failed write is left for
    /// the reply to find.
    pub(crate) fn report(&self, id: u64, header: &FromWorker, payload: &[u8]) {
        // Reports are small headers, and payloads stay far below the frame cap.
        let Ok(head) = frame::head(header, payload.len()) else {
            return;
        };
        let mut output = lock(&self.output);
        if output.task != Some(id) {
            return;
        }
        let _ = output.write_frame(&head, payload);
    }

    /// The id of the task that runs, if one does.
    pub(crate) fn running(&self) -> Option<u64> {
        match self.running.load(Ordering::Acquire) {
            true => Some(self.current.load(Ordering::Relaxed)),
            false => None,
        }
    }

    /// The `Run` flags of the task that runs.
    pub(crate) fn flags(&self) -> u8 {
        self.flags.load(Ordering::Relaxed)
    }

    /// Opens task `id` (its `Run` `flags` and stream `window`): its reports may be written
    /// from now on. On an error (its output could not be captured) the task does not run, and
    /// [`end`](Channel::end) still closes it.
    pub(crate) fn begin(&self, id: u64, flags: u8, window: u64) -> Result<(), String> {
        // First: `end` undoes what these say, even for a task that could not begin.
        self.current.store(id, Ordering::Relaxed);
        self.flags.store(flags & !RUN_CAPTURE, Ordering::Relaxed);
        self.window.store(window, Ordering::Relaxed);
        // Only a stream reads credit: other tasks take no lock for it.
        if window > 0 {
            *lock(&self.credit) = stream::Credit::open(id, window);
        }
        lock(&self.progress).open();
        lock(&self.output).task = Some(id);
        if flags & RUN_CAPTURE != 0 {
            capture::start(id)?;
            self.flags.store(flags, Ordering::Relaxed);
        }
        self.running.store(true, Ordering::Release);
        Ok(())
    }

    /// Closes the task that runs with its `reply` frame, written after everything it
    /// reported: its last progress, and what it wrote to a captured fd 1 and 2 before it
    /// returned.
    pub(crate) fn end(&self, reply: &[u8]) -> Result<(), String> {
        let id = self.current.load(Ordering::Relaxed);
        self.running.store(false, Ordering::Release);
        progress::close(self, id);
        if self.flags() & RUN_CAPTURE != 0 {
            capture::finish();
        }
        if self.window.load(Ordering::Relaxed) > 0 {
            *lock(&self.credit) = stream::Credit::default();
        }
        let mut output = lock(&self.output);
        output.task = None;
        output
            .write_frame(reply, &[])
            .map_err(|e| format!("could not write to the parent: {e}"))
    }

    /// Adds the credit the parent granted stream `id` (read by the worker's input thread);
    /// credit for a stream that ended is dropped.
    pub(crate) fn grant(&self, id: u64, items: u64) {
        let mut credit = lock(&self.credit);
        if credit.grant(id, items) {
            self.credit_changed.notify_all();
        }
    }

    /// Waits until stream `id` may send more than `sent` items (the worker's input thread
    /// grants it). Returns how many it may send in all.
    pub(crate) fn wait_for_credit(&self, id: u64, sent: u64) -> u64 {
        let granted = lock(&self.credit).granted;
        if granted > sent {
            return granted;
        }
        // The parent sees how far the task got while it waits.
        progress::flush(self, id);
        let credit = lock(&self.credit);
        let credit = self
            .credit_changed
            .wait_while(credit, |credit| credit.granted <= sent)
            .unwrap_or_else(PoisonError::into_inner);
        credit.granted
    }
}
