//! Capturing what a task writes to fds 1 and 2: for the task's run, both point at pipes of
//! their own (new ones for every task, so that a process a task started and left behind can
//! never write into another task's output), which a reader thread forwards to the parent as
//! `Output` frames. Whatever writes there is captured: Rust's `print!`, C code, the processes
//! the task starts (they inherit the descriptors).
//!
//! When the task returns, Rust's buffered stdout is flushed, fds 1 and 2 are pointed back at
//! the worker's own, and the reader forwards what the pipes still hold before the reply is
//! written: a write that returned before the task did is in a pipe by then, so nothing the
//! task wrote is lost or follows its end.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use rustix::event::{PollFd, PollFlags};
use rustix::pipe::{pipe_with, PipeFlags};
use rustix::stdio;

use super::{channel, lock, Channel};
use crate::protocol::{frame, FromWorker, CAPTURE_LIMIT};

/// Bytes read at once.
const CHUNK: usize = 64 * 1024;

/// The capture of the task that runs.
struct Capture {
    /// The worker's own fds 1 and 2, to point them back at.
    saved: [OwnedFd; 2],
    /// Wakes the reader to drain and finish.
    wake: OwnedFd,
    /// Tells that the reader has forwarded everything.
    drained: mpsc::Receiver<()>,
}

/// A capture's pipes, for the reader.
struct Pipes {
    id: u64,
    read: [OwnedFd; 2],
    wake: OwnedFd,
    drained: mpsc::Sender<()>,
}

static CAPTURE: Mutex<Option<Capture>> = Mutex::new(None);

/// The reader thread's queue of captures, started with the first one.
static READER: OnceLock<Mutex<mpsc::Sender<Pipes>>> = OnceLock::new();

fn reader() -> Result<mpsc::Sender<Pipes>, String> {
    if let Some(reader) = READER.get() {
        return Ok(lock(reader).clone());
    }
    let (queue, captures) = mpsc::channel::<Pipes>();
    std::thread::Builder::new()
        .name("offload-capture".into())
        .spawn(move || {
            for pipes in captures {
                forward(pipes);
            }
        })
        .map_err(|e| format!("could not start its capture thread: {e}"))?;
    Ok(lock(READER.get_or_init(|| Mutex::new(queue))).clone())
}

fn io(what: &str) -> impl Fn(rustix::io::Errno) -> String + '_ {
    move |e| format!("could not capture the task's output ({what}): {e}")
}

/// Points fds 1 and 2 of the task about to run at new pipes read by the reader thread.
pub(super) fn start(id: u64) -> Result<(), String> {
    let reader = reader()?;
    let (out_read, out_write) = pipe_with(PipeFlags::CLOEXEC).map_err(io("pipe"))?;
    let (err_read, err_write) = pipe_with(PipeFlags::CLOEXEC).map_err(io("pipe"))?;
    let (wake_read, wake) = pipe_with(PipeFlags::CLOEXEC).map_err(io("pipe"))?;
    let saved_out = rustix::io::fcntl_dupfd_cloexec(stdio::stdout(), 3).map_err(io("dup"))?;
    let saved_err = rustix::io::fcntl_dupfd_cloexec(stdio::stderr(), 3).map_err(io("dup"))?;
    flush_stdio();
    stdio::dup2_stdout(&out_write).map_err(io("dup2"))?;
    if let Err(e) = stdio::dup2_stderr(&err_write) {
        let _ = stdio::dup2_stdout(&saved_out);
        return Err(io("dup2")(e));
    }
    let (drained_tx, drained) = mpsc::channel();
    let pipes = Pipes {
        id,
        read: [out_read, err_read],
        wake: wake_read,
        drained: drained_tx,
    };
    // The reader lives as long as the process; should it be gone, nothing is forwarded.
    let _ = reader.send(pipes);
    *lock(&CAPTURE) = Some(Capture {
        saved: [saved_out, saved_err],
        wake,
        drained,
    });
    Ok(())
}

/// Ends the capture of the task that ran: flushes Rust's stdout, points fds 1 and 2 back at
/// the worker's own, and waits until the reader has forwarded what the pipes hold.
pub(super) fn finish() {
    let Some(capture) = lock(&CAPTURE).take() else {
        return;
    };
    flush_stdio();
    let _ = stdio::dup2_stdout(&capture.saved[0]);
    let _ = stdio::dup2_stderr(&capture.saved[1]);
    let _ = rustix::io::write(&capture.wake, &[1]);
    let _ = capture.drained.recv();
}

