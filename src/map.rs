//! Many items through one function: [`Map`] and [`MapUnordered`], sent to workers in chunks.
//!
//! Items travel in chunks (see `protocol::chunk`) so that tiny items are not dominated by the
//! cost of one message each; the worker runs each item under its own `catch_unwind`, so one bad
//! item (a panic, an undecodable value) never costs the others their results. If a chunk's
//! worker dies or the chunk times out, its items are retried one per task, so that only the
//! item that kills its worker (or runs too long) fails.
//!
//! Chunk sizes adapt: small at first, then sized to take about [`TARGET_CHUNK_TIME`] in a
//! worker, and never so large that the last chunks leave workers idle.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use std::{fmt, mem};

use futures_lite::Stream;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::TaskError;
use crate::func::trampoline::chunk_entry_of;
use crate::func::{func_name, TaskFn};
use crate::pool::submit::{submit, Call};
use crate::pool::{ProcessPool, TaskBuilder};
use crate::protocol::chunk::{decode_chunk, EncodedItems};
use crate::protocol::RUN_ITEM_PROGRESS;
use crate::task::args::ArgsLayout;
use crate::task::blocking::block_on;
use crate::task::options::TaskOptions;
use crate::task::shared::Decoder;
use crate::task::{ProcessTask, Progress, TaskInfo};

/// How long a chunk should take in a worker, once per-item times are known.
const TARGET_CHUNK_TIME: Duration = Duration::from_millis(5);
/// The most items in one chunk.
const MAX_CHUNK: usize = 8192;
/// The chunk size before any chunk has been timed: one item, in case items are slow.
const FIRST_CHUNK: usize = 1;
/// Chunks queued or running per worker: enough to keep workers busy, few enough to bound the
/// memory of a long input.
const CHUNKS_PER_WORKER: usize = 2;

impl ProcessPool {
    /// Runs `f` on every item, in worker processes; resolves to one result per item, in input
    /// order.
    ///
    /// A failing item (panic, codec error, the death of its worker) fails alone: every other
    /// item still gets its result. Items are sent in chunks whose size adapts to how long an
    /// item takes, so tiny items are not dominated by the cost of a message each; chunking is
    /// invisible in the results. At most two chunks per worker are in flight, so a long input
    /// is read as the work progresses. Dropping the future cancels what is left.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # offload::init();
    /// fn fib(n: u64) -> u64 { if n < 2 { n } else { fib(n - 1) + fib(n - 2) } }
    ///
    /// # futures_lite::future::block_on(async {
    /// let pool = offload::ProcessPool::new(2)?;
    /// let results = pool.map(fib, 0..30).await;
    /// assert_eq!(results[10].as_ref().ok(), Some(&55));
    /// # Ok::<(), offload::Error>(()) }).unwrap();
    /// ```
    pub fn map<F, M, I>(&self, f: F, items: I) -> Map<I::IntoIter, F::Output>
    where
        F: TaskFn<M>,
        I: IntoIterator<Item = F::Args>,
    {
        Map::new(self.map_unordered(f, items))
    }

    /// Like [`map`](ProcessPool::map), as a [`Stream`](futures_lite::Stream) of
    /// `(index, result)` pairs in the order the items finish.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # offload::init();
    /// use futures_lite::StreamExt;
    ///
    /// fn square(x: u64) -> u64 { x * x }
    ///
    /// # futures_lite::future::block_on(async {
    /// let pool = offload::ProcessPool::new(2)?;
    /// let mut results = pool.map_unordered(square, 0..100);
    /// while let Some((index, result)) = results.next().await {
    ///     assert_eq!(result?, (index * index) as u64);
    /// }
    /// # Ok::<(), offload::Error>(()) }).unwrap();
    /// ```
    pub fn map_unordered<F, M, I>(&self, f: F, items: I) -> MapUnordered<I::IntoIter, F::Output>
    where
        F: TaskFn<M>,
        I: IntoIterator<Item = F::Args>,
    {
        self.task(f).map_unordered(items)
    }

