//! Capturing what a task writes to fds 1 and 2: for the task's run, both point at pipes of
//! their own (new ones for every task, so that a process a task started and left behind can
//! never write into another task's output), which a reader thread forwards to the parent as
//! `Output` frames while the task runs, so that a task that writes much never waits for its
//! pipe. Whatever writes there is captured: Rust's `print!`, C code, the processes the task
//! starts (they inherit the descriptors).
//!
//! When the task returns, Rust's buffered stdout and C's stdio buffers are flushed, fds 1 and 2
//! are pointed back at the worker's own, and the task's own thread forwards what the pipes
//! still hold before the reply is written: a write that returned before the task did is in a
//! pipe by then, so nothing the task wrote is lost or follows its end. The reader and the
//! task's thread take turns under one lock, and the reader is only told to let go, never
//! waited for.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use rustix::event::{PollFd, PollFlags};
use rustix::pipe::{pipe_with, PipeFlags};
use rustix::stdio;

use super::{channel, lock, Channel};
use crate::protocol::{FromWorker, CAPTURE_LIMIT};

/// Bytes read at once.
const CHUNK: usize = 64 * 1024;

/// The capture of the task that runs, as its own thread holds it.
struct Capture {
    /// The worker's own fds 1 and 2, to point them back at.
    saved: [OwnedFd; 2],
    /// Wakes the reader to let go of the pipes.
    wake: OwnedFd,
    pipes: Arc<Pipes>,
}

/// A capture's pipes, shared by the reader and the task's thread.
struct Pipes {
    id: u64,
    /// The read ends of fd 1's and fd 2's pipes, non-blocking: both sides read them.
    read: [OwnedFd; 2],
    /// Where the reader is woken.
    wake: OwnedFd,
    /// What was forwarded, under the lock that makes the two readers take turns.
    state: Mutex<Forwarded>,
}

/// What a capture forwarded so far.
struct Forwarded {
    sent: [usize; 2],
    cut: [u64; 2],
    /// Whether each pipe may still give bytes.
    open: [bool; 2],
    /// The task ended and its thread forwarded the rest: the reader lets go.
    done: bool,
    chunk: Vec<u8>,
}

static CAPTURE: Mutex<Option<Capture>> = Mutex::new(None);

/// The reader thread's queue of captures, started with the first one.
static READER: OnceLock<Mutex<mpsc::Sender<Arc<Pipes>>>> = OnceLock::new();

fn reader() -> Result<mpsc::Sender<Arc<Pipes>>, String> {
    if let Some(reader) = READER.get() {
        return Ok(lock(reader).clone());
    }
    let (queue, captures) = mpsc::channel::<Arc<Pipes>>();
    std::thread::Builder::new()
        .name("offload-capture".into())
        .spawn(move || {
            for pipes in captures {
                forward_while_running(&pipes);
            }
        })
        .map_err(|e| format!("could not start its capture thread: {e}"))?;
    Ok(lock(READER.get_or_init(|| Mutex::new(queue))).clone())
}

fn io(what: &str) -> impl Fn(rustix::io::Errno) -> String + '_ {
    move |e| format!("could not capture the task's output ({what}): {e}")
}

/// Points fds 1 and 2 of task `id`, about to run, at new pipes that the reader thread reads.
pub(super) fn start(id: u64) -> Result<(), String> {
    let reader = reader()?;
    let (out_read, out_write) = pipe_with(PipeFlags::CLOEXEC).map_err(io("pipe"))?;
    let (err_read, err_write) = pipe_with(PipeFlags::CLOEXEC).map_err(io("pipe"))?;
    let (wake_read, wake) = pipe_with(PipeFlags::CLOEXEC).map_err(io("pipe"))?;
    // Only the read ends: the task's writes still wait for room, as on any pipe.
    for read in [&out_read, &err_read] {
        rustix::io::ioctl_fionbio(read, true).map_err(io("non-blocking read"))?;
    }
    let saved_out = rustix::io::fcntl_dupfd_cloexec(stdio::stdout(), 3).map_err(io("dup"))?;
    let saved_err = rustix::io::fcntl_dupfd_cloexec(stdio::stderr(), 3).map_err(io("dup"))?;
    flush_stdio();
    stdio::dup2_stdout(&out_write).map_err(io("dup2"))?;
    if let Err(e) = stdio::dup2_stderr(&err_write) {
        let _ = stdio::dup2_stdout(&saved_out);
        return Err(io("dup2")(e));
    }
    let pipes = Arc::new(Pipes {
        id,
        read: [out_read, err_read],
        wake: wake_read,
        state: Mutex::new(Forwarded {
            sent: [0; 2],
            cut: [0; 2],
            open: [true; 2],
            done: false,
            chunk: vec![0; CHUNK],
        }),
    });
    // The reader lives as long as the process; should it be gone, the end forwards it all.
    let _ = reader.send(pipes.clone());
    *lock(&CAPTURE) = Some(Capture {
        saved: [saved_out, saved_err],
        wake,
        pipes,
    });
    Ok(())
}

