//! Many items through one function: [`Map`] and [`MapUnordered`], sent to workers in chunks.
//!
//! Items travel in chunks so that tiny items are not dominated by the cost of one message
//! each. A chunk is one task whose payload is a list of separately encoded items; the worker
//! runs each item under its own `catch_unwind` and answers with one separately encoded outcome
//! per item, so one bad item (a panic, an undecodable value) never costs the others their
//! results. If a chunk's worker dies, its items are retried one per task, so that only the
//! item that kills its worker fails with `WorkerDied`.
//!
//! Chunk sizes adapt: small at first, then sized to take about [`TARGET_CHUNK_TIME`] in a
//! worker, and never so large that the last chunks leave workers idle.

use std::collections::VecDeque;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use std::{fmt, mem};

use futures_lite::Stream;
use serde::Serialize;

use crate::entry::{conjure, decode_args, encode_output, entry_for, func_name, TaskFn};
use crate::error::TaskError;
use crate::pool::{submit, Call, ProcessPool};
use crate::state::TaskOptions;
use crate::task::ProcessTask;
use crate::wire::CodecFailure;

/// How long a chunk should take in a worker, once per-item times are known.
const TARGET_CHUNK_TIME: Duration = Duration::from_millis(5);
/// The most items in one chunk.
const MAX_CHUNK: usize = 8192;
/// The chunk size before any chunk has been timed: one item, in case items are slow.
const FIRST_CHUNK: usize = 1;
/// Chunks queued or running per worker: enough to keep workers busy, few enough to bound the
/// memory of a long input.
const CHUNKS_PER_WORKER: usize = 2;

/// Outcome tags in a chunk's reply.
const ITEM_OK: u8 = 0;
const ITEM_PANICKED: u8 = 1;
const ITEM_DECODE: u8 = 2;
const ITEM_ENCODE: u8 = 3;

/// Runs `F` on every item of a chunk, in the worker.
fn chunk_trampoline<F: TaskFn<M>, M>(
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), CodecFailure> {
    let items = Segments::new(payload, false).map_err(CodecFailure::Decode)?;
    out.extend_from_slice(&(items.count as u32).to_le_bytes());
    let f = conjure::<F, M>();
    for item in items {
        let (_, item) = item.map_err(CodecFailure::Decode)?;
        let segment = begin_segment(out, ITEM_OK);
        let outcome = match decode_args::<F::Args>(item) {
            Ok(args) => match crate::worker::catch(|| f.call(args)) {
                Ok(output) => encode_output(out, &output).map(|()| ITEM_OK),
                Err(panic) => {
                    out.truncate(segment + 5);
                    encode_output(out, &(panic.message, panic.location)).map(|()| ITEM_PANICKED)
                }
            },
            Err(failure) => Err(failure),
        };
        match outcome {
            Ok(tag) => end_segment(out, segment, tag),
            Err(CodecFailure::Decode(msg)) => {
                out.truncate(segment + 5);
                out.extend_from_slice(msg.as_bytes());
                end_segment(out, segment, ITEM_DECODE);
            }
            Err(CodecFailure::Encode(msg)) => {
                out.truncate(segment + 5);
                out.extend_from_slice(format!("result: {msg}").as_bytes());
                end_segment(out, segment, ITEM_ENCODE);
            }
        }
    }
    Ok(())
}

/// Starts a `tag, u32 length, bytes` segment; returns where it starts.
fn begin_segment(out: &mut Vec<u8>, tag: u8) -> usize {
    let start = out.len();
    out.push(tag);
    out.extend_from_slice(&[0; 4]);
    start
}

/// Writes the tag and length of the segment that starts at `start`.
fn end_segment(out: &mut [u8], start: usize, tag: u8) {
    let len = (out.len() - start - 5) as u32;
    out[start] = tag;
    out[start + 1..start + 5].copy_from_slice(&len.to_le_bytes());
}

/// The segments of a chunk payload: a `u32` count, then per item an optional one-byte tag, a
/// `u32` length and the bytes. Yields `(tag, bytes)`; untagged items read as [`ITEM_OK`].
struct Segments<'a> {
    rest: &'a [u8],
    count: usize,
    tagged: bool,
}

impl<'a> Segments<'a> {
    fn new(payload: &'a [u8], tagged: bool) -> Result<Self, String> {
        let (count, rest) = split_u32(payload).ok_or("chunk without an item count")?;
        Ok(Segments {
            rest,
            count: count as usize,
            tagged,
        })
    }