    /// [`map`](ProcessPool::map) for synchronous code: blocks the current thread until every
    /// item has its result. Needs no runtime and does not deadlock.
    ///
    /// # Panics
    ///
    /// When called from a task callback, which runs on the pool's own thread and would wait
    /// for itself.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # offload::init();
    /// fn square(x: u64) -> u64 { x * x }
    ///
    /// let pool = offload::ProcessPool::new(2)?;
    /// let squares: Result<Vec<u64>, _> = pool.map_blocking(square, 1..=3).into_iter().collect();
    /// assert_eq!(squares?, [1, 4, 9]);
    /// # Ok::<(), offload::Error>(())
    /// ```
    pub fn map_blocking<F, M, I>(&self, f: F, items: I) -> Vec<Result<F::Output, TaskError>>
    where
        F: TaskFn<M>,
        I: IntoIterator<Item = F::Args>,
        I::IntoIter: Unpin,
    {
        block_on("ProcessPool::map_blocking", self.map(f, items))
    }
}

impl<F, M> TaskBuilder<F, M> {
    /// Runs `f` on every item with these options, as [`ProcessPool::map`] does: the timeout
    /// applies to each item (a chunk of `n` items may run for `n` times the timeout, and an item
    /// that runs too long fails alone with [`TaskError::TimedOut`]), and callbacks run once per
    /// chunk.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # offload::init();
    /// use std::time::Duration;
    ///
    /// fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    ///
    /// # futures_lite::future::block_on(async {
    /// let pool = offload::ProcessPool::new(2)?;
    /// let results = pool.task(nap).timeout(Duration::from_secs(1)).map([1, 60_000, 2]).await;
    /// assert_eq!(results[0].as_ref().ok(), Some(&1));
    /// assert!(results[1].as_ref().unwrap_err().is_timed_out());
    /// # Ok::<(), offload::Error>(()) }).unwrap();
    /// ```
    pub fn map<I>(&self, items: I) -> Map<I::IntoIter, F::Output>
    where
        F: TaskFn<M>,
        I: IntoIterator<Item = F::Args>,
    {
        Map::new(self.map_unordered(items))
    }

    /// Like [`map`](TaskBuilder::map), as a [`Stream`] of `(index, result)` pairs in the order
    /// the items finish; see [`ProcessPool::map_unordered`].
    pub fn map_unordered<I>(&self, items: I) -> MapUnordered<I::IntoIter, F::Output>
    where
        F: TaskFn<M>,
        I: IntoIterator<Item = F::Args>,
    {
        MapUnordered::new::<F, M>(self.pool.clone(), items.into_iter(), self.options.clone())
    }

    /// [`map`](TaskBuilder::map) for synchronous code; see [`ProcessPool::map_blocking`].
    ///
    /// # Panics
    ///
    /// When called from a task callback, which runs on the pool's own thread.
    pub fn map_blocking<I>(&self, items: I) -> Vec<Result<F::Output, TaskError>>
    where
        F: TaskFn<M>,
        I: IntoIterator<Item = F::Args>,
        I::IntoIter: Unpin,
    {
        block_on("TaskBuilder::map_blocking", self.map(items))
    }
}

/// One chunk sent to a worker.
struct Chunk<R> {
    /// The input positions of its items.
    indices: Vec<usize>,
    /// Its items, kept to retry them one by one if the chunk's worker dies.
    items: EncodedItems,
    task: ProcessTask<Vec<Result<R, TaskError>>>,
}