/// Ends the capture of the task that ran: flushes Rust's stdout and C's stdio, points fds 1
/// and 2 back at the worker's own, forwards what the pipes held at that moment, and tells
/// the reader to let go.
pub(super) fn finish() {
    let Some(capture) = lock(&CAPTURE).take() else {
        return;
    };
    let Some(channel) = channel() else {
        return;
    };
    flush_stdio();
    let _ = stdio::dup2_stdout(&capture.saved[0]);
    let _ = stdio::dup2_stderr(&capture.saved[1]);
    let pipes = &capture.pipes;
    let mut state = lock(&pipes.state);
    // What the pipes hold now was written before the task ended, and that much is read. Only
    // a process the task left behind can still write, and that is not the task's (nor may it
    // keep the task from ending).
    for fd in 0..2 {
        let mut held = rustix::io::ioctl_fionread(&pipes.read[fd]).unwrap_or(0) as usize;
        while state.open[fd] && held > 0 {
            match read_some(channel, pipes, &mut state, fd, held) {
                Read::Bytes(n) => held -= n.min(held),
                Read::Empty => break,
                Read::End => state.open[fd] = false,
            }
        }
        if state.cut[fd] > 0 {
            let header = FromWorker::Output {
                id: pipes.id,
                fd: fd as u8 + 1,
                cut: state.cut[fd],
            };
            channel.report(pipes.id, &header, &[]);
        }
    }
    state.done = true;
    drop(state);
    let _ = rustix::io::write(&capture.wake, &[1]);
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

/// The reader's work for one capture: forwards what the pipes give while the task runs, until
/// the task's thread has taken over and it is woken.
fn forward_while_running(pipes: &Pipes) {
    let Some(channel) = channel() else {
        return;
    };
    loop {
        let open = lock(&pipes.state).open;
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
        // One read per pipe and turn, so that the task's thread, once the task ended, never
        // waits for more than one chunk (a process left behind may write without end).
        let mut state = lock(&pipes.state);
        if state.done {
            return;
        }
        for fd in watched {
            if let Read::End = read_some(channel, pipes, &mut state, fd, CHUNK) {
                state.open[fd] = false;
            }
        }
    }
}

/// What one read of a capture pipe gave.
enum Read {
    Bytes(usize),
    /// Nothing now (the pipe is non-blocking).
    Empty,
    /// Its end, or an error.
    End,
}

/// Reads up to `most` bytes from pipe `fd` and forwards what fits under the limit.
fn read_some(
    channel: &Channel,
    pipes: &Pipes,
    state: &mut Forwarded,
    fd: usize,
    most: usize,
) -> Read {
    let want = most.clamp(1, CHUNK);
    let n = match rustix::io::read(pipes.read[fd].as_fd(), &mut state.chunk[..want]) {
        Ok(0) => return Read::End,
        Ok(n) => n,
        Err(rustix::io::Errno::INTR) => return Read::Bytes(0),
        Err(rustix::io::Errno::AGAIN) => return Read::Empty,
        Err(_) => return Read::End,
    };
    let keep = n.min(CAPTURE_LIMIT - state.sent[fd]);
    state.cut[fd] += (n - keep) as u64;
    if keep > 0 {
        state.sent[fd] += keep;
        let header = FromWorker::Output {
            id: pipes.id,
            fd: fd as u8 + 1,
            cut: 0,
        };
        channel.report(pipes.id, &header, &state.chunk[..keep]);
    }
    Read::Bytes(n)
}
