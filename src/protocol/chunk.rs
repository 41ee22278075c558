//! The encoding of a `map` chunk: many items in one `Run` payload, many outcomes in one `Done`.
//!
//! A chunk's payload is a `u32` item count, then per item a `u32` length and the item's own
//! rmp-serde encoding. Its result is a `u32` count, then per item a one-byte outcome tag, a
//! `u32` length and the bytes: the encoded value, a panic report or an error message. Items
//! are encoded one by one so that one bad item never costs the others their results.

use std::ops::Range;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::codec;
use crate::error::TaskError;
use crate::sys::panic::catch;

/// Outcome tags in a chunk's reply.
pub(crate) const ITEM_OK: u8 = 0;
pub(crate) const ITEM_PANICKED: u8 = 1;
pub(crate) const ITEM_DECODE: u8 = 2;
pub(crate) const ITEM_ENCODE: u8 = 3;

/// The most outcomes room is made for before they are read: the count is the worker's word.
const PREALLOCATED_OUTCOMES: usize = 8192;

/// Starts a `tag, u32 length, bytes` segment; returns where it starts.
pub(crate) fn begin_segment(out: &mut Vec<u8>, tag: u8) -> usize {
    let start = out.len();
    out.push(tag);
    out.extend_from_slice(&[0; 4]);
    start
}

/// Writes the tag and length of the segment that starts at `start`.
pub(crate) fn end_segment(out: &mut [u8], start: usize, tag: u8) {
    let len = (out.len() - start - 5) as u32;
    out[start] = tag;
    out[start + 1..start + 5].copy_from_slice(&len.to_le_bytes());
}

/// The segments of a chunk payload: a `u32` count, then per item an optional one-byte tag, a
/// `u32` length and the bytes. Yields `(tag, bytes)`; untagged items read as [`ITEM_OK`].
pub(crate) struct Segments<'a> {
    rest: &'a [u8],
    pub(crate) count: usize,
    tagged: bool,
}

impl<'a> Segments<'a> {
    pub(crate) fn new(payload: &'a [u8], tagged: bool) -> Result<Self, String> {
        let (count, rest) = split_u32(payload).ok_or("chunk without an item count")?;
        Ok(Segments {
            rest,
            count: count as usize,
            tagged,
        })
    }

    /// The `count` untagged segments of `rest`, which has no count in front.
    pub(crate) fn from_count(count: u32, rest: &'a [u8]) -> Self {
        Segments {
            rest,
            count: count as usize,
            tagged: false,
        }
    }

    /// Whether nothing follows the segments read so far.
    pub(crate) fn is_at_end(&self) -> bool {
        self.rest.is_empty()
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
///
/// The items are decoded under one `catch_unwind` (one per item would keep the decoding of
/// small values from being inlined); only if an item's `Deserialize` panics is the chunk
/// decoded again with one `catch_unwind` per item, so that the panic fails that item alone.
pub(crate) fn decode_chunk<R: DeserializeOwned>(
    payload: &[u8],
) -> Result<Vec<Result<R, TaskError>>, String> {
    match catch(|| {
        decode_outcomes(payload, |bytes| {
            rmp_serde::from_slice(bytes).map_err(|e| e.to_string())
        })
    }) {
        Ok(outcomes) => outcomes,
        Err(_) => decode_outcomes(payload, codec::decode),
    }
}

/// Decodes every outcome of a chunk's reply, values with `decode`.
fn decode_outcomes<R>(
    payload: &[u8],
    decode: impl Fn(&[u8]) -> Result<R, String>,
) -> Result<Vec<Result<R, TaskError>>, String> {
    let segments = Segments::new(payload, true)?;
    let mut outcomes = Vec::with_capacity(segments.count.min(PREALLOCATED_OUTCOMES));
    for segment in segments {
        let (tag, bytes) = segment?;
        let text = || String::from_utf8_lossy(bytes).into_owned();
        outcomes.push(match tag {
            ITEM_OK => decode(bytes).map_err(|e| TaskError::Decode(format!("result: {e}"))),
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
pub(crate) struct EncodedItems {
    bytes: Vec<u8>,
    /// Where each item's segment is in `bytes`.
    segments: Vec<Range<usize>>,
}

impl EncodedItems {
    /// Appends `item`; on failure nothing is appended.
    ///
    /// Not guarded against a panicking `Serialize` (a guard per item would keep the encoding of
    /// small values from being inlined): after such a panic, call
    /// [`drop_partial`](EncodedItems::drop_partial).
    pub(crate) fn push(&mut self, item: &impl Serialize) -> Result<(), String> {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(&[0; 4]);
        if let Err(e) = rmp_serde::encode::write(&mut self.bytes, item) {
            self.bytes.truncate(start);
            return Err(e.to_string());
        }
        let len = (self.bytes.len() - start - 4) as u32;
        self.bytes[start..start + 4].copy_from_slice(&len.to_le_bytes());
        self.segments.push(start..self.bytes.len());
        Ok(())
    }

    /// Drops what a `push` that panicked left behind.
    pub(crate) fn drop_partial(&mut self) {
        let end = self.segments.last().map_or(0, |range| range.end);
        self.bytes.truncate(end);
    }

    /// The payload of a chunk holding these items.
    pub(crate) fn write_payload(&self, frame: &mut Vec<u8>) {
        frame.extend_from_slice(&(self.segments.len() as u32).to_le_bytes());
        frame.extend_from_slice(&self.bytes);
    }

    /// Each item on its own.
    pub(crate) fn split(self) -> impl Iterator<Item = EncodedItems> {
        let bytes = self.bytes;
        self.segments.into_iter().map(move |range| EncodedItems {
            // One item: one segment, not a range of items.
            #[allow(clippy::single_range_in_vec_init)]
            segments: vec![0..range.len()],
            bytes: bytes[range].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    /// A valid chunk payload and a valid chunk reply, to mutate.
    fn samples() -> [Vec<u8>; 2] {
        let mut items = EncodedItems::default();
        for i in 0..5u64 {
            items.push(&(i, "item")).unwrap();
        }
        let mut payload = Vec::new();
        items.write_payload(&mut payload);
        let mut reply = 3u32.to_le_bytes().to_vec();
        for tag in [ITEM_OK, ITEM_PANICKED, ITEM_DECODE] {
            let start = begin_segment(&mut reply, tag);
            codec::encode(&mut reply, &("m", Some("l"))).unwrap();
            end_segment(&mut reply, start, tag);
        }
        [payload, reply]
    }

    proptest! {
        /// Truncated and mutated chunk payloads and replies: errors, never a panic.
        #[test]
        fn mutated_chunks_are_errors_not_panics(
            reply in any::<bool>(),
            cut in any::<prop::sample::Index>(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        ) {
            let [payload, replied] = samples();
            let mut input = if reply { replied } else { payload };
            input.truncate(cut.index(input.len() + 1));
            for (at, byte) in flips {
                if !input.is_empty() {
                    let at = at.index(input.len());
                    input[at] = byte;
                }
            }
            if let Ok(segments) = Segments::new(&input, reply) {
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
