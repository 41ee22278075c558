//! How messages are framed on the pipes.
//!
//! A frame is a little-endian `u32` body length, then the body: one rmp-serde message (the
//! header, [`ToWorker`](super::ToWorker) or [`FromWorker`](super::FromWorker)) followed, for `Run` and `Done`, by the payload (the
//! rmp-serde encoding of the arguments or of the result). Keeping the payload beside the header
//! instead of inside it lets the sender encode user data straight into the frame buffer and the
//! receiver decode it straight from the read buffer: no copy of the data in between.
//!
//! Between the parent and a local worker, a body of at least
//! [`region::MIN_FRAME`](crate::sys::region::MIN_FRAME) bytes goes through shared memory
//! instead (a [`Region`], see [`crate::sys::region`]) when the region is free: the pipe then
//! carries only a marker, the length prefix [`REGION_MARK`] followed by the frame's number in
//! the region and its length (two little-endian `u64`s). The receiver copies the body out
//! into the same buffer a piped body is read into, so what reads frames sees no difference.

use std::io::{self, Read};

use futures_lite::{AsyncRead, AsyncReadExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::sys::region::{self, Region};

/// The largest frame body, in bytes, that either side sends or accepts (1 GiB).
///
/// Arguments or a result whose encoding is larger fail the task with
/// [`TaskError::Encode`](crate::TaskError::Encode); a worker that announces a larger frame is
/// killed and its task fails with [`TaskError::Protocol`](crate::TaskError::Protocol). Buffers
/// grow with the bytes that really arrive, so a lying length prefix cannot make the parent
/// allocate more than the sender actually wrote.
///
/// # Examples
///
/// ```
/// assert_eq!(offload::MAX_FRAME_LEN, 1 << 30);
/// ```
pub const MAX_FRAME_LEN: usize = 1 << 30;

/// Bytes reserved at the front of every frame for the body length.
pub(crate) const LEN_PREFIX: usize = 4;

/// The length prefix of a frame whose body is in shared memory (no body length is this
/// large: it is over [`MAX_FRAME_LEN`]).
const REGION_MARK: u32 = u32::MAX;

/// The marker of a frame in shared memory: [`REGION_MARK`], the frame's number, its length.
pub(crate) type RegionMarker = [u8; LEN_PREFIX + 16];

/// How much of a large frame is copied to or from a region between two yields of the
/// parent's driver thread, which serves every worker of its pool.
const REGION_CHUNK: usize = 4 << 20;

/// The region a frame body of `len` bytes goes through, if it is large enough to gain from
/// one and the region is free (a small frame lets the region give memory back).
fn region_for(region: Option<&mut Region>, len: usize) -> Option<&mut Region> {
    let region = region?;
    if len < region::MIN_FRAME {
        region.trim();
        return None;
    }
    (len <= MAX_FRAME_LEN && region.is_free()).then_some(region)
}

/// The pieces of the body made of `parts`, at most [`REGION_CHUNK`] bytes each, with where
/// each starts in the body.
fn chunks<'a>(parts: &'a [&'a [u8]]) -> impl Iterator<Item = (u64, &'a [u8])> + 'a {
    let mut at = 0;
    parts
        .iter()
        .flat_map(|part| part.chunks(REGION_CHUNK))
        .map(move |chunk| {
            let start = at;
            at += chunk.len() as u64;
            (start, chunk)
        })
}

/// The marker of frame `number`, `len` bytes, in a region.
fn marker(number: u64, len: usize) -> RegionMarker {
    let mut marker = [0; LEN_PREFIX + 16];
    marker[..LEN_PREFIX].copy_from_slice(&REGION_MARK.to_le_bytes());
    marker[LEN_PREFIX..LEN_PREFIX + 8].copy_from_slice(&number.to_le_bytes());
    marker[LEN_PREFIX + 8..].copy_from_slice(&(len as u64).to_le_bytes());
    marker
}