    fn split(&mut self) -> Option<(u8, &'a [u8])> {
        let (tag, rest) = match self.tagged {
            true => self.rest.split_first()?,
            false => (&ITEM_OK, self.rest),
        };
        let (len, rest) = split_u32(rest)?;
        let (bytes, rest) = rest.split_at_checked(len as usize)?;
        self.rest = rest;
        Some((*tag, bytes))
    }
}

impl<'a> Iterator for Segments<'a> {
    type Item = Result<(u8, &'a [u8]), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.count == 0 {
            return None;
        }
        self.count -= 1;
        match self.split() {
            Some(segment) => Some(Ok(segment)),
            None => {
                self.count = 0;
                Some(Err("chunk cut short".to_string()))
            }
        }
    }
}

fn split_u32(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let (head, rest) = bytes.split_first_chunk::<4>()?;
    Some((u32::from_le_bytes(*head), rest))
}

/// Decodes a chunk's reply: one outcome per item.
fn decode_chunk<R: serde::de::DeserializeOwned>(
    payload: &[u8],
) -> Result<Vec<Result<R, TaskError>>, String> {
    let segments = Segments::new(payload, true)?;
    let mut outcomes = Vec::with_capacity(segments.count.min(MAX_CHUNK));
    for segment in segments {
        let (tag, bytes) = segment?;
        let text = || String::from_utf8_lossy(bytes).into_owned();
        outcomes.push(match tag {
            ITEM_OK => {
                rmp_serde::from_slice(bytes).map_err(|e| TaskError::Decode(format!("result: {e}")))
            }
            ITEM_PANICKED => {
                let (message, location) = rmp_serde::from_slice(bytes)
                    .map_err(|e| format!("undecodable panic report: {e}"))?;
                Err(TaskError::Panicked { message, location })
            }
            ITEM_DECODE => Err(TaskError::Decode(text())),
            ITEM_ENCODE => Err(TaskError::Encode(text())),
            other => return Err(format!("unknown item outcome {other}")),
        });
    }
    Ok(outcomes)
}

/// Items encoded for a chunk: `u32 length, bytes` each, without the count.
#[derive(Default)]
struct EncodedItems {
    bytes: Vec<u8>,
    /// Where each item's segment is in `bytes`.
    segments: Vec<Range<usize>>,
}

impl EncodedItems {
    /// Appends `item`; on failure nothing is appended.
    fn push(&mut self, item: &impl Serialize) -> Result<(), String> {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(&[0; 4]);
        if let Err(msg) = crate::wire::push(&mut self.bytes, item) {
            self.bytes.truncate(start);
            return Err(msg);
        }
        let len = (self.bytes.len() - start - 4) as u32;
        self.bytes[start..start + 4].copy_from_slice(&len.to_le_bytes());
        self.segments.push(start..self.bytes.len());
        Ok(())
    }

    /// The payload of a chunk holding these items.
    fn write_payload(&self, frame: &mut Vec<u8>) {
        frame.extend_from_slice(&(self.segments.len() as u32).to_le_bytes());
        frame.extend_from_slice(&self.bytes);
    }

