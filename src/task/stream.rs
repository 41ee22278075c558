//! [`ProcessStream`]: the items of a task whose function returns a sequence, as they come,
//! with the metadata and controls of a [`ProcessTask`].
//!
//! The worker may run at most the stream's *window* of items ahead of what the consumer took:
//! it starts with that credit, and the consumer grants more as it takes items (half a window
//! at a time, so that credit costs one small frame per half window). So the parent never
//! holds more than a window of items, however slow the consumer.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use event_listener::{Event, EventListener};
use futures_lite::Stream;
use serde::de::DeserializeOwned;

use super::handle::ProcessTask;
use super::info::TaskInfo;
use super::report::{Progress, TaskOutput};
use super::status::TaskStatus;
use crate::error::TaskError;
use crate::protocol::chunk::Segments;
use crate::protocol::codec;
use crate::protocol::event::Credit;

/// The default stream window, in items.
pub(crate) const DEFAULT_WINDOW: u64 = 256;

/// Where the items of a stream arrive, on the driver's thread.
pub(crate) trait ItemSink: Send + Sync {
    /// Takes `count` items (`u32` length and bytes each); an error breaks the protocol.
    fn push(&self, count: u32, payload: &[u8]) -> Result<(), String>;
    /// The credit the consumer grants.
    fn credit(&self) -> &dyn Credit;
}

/// The items of one stream, between the driver and the consumer.
pub(crate) struct StreamItems<T> {
    window: u64,
    state: Mutex<Items<T>>,
    /// Notified when credit is to be sent.
    granted: Event,
}

struct Items<T> {
    queue: VecDeque<Result<T, TaskError>>,
    /// Items received, and taken by the consumer.
    received: u64,
    taken: u64,
    /// Items taken that were not granted back yet.
    to_grant: u64,
    waker: Option<Waker>,
}