/// The results of [`ProcessPool::map_unordered`]: a [`Stream`] of `(index, result)` pairs, in
/// the order the items finish.
///
/// Items are encoded and sent as the stream is polled, a bounded number of chunks at a time.
///
/// # Dropping
///
/// Dropping the stream cancels what is left: running chunks' workers are stopped as for
/// [`ProcessTask::cancel`], queued chunks never start, and no more items are taken from the
/// input.
#[must_use = "streams do nothing unless polled; dropping one cancels its work"]
pub struct MapUnordered<I, R> {
    /// Where chunks go; the error every item fails with if there is nowhere to go.
    pool: Result<ProcessPool, TaskError>,
    entry: u64,
    func_name: &'static str,
    decode: Decoder<Vec<Result<R, TaskError>>>,
    /// The options of every chunk; the timeout is per item.
    options: TaskOptions,
    items: I,
    next_index: usize,
    exhausted: bool,
    in_flight: Vec<Chunk<R>>,
    ready: VecDeque<(usize, Result<R, TaskError>)>,
    /// Run time per item in the last chunk that finished.
    per_item: Option<Duration>,
    /// `Run` flags of every chunk.
    flags: u8,
    /// The items done, for an `on_progress` callback.
    progress: Option<Arc<MapProgress>>,
}

/// The progress of a whole `map`, which its `on_progress` callback is shown: the items of
/// the chunks that finished, and those the running chunks report done.
struct MapProgress {
    state: Mutex<MapTally>,
}

#[derive(Default)]
struct MapTally {
    /// Items whose chunk finished.
    finished: u64,
    /// Items done in each running chunk, by task id.
    running: HashMap<u64, u64>,
    /// Items in the map (or taken from its input so far, when its length is not known).
    total: u64,
    /// The last `done` shown: what is shown never goes back (a retried chunk's items count
    /// once more when they are done again).
    shown: u64,
}

impl MapProgress {
    fn lock(&self) -> MutexGuard<'_, MapTally> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that chunk `task` has done `done` of its items; returns the map's progress.
    fn chunk_did(&self, task: u64, done: u64) -> Progress {
        let mut tally = self.lock();
        tally.running.insert(task, done);
        let done = tally.finished + tally.running.values().sum::<u64>();
        tally.shown = tally.shown.max(done.min(tally.total));
        Progress {
            done: tally.shown,
            total: tally.total,
        }
    }

    /// Records that chunk `task` ended; its `items` count as done unless they are retried.
    fn chunk_ended(&self, task: u64, items: Option<u64>) {
        let mut tally = self.lock();
        tally.running.remove(&task);
        tally.finished += items.unwrap_or(0);
    }

    fn set_total(&self, total: u64) {
        let mut tally = self.lock();
        tally.total = tally.total.max(total);
    }
}

