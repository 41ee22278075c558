//! The messages between the parent and a worker, and how they are framed.
//!
//! A frame is a little-endian `u32` body length, then the body: one rmp-serde message (the
//! header, [`ToWorker`] or [`FromWorker`]) followed, for `Run` and `Done`, by the payload (the
//! rmp-serde encoding of the arguments or of the result). Keeping the payload beside the header
//! instead of inside it lets the sender encode user data straight into the frame buffer and the
//! receiver decode it straight from the read buffer: no copy of the data in between.

use std::io::{self, Read};

use futures_lite::{AsyncRead, AsyncReadExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

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
const LEN_PREFIX: usize = 4;

/// Bytes by which a receive buffer grows at most per read, so a length prefix alone never
/// causes a large allocation.
const GROW_STEP: usize = 1 << 20;

/// Parent → worker headers.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToWorker {
    /// The first frame: the parent's build identity and pid, and the worker's memory cap.
    Hello {
        build: u64,
        parent: u32,
        memory_limit: Option<u64>,
    },
    /// Run the function at `entry` on the arguments that follow the header.
    Run { id: u64, entry: u64 },
    /// Exit after the current frame.
    Shutdown,
}

/// Worker → parent headers.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromWorker {
    /// The answer to `Hello`: the worker runs the same build and is ready.
    Hello { pid: u32, build: u64 },
    /// The worker will not serve this parent; it exits after sending this.
    Refused { reason: String },
    /// Task `id` returned; its encoded result follows the header.
    Done { id: u64 },
    /// Task `id` panicked.
    Panicked {
        id: u64,
        message: String,
        location: Option<String>,
    },
    /// Task `id` could not decode its arguments or encode its result.
    Failed { id: u64, error: CodecFailure },
}

impl FromWorker {
    /// The message's name, for error messages (the message itself may be large).
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            FromWorker::Hello { .. } => "Hello",
            FromWorker::Refused { .. } => "Refused",
            FromWorker::Done { .. } => "Done",
            FromWorker::Panicked { .. } => "Panicked",
            FromWorker::Failed { .. } => "Failed",
        }
    }
}

/// A serialization failure inside the worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum CodecFailure {
    Encode(String),
    Decode(String),
}

/// Clears `buf` and starts a frame in it with `header`.
pub(crate) fn begin(buf: &mut Vec<u8>, header: &impl Serialize) -> Result<(), String> {
    buf.clear();
    buf.extend_from_slice(&[0; LEN_PREFIX]);
    push(buf, header)
}

/// Appends one rmp-serde value to the frame in `buf`.
pub(crate) fn push(buf: &mut Vec<u8>, value: &impl Serialize) -> Result<(), String> {
    rmp_serde::encode::write(buf, value).map_err(|e| e.to_string())
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
pub(crate) fn read_frame(input: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut prefix = [0; LEN_PREFIX];
    match input.read(&mut prefix[..1])? {
        0 => return Ok(false),
        _ => input.read_exact(&mut prefix[1..])?,
    }
    let len = body_len(prefix)?;
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
pub(crate) async fn read_frame_async(
    input: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
) -> io::Result<bool> {
    let mut prefix = [0; LEN_PREFIX];
    match input.read(&mut prefix[..1]).await? {
        0 => return Ok(false),
        _ => input.read_exact(&mut prefix[1..]).await?,
    }
    let len = body_len(prefix)?;
    buf.clear();
    while buf.len() < len {
        let start = buf.len();
        buf.resize(start + (len - start).min(GROW_STEP), 0);
        input.read_exact(&mut buf[start..]).await?;
    }
    Ok(true)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn header_and_payload_round_trip() {
        let mut buf = Vec::new();
        begin(&mut buf, &ToWorker::Run { id: 7, entry: 99 }).unwrap();
        push(&mut buf, &(1u8, "two".to_string(), vec![3u64; 100])).unwrap();
        finish(&mut buf).unwrap();

        let mut input = &buf[..];
        let mut body = Vec::new();
        assert!(read_frame(&mut input, &mut body).unwrap());
        assert!(input.is_empty(), "the whole frame was consumed");
        let (header, payload) = split::<ToWorker>(&body).unwrap();
        assert!(matches!(header, ToWorker::Run { id: 7, entry: 99 }));
        let args: (u8, String, Vec<u64>) = rmp_serde::from_slice(payload).unwrap();
        assert_eq!(args, (1, "two".to_string(), vec![3; 100]));
    }

    #[test]
    fn clean_eof_is_not_an_error_but_a_truncated_frame_is() {
        let mut body = Vec::new();
        assert!(!read_frame(&mut &[][..], &mut body).unwrap());

        let full = frame(&ToWorker::Shutdown);
        let err = read_frame(&mut &full[..full.len() - 1], &mut body).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn oversized_length_prefix_is_refused_without_allocating() {
        let prefix = ((MAX_FRAME_LEN + 1) as u32).to_le_bytes();
        let mut body = Vec::new();
        let err = read_frame(&mut &prefix[..], &mut body).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(body.capacity(), 0);
    }

    #[test]
    fn lying_length_prefix_allocates_only_what_arrives() {
        let mut data = (MAX_FRAME_LEN as u32).to_le_bytes().to_vec();
        data.extend_from_slice(b"short");
        let mut body = Vec::new();
        assert!(read_frame(&mut &data[..], &mut body).is_err());
        assert!(body.capacity() <= 2 * GROW_STEP);
    }

    /// A small deterministic generator for the fuzz tests.
    pub(crate) fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    /// Valid frames of every message, to mutate.
    fn samples() -> Vec<Vec<u8>> {
        let mut run = Vec::new();
        begin(&mut run, &ToWorker::Run { id: 3, entry: 77 }).unwrap();
        push(&mut run, &("args", 1u8)).unwrap();
        finish(&mut run).unwrap();
        vec![
            run,
            frame(&ToWorker::Hello {
                build: 1,
                parent: 2,
                memory_limit: Some(3),
            }),
            frame(&ToWorker::Shutdown),
            frame(&FromWorker::Hello { pid: 1, build: 2 }),
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
        ]
    }

    /// Random bytes and mutated valid frames through the frame reader and both header
    /// decoders: errors, never a panic, and never more memory than the input justifies.
    #[test]
    fn fuzz_frames_and_headers() {
        let samples = samples();
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut body = Vec::new();
        for round in 0..10_000 {
            let mut input = match round % 3 {
                0 => samples[round % samples.len()].clone(),
                1 => (0..xorshift(&mut state) % 64)
                    .map(|_| xorshift(&mut state) as u8)
                    .collect(),
                _ => {
                    let mut frame = samples[round % samples.len()].clone();
                    frame.truncate(xorshift(&mut state) as usize % (frame.len() + 1));
                    frame
                }
            };
            for _ in 0..xorshift(&mut state) % 4 {
                if !input.is_empty() {
                    let at = xorshift(&mut state) as usize % input.len();
                    input[at] = xorshift(&mut state) as u8;
                }
            }
            let mut reader = &input[..];
            while let Ok(true) = read_frame(&mut reader, &mut body) {
                assert!(body.capacity() <= input.len() + 2 * GROW_STEP);
                let _ = split::<ToWorker>(&body);
                let _ = split::<FromWorker>(&body);
            }
            let _ = split::<ToWorker>(&input);
            let _ = split::<FromWorker>(&input);
        }
    }

    #[test]
    fn garbage_header_is_an_error() {
        assert!(split::<FromWorker>(&[0xc1, 0xff, 0x00]).is_err());
        assert!(split::<FromWorker>(&[]).is_err());
    }
}