/// Puts the frame body made of `parts` (without its length prefix) in `region` if it is
/// large enough to gain from it and the region is free; returns the marker to write to the
/// pipe in its place. `None` (also when the region could not take it, out of memory): write
/// the frame itself.
pub(crate) fn into_region(region: Option<&mut Region>, parts: &[&[u8]]) -> Option<RegionMarker> {
    let len = parts.iter().map(|part| part.len()).sum();
    let region = region_for(region, len)?;
    for (at, chunk) in chunks(parts) {
        region.write(at, chunk).ok()?;
    }
    Some(marker(region.commit(), len))
}

/// [`into_region`] for the parent's driver, which yields between chunks.
pub(crate) async fn into_region_async(
    region: Option<&mut Region>,
    parts: &[&[u8]],
) -> Option<RegionMarker> {
    let len = parts.iter().map(|part| part.len()).sum();
    let region = region_for(region, len)?;
    for (at, chunk) in chunks(parts) {
        region.write(at, chunk).ok()?;
        futures_lite::future::yield_now().await;
    }
    // Dropped before here, nothing was committed and the region stays as it was. The
    // marker is written next; a worker whose marker write was dropped is stopped.
    Some(marker(region.commit(), len))
}

/// Checks a region marker (`rest`: the number and the length); returns the region it is in,
/// the number and the length.
fn announced(region: Option<&mut Region>, rest: [u8; 16]) -> io::Result<(&mut Region, u64, usize)> {
    let (number, len) = rest.split_at(8);
    let number = u64::from_le_bytes(number.try_into().expect("8 bytes"));
    let len = u64::from_le_bytes(len.try_into().expect("8 bytes"));
    let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidData, msg);
    let len = usize::try_from(len)
        .ok()
        .filter(|&len| len <= MAX_FRAME_LEN)
        .ok_or_else(|| {
            invalid(format!(
                "frame of {len} bytes announced, over the limit of {MAX_FRAME_LEN} bytes"
            ))
        })?;
    let region =
        region.ok_or_else(|| invalid("a frame in shared memory, which was not set up".into()))?;
    region.check(number, len)?;
    Ok((region, number, len))
}

/// A failure to copy a frame out of its region.
fn unreadable(err: io::Error) -> io::Error {
    match err.kind() {
        io::ErrorKind::InvalidData => err,
        _ => io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame in shared memory could not be read: {err}"),
        ),
    }
}

/// Copies the body a region marker announced into `buf`.
fn from_region(region: Option<&mut Region>, rest: [u8; 16], buf: &mut Vec<u8>) -> io::Result<()> {
    let (region, number, len) = announced(region, rest)?;
    shrink_for(buf, len);
    buf.clear();
    region.read(0, len, buf).map_err(unreadable)?;
    region.taken_up_to(number).map_err(unreadable)
}

/// [`from_region`] for the parent's driver, which yields between chunks.
async fn from_region_async(
    region: Option<&mut Region>,
    rest: [u8; 16],
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    let (region, number, len) = announced(region, rest)?;
    shrink_for(buf, len);
    buf.clear();
    // At once: reserved chunk by chunk, the buffer would be grown (and moved) once per chunk.
    buf.reserve_exact(len);
    while buf.len() < len {
        let at = buf.len();
        region
            .read(at as u64, (len - at).min(REGION_CHUNK), buf)
            .map_err(unreadable)?;
        futures_lite::future::yield_now().await;
    }
    region.taken_up_to(number).map_err(unreadable)
}

/// Bytes by which a receive buffer grows at most per read, so a length prefix alone never
/// causes a large allocation.
const GROW_STEP: usize = 1 << 20;

/// The capacity a frame buffer keeps: one that a large payload grew beyond it shrinks back
/// to it when the next, small, frame is read or written, so a worker or a slot that once
/// carried 256 MiB does not hold that memory for the rest of its life (and a stream of large
/// payloads reuses its buffer instead of allocating one per frame). A region keeps as much.
pub(crate) const KEPT_CAPACITY: usize = region::KEPT;