/// Flushes what Rust's stdout and C's stdio buffers hold, so that it goes where fds 1 and 2
/// point now, before they are pointed elsewhere.
fn flush_stdio() {
    let _ = std::io::stdout().flush();
    // SAFETY: `fflush(NULL)` flushes every open output stream of C's stdio; a null argument
    // is defined by the C standard to mean exactly that, and it touches no Rust state.
    unsafe {
        libc::fflush(std::ptr::null_mut());
    }
}

/// The reader's work for one capture: forwards what the pipes give until it is woken, then
/// what they still hold, then reports that it is done.
fn forward(pipes: Pipes) {
    let Some(channel) = channel() else {
        return;
    };
    let mut sent = [0usize; 2];
    let mut cut = [0u64; 2];
    let mut open = [true, true];
    let mut chunk = vec![0; CHUNK];
    loop {
        // Only the pipes still open are watched: one at its end would always be readable.
        let watched: Vec<usize> = (0..2).filter(|&fd| open[fd]).collect();
        let mut fds: Vec<PollFd<'_>> = watched
            .iter()
            .map(|&fd| PollFd::new(&pipes.read[fd], PollFlags::IN))
            .collect();
        fds.push(PollFd::new(&pipes.wake, PollFlags::IN));
        if rustix::event::poll(&mut fds, None).is_err() {
            continue; // interrupted
        }
        let readable: Vec<bool> = fds.iter().map(|fd| !fd.revents().is_empty()).collect();
        let woken = readable[watched.len()];
        for (&fd, _) in watched.iter().zip(&readable).filter(|(_, &ready)| ready) {
            open[fd] = read_some(channel, &pipes, fd, &mut chunk, &mut sent, &mut cut).is_some();
        }
        if woken {
            break;
        }
    }
    // Fds 1 and 2 point elsewhere now: what the pipes hold was written before the task
    // ended, and that much is read. Only a process the task left behind can still write, and
    // that is not the task's (nor may it keep the task from ending).
    for fd in 0..2 {
        let mut held = rustix::io::ioctl_fionread(&pipes.read[fd]).unwrap_or(0) as usize;
        while open[fd] && held > 0 {
            let want = held.min(CHUNK);
            match read_some(channel, &pipes, fd, &mut chunk[..want], &mut sent, &mut cut) {
                Some(n) => held -= n.min(held),
                None => open[fd] = false,
            }
        }
        if cut[fd] > 0 {
            let header = FromWorker::Output {
                id: pipes.id,
                fd: fd as u8 + 1,
                cut: cut[fd],
            };
            channel.report(pipes.id, &[&frame::frame(&header)]);
        }
    }
    let _ = pipes.drained.send(());
}

/// Reads once from pipe `fd` and forwards what fits under the limit; returns how many bytes
/// it read, `None` at the pipe's end (or on an error).
fn read_some(
    channel: &Channel,
    pipes: &Pipes,
    fd: usize,
    chunk: &mut [u8],
    sent: &mut [usize; 2],
    cut: &mut [u64; 2],
) -> Option<usize> {
    let n = match rustix::io::read(pipes.read[fd].as_fd(), &mut *chunk) {
        Ok(0) => return None,
        Ok(n) => n,
        Err(rustix::io::Errno::INTR) => return Some(0),
        Err(_) => return None,
    };
    let keep = n.min(CAPTURE_LIMIT - sent[fd]);
    cut[fd] += (n - keep) as u64;
    if keep > 0 {
        sent[fd] += keep;
        let mut head = Vec::with_capacity(32);
        let header = FromWorker::Output {
            id: pipes.id,
            fd: fd as u8 + 1,
            cut: 0,
        };
        // A small header always encodes, and a chunk is far below the frame cap.
        let _ = frame::begin(&mut head, &header);
        let body = head.len() - 4 + keep;
        head[..4].copy_from_slice(&(body as u32).to_le_bytes());
        channel.report(pipes.id, &[&head, &chunk[..keep]]);
    }
    Some(n)
}