impl<T> StreamItems<T> {
    pub(crate) fn new(window: u64) -> Self {
        StreamItems {
            window,
            state: Mutex::new(Items {
                queue: VecDeque::new(),
                received: 0,
                taken: 0,
                to_grant: 0,
                waker: None,
            }),
            granted: Event::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Items<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T: DeserializeOwned + Send> ItemSink for StreamItems<T> {
    fn push(&self, count: u32, payload: &[u8]) -> Result<(), String> {
        let mut decoded = Vec::with_capacity((count as usize).min(self.window as usize));
        let mut failed = None;
        let mut segments = Segments::from_count(count, payload);
        for segment in &mut segments {
            let (_, bytes) = segment?;
            match codec::decode::<T>(bytes) {
                Ok(item) => decoded.push(Ok(item)),
                Err(e) => {
                    failed = Some(format!("item: {e}"));
                    decoded.push(Err(TaskError::Decode(format!("item: {e}"))));
                    break;
                }
            }
        }
        if failed.is_none() && !segments.is_at_end() {
            return Err("a batch of items has bytes after its last item".into());
        }
        let waker = {
            let mut state = self.lock();
            state.received += u64::from(count);
            if state.received - state.taken > self.window {
                return Err(format!(
                    "the stream ran {} items ahead of its consumer, over its window of {}",
                    state.received - state.taken,
                    self.window
                ));
            }
            state.queue.extend(decoded);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        match failed {
            // The consumer sees the error as the stream's last item; the worker is stopped.
            Some(message) => Err(format!("an item could not be decoded: {message}")),
            None => Ok(()),
        }
    }

    fn credit(&self) -> &dyn Credit {
        self
    }
}

impl<T: Send> Credit for StreamItems<T> {
    fn listen(&self) -> EventListener {
        self.granted.listen()
    }

    fn take(&self) -> u64 {
        std::mem::take(&mut self.lock().to_grant)
    }
}

/// The items of a task whose function returns a sequence ([`StreamFn`](crate::StreamFn)),
/// in the order the worker produced them, as a [`Stream`] of `Result<T, TaskError>`: spawn
/// one with [`ProcessPool::spawn_stream`](crate::ProcessPool::spawn_stream).
///
/// If the task fails (a panic, its worker's death, a timeout, a cancel), the error is the
/// last item, after every item the worker produced before; an item that cannot be decoded is
/// the last item too (and its worker is stopped). The stream then ends.
///
/// **Backpressure**: the worker runs at most the stream's window of items (256 unless set
/// with [`TaskBuilder::stream_window`](crate::TaskBuilder::stream_window)) ahead of what was
/// taken from the stream; it waits for the consumer beyond that, so a slow consumer never
/// makes the parent hold more than a window of items.
///
/// It has the metadata and controls of a [`ProcessTask`] (pid, status, cancel, progress).
/// **Dropping it cancels the task**, as dropping a `ProcessTask` does.
///
/// # Examples
///
/// ```no_run
/// # offload::init();
/// use futures_lite::StreamExt;
///
/// fn lines(n: u32) -> impl Iterator<Item = String> {
///     (0..n).map(|i| format!("line {i}"))
/// }
///
/// # futures_lite::future::block_on(async {
/// let pool = offload::ProcessPool::new(1)?;
/// let mut stream = pool.spawn_stream(lines, 3);
/// while let Some(line) = stream.next().await {
///     println!("{}", line?);
/// }
/// assert_eq!(stream.status(), "done");
/// # Ok::<(), offload::Error>(()) }).unwrap();
/// ```
#[must_use = "streams do nothing unless polled; dropping one cancels its task"]
pub struct ProcessStream<T> {
    task: ProcessTask<u64>,
    items: std::sync::Arc<StreamItems<T>>,
    /// The task's outcome, once it came: the stream ends after its last item.
    end: Option<Result<u64, TaskError>>,
    /// The stream yielded its last item.
    over: bool,
}

impl<T> ProcessStream<T> {
    pub(crate) fn new(task: ProcessTask<u64>, items: std::sync::Arc<StreamItems<T>>) -> Self {
        ProcessStream {
            task,
            items,
            end: None,
            over: false,
        }
    }

    /// The task's id, unique within this process.
    pub fn id(&self) -> u64 {
        self.task.id()
    }

    /// The function's name.
    pub fn func_name(&self) -> &'static str {
        self.task.func_name()
    }

    /// The task's current status: `done` once the worker produced its last item (some may
    /// still wait to be taken from the stream).
    pub fn status(&self) -> TaskStatus {
        self.task.status()
    }

    /// The pid of the worker running the task; see [`ProcessTask::pid`].
    pub fn pid(&self) -> Option<u32> {
        self.task.pid()
    }

    /// The host of the worker running the task; see [`ProcessTask::host`].
    pub fn host(&self) -> Option<String> {
        self.task.host()
    }

    /// The task's run time, once it has ended; see [`ProcessTask::duration`].
    pub fn duration(&self) -> Option<Duration> {
        self.task.duration()
    }

    /// The latest progress the task reported; see [`ProcessTask::progress`].
    pub fn progress(&self) -> Option<Progress> {
        self.task.progress()
    }

    /// What the task wrote, if it captures its output; see [`ProcessTask::output`].
    pub fn output(&self) -> Option<TaskOutput> {
        self.task.output()
    }

    /// The stream's window: how many items the worker may run ahead of the consumer.
    pub fn window(&self) -> u64 {
        self.items.window
    }

    /// A snapshot of the task's metadata.
    pub fn info(&self) -> TaskInfo {
        self.task.info()
    }

    /// Cancels the task; see [`ProcessTask::cancel`]. The stream then yields the items that
    /// arrived before, and [`TaskError::Cancelled`] last.
    pub fn cancel(&self) -> bool {
        self.task.cancel()
    }

    /// Cancels the task and returns once no process works on it any more; see
    /// [`ProcessTask::cancel_and_wait`].
    pub async fn cancel_and_wait(&self) -> bool {
        self.task.cancel_and_wait().await
    }

    /// Takes the next item, granting the worker credit for it when half a window was taken.
    fn take_item(&self, waker: &Waker) -> Option<Result<T, TaskError>> {
        let mut state = self.items.lock();
        let Some(item) = state.queue.pop_front() else {
            match &mut state.waker {
                Some(stored) => stored.clone_from(waker),
                None => state.waker = Some(waker.clone()),
            }
            return None;
        };
        state.taken += 1;
        state.to_grant += 1;
        let grant = state.to_grant >= (self.items.window / 2).max(1);
        drop(state);
        if grant {
            self.items.granted.notify(usize::MAX);
        }
        Some(item)
    }
}

impl<T> Stream for ProcessStream<T> {
    type Item = Result<T, TaskError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.over {
                return Poll::Ready(None);
            }
            if let Some(item) = this.take_item(cx.waker()) {
                this.over = item.is_err();
                return Poll::Ready(Some(item));
            }
            // Every item arrives before the task's end: with the queue empty, the end is last.
            if let Some(end) = this.end.take() {
                this.over = true;
                let received = this.items.lock().received;
                return Poll::Ready(match end {
                    Ok(count) if count == received => None,
                    Ok(count) => Some(Err(TaskError::Protocol(format!(
                        "the stream sent {received} items but said it sent {count}"
                    )))),
                    Err(error) => Some(Err(error)),
                });
            }
            match Pin::new(&mut this.task).poll(cx) {
                Poll::Ready(end) => this.end = Some(end),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<T> fmt::Debug for ProcessStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.task.info().describe("ProcessStream", f)
    }
}