impl<I, R> MapUnordered<I, R>
where
    I: Iterator,
    I::Item: Serialize,
    R: DeserializeOwned + Send + 'static,
{
    fn new<F, M>(pool: Result<ProcessPool, TaskError>, items: I, mut options: TaskOptions) -> Self
    where
        F: TaskFn<M, Args = I::Item, Output = R>,
    {
        // An `on_progress` callback is shown the whole map's progress, from every chunk's.
        let progress = options.on_progress.take().map(|callback| {
            let progress = Arc::new(MapProgress {
                state: Mutex::new(MapTally::default()),
            });
            if let (low, Some(high)) = items.size_hint() {
                if low == high {
                    progress.set_total(low as u64);
                }
            }
            let tally = progress.clone();
            options.on_progress = Some(Arc::new(move |info: &TaskInfo| {
                if let Some(chunk) = info.progress() {
                    let map = tally.chunk_did(info.id(), chunk.done);
                    callback(&info.clone().with_progress(map));
                }
            }));
            progress
        });
        MapUnordered {
            flags: if progress.is_some() {
                RUN_ITEM_PROGRESS
            } else {
                0
            },
            progress,
            pool,
            entry: chunk_entry_of::<F, M>(),
            func_name: func_name::<F>(),
            decode: decode_chunk::<R>,
            options,
            items,
            next_index: 0,
            exhausted: false,
            in_flight: Vec::new(),
            ready: VecDeque::new(),
            per_item: None,
        }
    }

    /// How many workers take the chunks.
    fn workers(&self) -> usize {
        self.pool.as_ref().map_or(1, ProcessPool::workers)
    }

    /// How many items the next chunk takes.
    fn chunk_size(&self) -> usize {
        let by_time = match self.per_item {
            None => FIRST_CHUNK,
            Some(per_item) if per_item.is_zero() => MAX_CHUNK,
            Some(per_item) => (TARGET_CHUNK_TIME.as_nanos() / per_item.as_nanos()) as usize,
        };
        // Keep every worker busy until the end when the length is known.
        let balance = match self.items.size_hint() {
            (low, Some(high)) if low == high => (low / (self.workers() * CHUNKS_PER_WORKER)).max(1),
            _ => MAX_CHUNK,
        };
        by_time.min(balance).clamp(1, MAX_CHUNK)
    }

    /// Takes the next chunk of items from the input and sends it; items that cannot be
    /// encoded go straight to the results.
    fn send_next_chunk(&mut self) {
        let size = self.chunk_size();
        let mut items = EncodedItems::default();
        let mut indices = Vec::with_capacity(size);
        while indices.len() < size && !self.exhausted {
            // One guard for the whole chunk, not one per item (which would keep the encoding of
            // small items from being inlined): a panicking `Serialize` fails its item alone,
            // and the chunk goes on with the next; a panicking input iterator panics here, as
            // it would anywhere.
            let encoding = Cell::new(None);
            let filled = panic::catch_unwind(AssertUnwindSafe(|| {
                self.take_items(size, &mut items, &mut indices, &encoding)
            }));
            if let Err(payload) = filled {
                let Some(index) = encoding.get() else {
                    panic::resume_unwind(payload);
                };
                items.drop_partial();
                let message = crate::sys::panic::panic_message(&*payload);
                let error = format!("arguments: its Serialize panicked: {message}");
                self.ready.push_back((index, Err(TaskError::Encode(error))));
            }
        }
        if let Some(progress) = &self.progress {
            progress.set_total(self.next_index as u64);
        }
        if !indices.is_empty() {
            self.send(indices, items);
        }
    }

    /// Takes items from the input and encodes them until the chunk has `size` of them or the
    /// input ends; `encoding` names the item being encoded, to blame for a panic.
    fn take_items(
        &mut self,
        size: usize,
        items: &mut EncodedItems,
        indices: &mut Vec<usize>,
        encoding: &Cell<Option<usize>>,
    ) {
        while indices.len() < size {
            let Some(item) = self.items.next() else {
                self.exhausted = true;
                return;
            };
            let index = self.next_index;
            self.next_index += 1;
            encoding.set(Some(index));
            let pushed = items.push(&item);
            encoding.set(None);
            match pushed {
                Ok(()) => indices.push(index),
                Err(msg) => self
                    .ready
                    .push_back((index, Err(TaskError::Encode(format!("arguments: {msg}"))))),
            }
        }
    }

    fn send(&mut self, indices: Vec<usize>, items: EncodedItems) {
        let mut options = self.options.clone();
        options.timeout = options
            .timeout
            .map(|per_item| per_item.saturating_mul(indices.len() as u32));
        let call = Call {
            entry: self.entry,
            func_name: self.func_name,
            decode: self.decode,
            layout: ArgsLayout::Chunk,
            options,
            flags: self.flags,
            stream: None,
        };
        let task = submit(self.pool.as_ref().map_err(Clone::clone), call, |frame| {
            items.write_payload(frame);
            Ok(())
        });
        self.in_flight.push(Chunk {
            indices,
            items,
            task,
        });
    }

    /// Hands out the results of a finished chunk, or retries its items one by one.
    fn finish_chunk(
        &mut self,
        chunk: Chunk<R>,
        outcome: Result<Vec<Result<R, TaskError>>, TaskError>,
    ) {
        let Chunk {
            indices,
            items,
            task,
        } = chunk;
        let retried = matches!(
            &outcome,
            Err(
                TaskError::WorkerDied { .. }
                    | TaskError::MemoryLimit { .. }
                    | TaskError::Protocol(_)
                    | TaskError::TimedOut { .. },
            ) if indices.len() > 1
        );
        if let Some(progress) = &self.progress {
            let items = (!retried).then_some(indices.len() as u64);
            progress.chunk_ended(task.id(), items);
        }
        match outcome {
            Ok(results) if results.len() == indices.len() => {
                if let Some(duration) = task.duration() {
                    self.per_item = Some(duration / indices.len() as u32);
                }
                self.ready.extend(indices.into_iter().zip(results));
            }
            Ok(results) => {
                let error = TaskError::Protocol(format!(
                    "a chunk of {} items came back with {} results",
                    indices.len(),
                    results.len()
                ));
                self.ready
                    .extend(indices.into_iter().map(|i| (i, Err(error.clone()))));
            }
            // Only the item that kills its worker, or runs too long, should fail for it.
            Err(_) if retried => {
                for (index, item) in indices.into_iter().zip(items.split()) {
                    self.send(vec![index], item);
                }
            }
            Err(error) => {
                self.ready
                    .extend(indices.into_iter().map(|i| (i, Err(error.clone()))));
            }
        }
    }
}