/// Gives back the memory of a buffer that a large frame grew, before a frame of `next` bytes.
pub(crate) fn shrink_for(buf: &mut Vec<u8>, next: usize) {
    if buf.capacity() > KEPT_CAPACITY && next <= KEPT_CAPACITY {
        buf.clear();
        buf.shrink_to(KEPT_CAPACITY);
    }
}

/// Clears `buf` and starts a frame in it with `header`.
pub(crate) fn begin(buf: &mut Vec<u8>, header: &impl Serialize) -> Result<(), String> {
    buf.clear();
    buf.extend_from_slice(&[0; LEN_PREFIX]);
    push(buf, header)
}

/// Appends one rmp-serde value to the frame in `buf`; a failing (or panicking) `Serialize`
/// leaves `buf` as it was.
pub(crate) fn push(buf: &mut Vec<u8>, value: &impl Serialize) -> Result<(), String> {
    super::codec::encode(buf, value)
}

/// Writes the body length in front of the frame in `buf`; fails if it is over the cap.
pub(crate) fn finish(buf: &mut [u8]) -> Result<(), String> {
    let body = buf.len() - LEN_PREFIX;
    if body > MAX_FRAME_LEN {
        return Err(format!(
            "message is {body} bytes, over the limit of {MAX_FRAME_LEN} bytes"
        ));
    }
    buf[..LEN_PREFIX].copy_from_slice(&(body as u32).to_le_bytes());
    Ok(())
}

/// The length prefix and `header` of a frame whose `payload_len` bytes of payload are written
/// right after them (from a buffer of their own, without a copy into the frame).
pub(crate) fn head(header: &impl Serialize, payload_len: usize) -> Result<Vec<u8>, String> {
    let mut head = Vec::with_capacity(32);
    begin(&mut head, header)?;
    let body = head.len() - LEN_PREFIX + payload_len;
    if body > MAX_FRAME_LEN {
        return Err(format!(
            "message is {body} bytes, over the limit of {MAX_FRAME_LEN} bytes"
        ));
    }
    head[..LEN_PREFIX].copy_from_slice(&(body as u32).to_le_bytes());
    Ok(head)
}

/// Builds a complete frame holding only `header`.
pub(crate) fn frame(header: &impl Serialize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(32);
    // Headers are small plain data; encoding them into a Vec cannot fail.
    begin(&mut buf, header).expect("headers always encode");
    finish(&mut buf).expect("headers are far below the frame cap");
    buf
}

/// Splits a frame body into its decoded header and the payload bytes after it.
pub(crate) fn split<H: DeserializeOwned>(body: &[u8]) -> Result<(H, &[u8]), String> {
    let mut cursor = io::Cursor::new(body);
    let header = rmp_serde::from_read(&mut cursor).map_err(|e| e.to_string())?;
    // The cursor only advanced over the header, so the position is within `body`.
    let used = cursor.position() as usize;
    Ok((header, &body[used..]))
}

/// Checks a length prefix against the cap.
fn body_len(prefix: [u8; LEN_PREFIX]) -> io::Result<usize> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > MAX_FRAME_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes announced, over the limit of {MAX_FRAME_LEN} bytes"),
        ));
    }
    Ok(len)
}

/// Reads one frame body into `buf` from blocking `input` (the worker side).
///
/// Returns `Ok(false)` on a clean end of input before a frame starts.
/// A body in `region` (a marker) is copied from it.
pub(crate) fn read_frame(
    input: &mut impl Read,
    buf: &mut Vec<u8>,
    region: Option<&mut Region>,
) -> io::Result<bool> {
    let mut prefix = [0; LEN_PREFIX];
    match input.read(&mut prefix[..1])? {
        0 => return Ok(false),
        _ => input.read_exact(&mut prefix[1..])?,
    }
    if u32::from_le_bytes(prefix) == REGION_MARK {
        let mut rest = [0; 16];
        input.read_exact(&mut rest)?;
        return from_region(region, rest, buf).map(|()| true);
    }
    let len = body_len(prefix)?;
    shrink_for(buf, len);
    buf.clear();
    while buf.len() < len {
        let start = buf.len();
        buf.resize(start + (len - start).min(GROW_STEP), 0);
        input.read_exact(&mut buf[start..])?;
    }
    Ok(true)
}