    /// Each item on its own.
    fn split(self) -> impl Iterator<Item = EncodedItems> {
        let bytes = self.bytes;
        self.segments.into_iter().map(move |range| EncodedItems {
            // One item: one segment, not a range of items.
            #[allow(clippy::single_range_in_vec_init)]
            segments: vec![0..range.len()],
            bytes: bytes[range].to_vec(),
        })
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
    pool: ProcessPool,
    entry: u64,
    func_name: &'static str,
    decode: crate::state::Decoder<Vec<Result<R, TaskError>>>,
    items: I,
    next_index: usize,
    exhausted: bool,
    in_flight: Vec<Chunk<R>>,
    ready: VecDeque<(usize, Result<R, TaskError>)>,
    /// Run time per item in the last chunk that finished.
    per_item: Option<Duration>,
}

impl<I, R> MapUnordered<I, R>
where
    I: Iterator,
    I::Item: Serialize,
    R: serde::de::DeserializeOwned + Send + 'static,
{
    pub(crate) fn new<F, M>(pool: &ProcessPool, items: I) -> Self
    where
        F: TaskFn<M, Args = I::Item, Output = R>,
    {
        MapUnordered {
            pool: pool.clone(),
            entry: entry_for(chunk_trampoline::<F, M>),
            func_name: func_name::<F>(),
            decode: decode_chunk::<R>,
            items,
            next_index: 0,
            exhausted: false,
            in_flight: Vec::new(),
            ready: VecDeque::new(),
            per_item: None,
        }
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
            (low, Some(high)) if low == high => {
                (low / (self.pool.workers() * CHUNKS_PER_WORKER)).max(1)
            }
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
        while indices.len() < size {
            let Some(item) = self.items.next() else {
                self.exhausted = true;
                break;
            };
            let index = self.next_index;
            self.next_index += 1;
            match items.push(&item) {
                Ok(()) => indices.push(index),
                Err(msg) => self
                    .ready
                    .push_back((index, Err(TaskError::Encode(format!("arguments: {msg}"))))),
            }
        }
        if !indices.is_empty() {
            self.send(indices, items);
        }
    }

    fn send(&mut self, indices: Vec<usize>, items: EncodedItems) {
        let call = Call {
            entry: self.entry,
            func_name: self.func_name,
            decode: self.decode,
            options: TaskOptions::default(),
        };
        let task = submit(Ok(&self.pool), call, |frame| {
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
            // Only the item that kills its worker should fail with it.
            Err(TaskError::WorkerDied { .. } | TaskError::Protocol(_)) if indices.len() > 1 => {
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
    R: serde::de::DeserializeOwned + Send + 'static,
{
    type Item = (usize, Result<R, TaskError>);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(item) = this.ready.pop_front() {
                return Poll::Ready(Some(item));
            }
            let max_in_flight = this.pool.workers() * CHUNKS_PER_WORKER;
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
    R: serde::de::DeserializeOwned + Send + 'static,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_split_and_frame_round_trip() {
        let mut items = EncodedItems::default();
        items.push(&1u32).unwrap();
        items.push(&"two").unwrap();
        let mut payload = Vec::new();
        items.write_payload(&mut payload);
        let parsed: Vec<_> = Segments::new(&payload, false)
            .unwrap()
            .map(|s| s.unwrap().1.to_vec())
            .collect();
        assert_eq!(parsed.len(), 2);
        assert_eq!(rmp_serde::from_slice::<u32>(&parsed[0]).unwrap(), 1);
        let single: Vec<_> = items.split().collect();
        assert_eq!(single.len(), 2);
        let mut one = Vec::new();
        single[1].write_payload(&mut one);
        let (_, bytes) = Segments::new(&one, false).unwrap().next().unwrap().unwrap();
        assert_eq!(rmp_serde::from_slice::<String>(bytes).unwrap(), "two");
    }

    /// Random and mutated chunk payloads and replies: errors, never a panic.
    #[test]
    fn fuzz_chunk_payloads_and_replies() {
        let mut items = EncodedItems::default();
        for i in 0..5u64 {
            items.push(&(i, "item")).unwrap();
        }
        let mut valid = Vec::new();
        items.write_payload(&mut valid);
        let mut reply = 3u32.to_le_bytes().to_vec();
        for tag in [ITEM_OK, ITEM_PANICKED, ITEM_DECODE] {
            let start = begin_segment(&mut reply, tag);
            crate::wire::push(&mut reply, &("m", Some("l"))).unwrap();
            end_segment(&mut reply, start, tag);
        }
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let next = |state: &mut u64| crate::wire::tests::xorshift(state);
        for round in 0..10_000 {
            let mut input = if round % 2 == 0 {
                valid.clone()
            } else {
                reply.clone()
            };
            input.truncate(next(&mut state) as usize % (input.len() + 1));
            for _ in 0..next(&mut state) % 4 {
                if !input.is_empty() {
                    let at = next(&mut state) as usize % input.len();
                    input[at] = next(&mut state) as u8;
                }
            }
            if let Ok(segments) = Segments::new(&input, round % 2 == 1) {
                segments.for_each(drop);
            }
            let _ = decode_chunk::<(u64, String)>(&input);
        }
    }

    #[test]
    fn truncated_or_lying_chunks_are_errors_not_panics() {
        assert!(Segments::new(&[1, 0], false).is_err());
        let lying = [2, 0, 0, 0, 255, 255, 255, 255, 1];
        let all: Vec<_> = Segments::new(&lying, false).unwrap().collect();
        assert_eq!(all.len(), 1);
        assert!(all[0].is_err());
        assert!(decode_chunk::<u32>(&[1, 0, 0, 0, 9, 0, 0, 0, 0]).is_err());
    }
}