impl<I, R> Stream for MapUnordered<I, R>
where
    I: Iterator + Unpin,
    I::Item: Serialize,
    R: DeserializeOwned + Send + 'static,
{
    type Item = (usize, Result<R, TaskError>);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(item) = this.ready.pop_front() {
                return Poll::Ready(Some(item));
            }
            let max_in_flight = this.workers() * CHUNKS_PER_WORKER;
            while !this.exhausted && this.in_flight.len() < max_in_flight && this.ready.is_empty() {
                this.send_next_chunk();
            }
            if !this.ready.is_empty() {
                continue;
            }
            if this.in_flight.is_empty() {
                return Poll::Ready(None);
            }
            let mut finished = false;
            let mut i = 0;
            while i < this.in_flight.len() {
                match Pin::new(&mut this.in_flight[i].task).poll(cx) {
                    Poll::Pending => i += 1,
                    Poll::Ready(outcome) => {
                        let chunk = this.in_flight.swap_remove(i);
                        this.finish_chunk(chunk, outcome);
                        finished = true;
                    }
                }
            }
            if !finished {
                return Poll::Pending;
            }
        }
    }
}

// Results are only moved around, never pinned.
impl<I: Unpin, R> Unpin for MapUnordered<I, R> {}

impl<I, R> fmt::Debug for MapUnordered<I, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapUnordered")
            .field("func", &self.func_name)
            .field("taken", &self.next_index)
            .field("chunks_in_flight", &self.in_flight.len())
            .field("ready", &self.ready.len())
            .finish_non_exhaustive()
    }
}

/// The results of [`ProcessPool::map`]: a future of one result per item, in input order.
///
/// # Dropping
///
/// As for [`MapUnordered`]: dropping it cancels what is left.
#[must_use = "futures do nothing unless awaited; dropping one cancels its work"]
pub struct Map<I, R> {
    stream: MapUnordered<I, R>,
    results: Vec<Option<Result<R, TaskError>>>,
}

impl<I, R> Map<I, R> {
    pub(crate) fn new(stream: MapUnordered<I, R>) -> Self {
        Map {
            stream,
            results: Vec::new(),
        }
    }
}

impl<I, R> Future for Map<I, R>
where
    I: Iterator + Unpin,
    I::Item: Serialize,
    R: DeserializeOwned + Send + 'static,
{
    type Output = Vec<Result<R, TaskError>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        while let Some((index, result)) =
            futures_lite::ready!(Pin::new(&mut this.stream).poll_next(cx))
        {
            if this.results.len() <= index {
                this.results.resize_with(index + 1, || None);
            }
            this.results[index] = Some(result);
        }
        let results = mem::take(&mut this.results);
        Poll::Ready(
            results
                .into_iter()
                .map(|r| r.expect("every item has exactly one result"))
                .collect(),
        )
    }
}

impl<I: Unpin, R> Unpin for Map<I, R> {}

impl<I, R> fmt::Debug for Map<I, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Map")
            .field("stream", &self.stream)
            .field("results", &self.results.len())
            .finish()
    }
}