/// Reads one frame body into `buf` from async `input` (the parent side).
///
/// Returns `Ok(false)` on a clean end of input before a frame starts.
/// A body in `region` (a marker) is copied from it.
pub(crate) async fn read_frame_async(
    input: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
    region: Option<&mut Region>,
) -> io::Result<bool> {
    let mut prefix = [0; LEN_PREFIX];
    match input.read(&mut prefix[..1]).await? {
        0 => return Ok(false),
        _ => input.read_exact(&mut prefix[1..]).await?,
    }
    if u32::from_le_bytes(prefix) == REGION_MARK {
        let mut rest = [0; 16];
        input.read_exact(&mut rest).await?;
        return from_region_async(region, rest, buf).await.map(|()| true);
    }
    let len = body_len(prefix)?;
    shrink_for(buf, len);
    buf.clear();
    while buf.len() < len {
        let start = buf.len();
        buf.resize(start + (len - start).min(GROW_STEP), 0);
        input.read_exact(&mut buf[start..]).await?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{CodecFailure, FromWorker, Run, ToWorker};
    use proptest::prelude::*;

    #[test]
    fn header_and_payload_round_trip() {
        let mut buf = Vec::new();
        let run = ToWorker::Run(Run {
            id: 7,
            entry: 99,
            flags: 3,
            window: 256,
        });
        begin(&mut buf, &run).unwrap();
        push(&mut buf, &(1u8, "two".to_string(), vec![3u64; 100])).unwrap();
        finish(&mut buf).unwrap();

        let mut input = &buf[..];
        let mut body = Vec::new();
        assert!(read_frame(&mut input, &mut body, None).unwrap());
        assert!(input.is_empty(), "the whole frame was consumed");
        let (header, payload) = split::<ToWorker>(&body).unwrap();
        assert!(matches!(
            header,
            ToWorker::Run(Run {
                id: 7,
                entry: 99,
                flags: 3,
                window: 256
            })
        ));
        let args: (u8, String, Vec<u64>) = rmp_serde::from_slice(payload).unwrap();
        assert_eq!(args, (1, "two".to_string(), vec![3; 100]));
    }

    #[test]
    fn clean_eof_is_not_an_error_but_a_truncated_frame_is() {
        let mut body = Vec::new();
        assert!(!read_frame(&mut &[][..], &mut body, None).unwrap());

        let full = frame(&ToWorker::Shutdown);
        let err = read_frame(&mut &full[..full.len() - 1], &mut body, None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn oversized_length_prefix_is_refused_without_allocating() {
        let prefix = ((MAX_FRAME_LEN + 1) as u32).to_le_bytes();
        let mut body = Vec::new();
        let err = read_frame(&mut &prefix[..], &mut body, None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(body.capacity(), 0);
    }

    #[test]
    fn lying_length_prefix_allocates_only_what_arrives() {
        let mut data = (MAX_FRAME_LEN as u32).to_le_bytes().to_vec();
        data.extend_from_slice(b"short");
        let mut body = Vec::new();
        assert!(read_frame(&mut &data[..], &mut body, None).is_err());
        assert!(body.capacity() <= 2 * GROW_STEP);
    }

    /// Valid frames of every message, to mutate.
    fn samples() -> Vec<Vec<u8>> {
        let mut run = Vec::new();
        let header = ToWorker::Run(Run {
            id: 3,
            entry: 77,
            flags: 1,
            window: 0,
        });
        begin(&mut run, &header).unwrap();
        push(&mut run, &("args", 1u8)).unwrap();
        finish(&mut run).unwrap();
        vec![
            run,
            frame(&ToWorker::Hello {
                build: 1,
                parent: 2,
                memory_limit: Some(3),
                remote: true,
                target: "linux/x86_64".into(),
                log_level: 3,
                regions: Some((5, 6)),
            }),
            frame(&ToWorker::Credit { id: 4, items: 128 }),
            frame(&ToWorker::Stop { grace_ms: 5 }),
            frame(&ToWorker::Shutdown),
            frame(&FromWorker::Hello {
                pid: 1,
                build: 2,
                host: "node1".into(),
                regions: true,
            }),
            frame(&FromWorker::Refused {
                reason: "no".into(),
            }),
            frame(&FromWorker::Done { id: 9 }),
            frame(&FromWorker::Panicked {
                id: 9,
                message: "m".into(),
                location: None,
            }),
            frame(&FromWorker::Failed {
                id: 9,
                error: CodecFailure::Decode("d".into()),
            }),
            frame(&FromWorker::Progress {
                id: 9,
                done: 5,
                total: 10,
            }),
            frame(&FromWorker::Items { id: 9, count: 2 }),
            frame(&FromWorker::Output {
                id: 9,
                fd: 2,
                cut: 7,
            }),
            frame(&FromWorker::Log {
                id: 9,
                record: crate::protocol::event::LogRecord {
                    level: 2,
                    target: "t".into(),
                    message: "m".into(),
                    module_path: Some("p".into()),
                    file: None,
                    line: Some(3),
                },
            }),
        ]
    }

    /// Reads every frame in `input` and decodes both kinds of header from each: errors, never
    /// a panic, and never more memory than the input justifies.
    fn read_all(input: &[u8]) {
        let mut reader = input;
        let mut body = Vec::new();
        while let Ok(true) = read_frame(&mut reader, &mut body, None) {
            assert!(body.capacity() <= input.len() + 2 * GROW_STEP);
            let _ = split::<ToWorker>(&body);
            let _ = split::<FromWorker>(&body);
        }
        let _ = split::<ToWorker>(input);
        let _ = split::<FromWorker>(input);
    }

    proptest! {
        #[test]
        fn random_bytes_are_errors_not_panics(input in proptest::collection::vec(any::<u8>(), 0..96)) {
            read_all(&input);
        }

        #[test]
        fn mutated_frames_are_errors_not_panics(
            which in any::<prop::sample::Index>(),
            cut in any::<prop::sample::Index>(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        ) {
            let mut samples = samples();
            let mut input = samples.swap_remove(which.index(samples.len()));
            input.truncate(cut.index(input.len() + 1));
            for (at, byte) in flips {
                if !input.is_empty() {
                    let at = at.index(input.len());
                    input[at] = byte;
                }
            }
            read_all(&input);
        }
    }

    #[test]
    fn a_small_frame_after_a_large_one_gives_the_memory_back() {
        let mut large = Vec::new();
        begin(&mut large, &FromWorker::Done { id: 1 }).unwrap();
        push(
            &mut large,
            &serde_bytes::ByteBuf::from(vec![7u8; 4 * KEPT_CAPACITY]),
        )
        .unwrap();
        finish(&mut large).unwrap();
        let mut input = large;
        input.extend_from_slice(&frame(&FromWorker::Done { id: 2 }));
        let mut reader = &input[..];
        let mut body = Vec::new();
        assert!(read_frame(&mut reader, &mut body, None).unwrap());
        assert!(body.capacity() >= 4 * KEPT_CAPACITY);
        assert!(read_frame(&mut reader, &mut body, None).unwrap());
        assert!(body.capacity() <= KEPT_CAPACITY, "{}", body.capacity());
        assert!(matches!(
            split::<FromWorker>(&body).unwrap().0,
            FromWorker::Done { id: 2 }
        ));
    }

    #[test]
    fn garbage_header_is_an_error() {
        assert!(split::<FromWorker>(&[0xc1, 0xff, 0x00]).is_err());
        assert!(split::<FromWorker>(&[]).is_err());
    }
}
