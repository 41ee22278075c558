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
use crate::sys::panic::catch;

/// The default stream window, in items.
pub(crate) const DEFAULT_WINDOW: u64 = 1024;

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
    /// Items received that the consumer's side did not take yet.
    queue: VecDeque<Result<T, TaskError>>,
    received: u64,
    /// Credit granted in all (beyond the window), and what is still to send.
    granted: u64,
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
                granted: 0,
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
        // The worker may send its window and what was granted since, no more: so the parent
        // never holds more than a window of items (and a count is checked before it is used).
        {
            let state = self.lock();
            let received = state.received + u64::from(count);
            if received > self.window + state.granted {
                return Err(format!(
                    "the stream sent {received} items with credit for {}",
                    self.window + state.granted
                ));
            }
        }
        let (mut decoded, failed) = decode_items::<T>(count, payload)?;
        let waker = {
            let mut state = self.lock();
            state.received += u64::from(count);
            if state.queue.is_empty() {
                std::mem::swap(&mut state.queue, &mut decoded);
            } else {
                state.queue.append(&mut decoded);
            }
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

/// A decoded batch, and the message of the item that did not decode (its last).
type Decoded<T> = (VecDeque<Result<T, TaskError>>, Option<String>);

/// Decodes a batch of `count` items. They are decoded under one guard (one per item would
/// keep the decoding of small values from being inlined); only if a `Deserialize` panics are
/// they decoded again one guard each, so that the items before the panic are kept. An item
/// that does not decode is the last one, an error, and its message is returned beside.
fn decode_items<T: DeserializeOwned>(count: u32, payload: &[u8]) -> Result<Decoded<T>, String> {
    let decode_with = |decode: &dyn Fn(&[u8]) -> Result<T, String>| {
        // An item takes 4 bytes at least: room for more than that is the worker's word only.
        let mut decoded = VecDeque::with_capacity((count as usize).min(payload.len() / 4));
        let mut segments = Segments::from_count(count, payload);
        for segment in &mut segments {
            let (_, bytes) = segment?;
            if let Err(e) = decode(bytes).map(|item| decoded.push_back(Ok(item))) {
                decoded.push_back(Err(TaskError::Decode(format!("item: {e}"))));
                return Ok((decoded, Some(format!("item: {e}"))));
            }
        }
        if !segments.is_at_end() {
            return Err("a batch of items has bytes after its last item".to_string());
        }
        Ok((decoded, None))
    };
    let plain = |bytes: &[u8]| rmp_serde::from_slice(bytes).map_err(|e| e.to_string());
    match catch(|| decode_with(&plain)) {
        Ok(decoded) => decoded,
        Err(_) => decode_with(&codec::decode),
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
/// **Backpressure**: the worker runs at most the stream's window of items (1024 unless set
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
    /// Items taken from the shared queue a batch at a time, to hand out one by one.
    ready: VecDeque<Result<T, TaskError>>,
    /// Items handed out since credit was last granted.
    taken: u64,
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
            ready: VecDeque::new(),
            taken: 0,
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

    /// Takes the next item (the shared queue is taken a batch at a time), granting the worker
    /// credit when half a window was taken since the last grant.
    fn take_item(&mut self, waker: &Waker) -> Option<Result<T, TaskError>> {
        if self.ready.is_empty() {
            let mut state = self.items.lock();
            if state.queue.is_empty() {
                match &mut state.waker {
                    Some(stored) => stored.clone_from(waker),
                    None => state.waker = Some(waker.clone()),
                }
                return None;
            }
            std::mem::swap(&mut self.ready, &mut state.queue);
        }
        let item = self.ready.pop_front()?;
        self.taken += 1;
        if self.taken >= (self.items.window / 2).max(1) {
            let mut state = self.items.lock();
            state.granted += self.taken;
            state.to_grant += self.taken;
            drop(state);
            self.taken = 0;
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

// Items are only moved around, never pinned.
impl<T> Unpin for ProcessStream<T> {}

impl<T> fmt::Debug for ProcessStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.task.info().describe("ProcessStream", f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(items: &[u64]) -> Vec<u8> {
        let mut payload = Vec::new();
        for item in items {
            let encoded = rmp_serde::to_vec(item).unwrap();
            payload.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
            payload.extend_from_slice(&encoded);
        }
        payload
    }

    #[test]
    fn a_lying_count_is_refused_before_anything_is_allocated() {
        let items = StreamItems::<u64>::new(4);
        assert!(items.push(u32::MAX, &[]).is_err(), "over the credit");
        let items = StreamItems::<u64>::new(u64::from(u32::MAX));
        // Within the credit, but the payload holds no such number of items: room for the
        // count would take hundreds of GB (this process would abort), room for what the
        // payload can hold is made instead.
        assert!(items.push(u32::MAX, &batch(&[1, 2])).is_err());
    }

    #[test]
    fn items_beyond_the_window_and_the_credit_break_the_protocol() {
        let items = StreamItems::<u64>::new(2);
        items.push(2, &batch(&[1, 2])).unwrap();
        assert!(
            items.push(1, &batch(&[3])).is_err(),
            "no credit was granted"
        );
        let items = StreamItems::<u64>::new(2);
        items.push(2, &batch(&[1, 2])).unwrap();
        items.lock().granted += 1;
        items.push(1, &batch(&[3])).unwrap();
        let queued: Vec<u64> = items.lock().queue.drain(..).map(Result::unwrap).collect();
        assert_eq!(queued, [1, 2, 3]);
        assert!(
            items.push(1, &batch(&[1, 2])).is_err(),
            "bytes after the last item"
        );
    }
}
