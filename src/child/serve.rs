//! The worker's life: the handshake, then one task at a time until the parent lets it go.
//!
//! A worker reads its input on its main thread between tasks, and runs tasks there. A remote
//! worker (started by a launcher other than a local exec) lends its input to a control thread
//! while a task runs, so that it still hears the parent: `Stop` (`SIGTERM` to the worker's
//! process group, `SIGKILL` after the grace) and the end of input (the parent, the ssh client
//! or the srun process is gone: the whole group is killed at once, even in the middle of a
//! task), since no signal of the parent's can reach it there. The input comes back once the
//! reply is written, while the reply and the next job are on their way, so a job never waits
//! for a thread to be woken.

use std::fs::File;
use std::sync::mpsc;
use std::time::Duration;

use super::link::ParentLink;
use crate::inside::logger;
use crate::protocol::build::{build_id, content_id, target};
use crate::protocol::{entry, frame, CodecFailure, FromWorker, Run, ToWorker};
use crate::sys::panic::{self, Panic};
use crate::sys::signal::{kill_own_group, Signal};

/// Serves the parent on this process's stdin and stdout until it says `Shutdown` or goes away.
pub(super) fn serve() -> Result<(), String> {
    let mut link =
        ParentLink::take_over_stdio().map_err(|e| format!("could not set up its pipes: {e}"))?;
    let (parent, remote, expected) = match link.receive()? {
        None => return Ok(()),
        Some(ToWorker::Hello {
            build,
            parent,
            memory_limit,
            remote,
            target: parent_target,
            log_level,
        }) => {
            let own = if remote { content_id() } else { build_id() };
            let refusal = if remote && parent_target != target() {
                Some(format!(
                    "the parent runs on {parent_target}, this worker on {}",
                    target()
                ))
            } else if build != own {
                Some(format!(
                    "the parent runs another build of the program ({build:016x}, this is {own:016x})"
                ))
            } else {
                None
            };
            if let Some(reason) = refusal {
                let _ = link.send(&FromWorker::Refused {
                    reason: reason.clone(),
                });
                return Err(format!("refusing to serve: {reason}"));
            }
            if let Some(bytes) = memory_limit {
                let limit = rustix::process::Rlimit {
                    current: Some(bytes),
                    maximum: Some(bytes),
                };
                rustix::process::setrlimit(rustix::process::Resource::As, limit)
                    .map_err(|e| format!("could not set its memory limit: {e}"))?;
            }
            logger::install(log_level);
            (parent, remote, own)
        }
        Some(other) => {
            return Err(format!(
                "expected a handshake from the parent, got {other:?}; \
                 `--worker` is meant to be started by offload only"
            ))
        }
    };
    if !follow_parent(parent, remote)? {
        return Ok(()); // nobody is left to serve
    }
    link.send(&FromWorker::Hello {
        pid: std::process::id(),
        build: expected,
        host: rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned(),
    })?;
    panic::record_locations();
    match remote {
        false => serve_locally(link),
        true => serve_remotely(link),
    }
}

/// One task at a time, the input read on this thread between tasks, and lent to the task
/// while it runs (a stream reads its credit there).
fn serve_locally(mut link: ParentLink) -> Result<(), String> {
    let mut reply = Vec::new();
    loop {
        let job = match link.receive()? {
            None | Some(ToWorker::Shutdown) => return Ok(()),
            Some(ToWorker::Run(job)) => job,
            // Credit that crossed the end of its stream.
            Some(ToWorker::Credit { .. }) => continue,
            Some(other) => return Err(format!("unexpected message {other:?}")),
        };
        // A stream reads its credit there while it runs.
        let lent = match job.window {
            0 => None,
            _ => link.lend_input(),
        };
        let (body, payload_start) = link.last_frame();
        // A reply buffer that a large result grew is given back when the next job is small.
        frame::shrink_for(&mut reply, body.len());
        run(&link, &job, lent, &body[payload_start..], &mut reply)
            .map(|input| link.take_back_input(input))?;
    }
}

/// One task at a time, read on this thread between tasks; while a task runs, the control
/// thread reads (see the module docs), and hands back the input once the reply is written.
/// Tasks always run on the main thread, and no job waits for a thread to wake up.
fn serve_remotely(mut link: ParentLink) -> Result<(), String> {
    let input = link
        .input()
        .get_ref()
        .try_clone()
        .map_err(|e| format!("could not copy its input descriptor: {e}"))?;
    let (wake_read, wake) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| format!("could not make its wake-up pipe: {e}"))?;
    let (turn, turns) = mpsc::channel::<()>();
    let (hand_back, handed_back) = mpsc::channel::<Option<Vec<u8>>>();
    std::thread::Builder::new()
        .name("offload-control".into())
        .spawn(move || control(input, wake_read, turns, hand_back))
        .map_err(|e| format!("could not start its control thread: {e}"))?;
    let mut reply = Vec::new();
    // A frame the control thread read after the last reply: the next job.
    let mut next: Option<Vec<u8>> = None;
    loop {
        let header = match next.take() {
            Some(body) => Some(link.take_frame(body)?),
            None => link.receive()?,
        };
        let job = match header {
            // The parent, or the connection to it, is gone: nothing may be left running.
            None => kill_own_group(),
            Some(ToWorker::Shutdown) => return Ok(()),
            // A stop that crossed the end of its task: the parent expects this worker to go.
            Some(ToWorker::Stop { grace_ms }) => stop_group(grace_ms),
            Some(ToWorker::Run(job)) => job,
            // Credit that crossed the end of its stream.
            Some(ToWorker::Credit { .. }) => continue,
            Some(other) => return Err(format!("unexpected message {other:?}")),
        };
        // What came right behind the job is in this thread's buffer, out of the control
        // thread's sight: only a stop (obeyed before the job starts) or the late credit of a
        // stream that ended may come there.
        while link.has_buffered_input() {
            let mut behind = Vec::new();
            match frame::read_frame(link.input(), &mut behind) {
                Ok(true) => match frame::split::<ToWorker>(&behind) {
                    Ok((ToWorker::Credit { .. }, _)) => {}
                    other => obey(other),
                },
                Ok(false) | Err(_) => kill_own_group(),
            }
        }
        if turn.send(()).is_err() {
            return Err("its control thread ended".into());
        }
        let (body, payload_start) = link.last_frame();
        frame::shrink_for(&mut reply, body.len());
        run(&link, &job, None, &body[payload_start..], &mut reply)?;
        // Take the input back: wake the control thread and wait until it lets go.
        rustix::io::write(&wake, &[1])
            .map_err(|e| format!("could not wake its control thread: {e}"))?;
        next = handed_back
            .recv()
            .map_err(|_| "its control thread ended".to_string())?;
    }
}

/// The control thread: while a task runs on the main thread, reads what the parent sends and
/// obeys `Stop` and the end of input at once, whatever the task is doing. Frames are read
/// unbuffered, so that no byte meant for the main thread is taken; a job (sent once the reply
/// is on its way) is kept and handed back with the input.
fn control(
    mut input: File,
    wake: rustix::fd::OwnedFd,
    turns: mpsc::Receiver<()>,
    hand_back: mpsc::Sender<Option<Vec<u8>>>,
) {
    use rustix::event::{PollFd, PollFlags};
    while turns.recv().is_ok() {
        let mut next = None;
        loop {
            let mut fds = [
                PollFd::new(&wake, PollFlags::IN),
                PollFd::new(&input, PollFlags::IN),
            ];
            // Once a job is kept, only the wake-up is waited for.
            let watched = if next.is_some() { 1 } else { 2 };
            if rustix::event::poll(&mut fds[..watched], None).is_err() {
                continue; // interrupted
            }
            if !fds[0].revents().is_empty() {
                let _ = rustix::io::read(&wake, &mut [0; 1]);
                break;
            }
            if fds[1].revents().is_empty() {
                continue;
            }
            let mut body = Vec::new();
            match frame::read_frame(&mut input, &mut body) {
                Ok(true) => {}
                // The parent, or the connection to it, is gone: nothing may be left running.
                Ok(false) | Err(_) => kill_own_group(),
            }
            match frame::split::<ToWorker>(&body) {
                Ok((ToWorker::Run(_) | ToWorker::Shutdown, _)) => next = Some(body),
                Ok((ToWorker::Credit { id, items }, _)) => {
                    if let Some(channel) = crate::inside::channel() {
                        channel.grant(id, items);
                    }
                }
                other => obey(other),
            }
        }
        if hand_back.send(next).is_err() {
            return;
        }
    }
}

/// Acts on a frame (decoded) that may come while a task runs: `Stop`; anything else breaks
/// the protocol, and the worker goes with everything it started.
fn obey(frame: Result<(ToWorker, &[u8]), String>) -> ! {
    match frame {
        Ok((ToWorker::Stop { grace_ms }, _)) => stop_group(grace_ms),
        Ok((other, _)) => {
            eprintln!("offload worker: unexpected message {other:?} while running a task");
            kill_own_group()
        }
        Err(e) => {
            eprintln!("offload worker: undecodable message from the parent: {e}");
            kill_own_group()
        }
    }
}

/// `SIGTERM` to the process group, then `SIGKILL` after `grace_ms`: the same sequence as the
/// parent applies to a local worker. Does not return: the group includes this process.
fn stop_group(grace_ms: u64) -> ! {
    kill_group(Signal::TERM);
    std::thread::sleep(Duration::from_millis(grace_ms));
    kill_own_group()
}

/// Sends `signal` to this worker's process group: itself and every process its tasks started
/// that stayed in the group.
fn kill_group(signal: Signal) {
    let _ = rustix::process::kill_current_process_group(signal);
}

/// Dies with the parent: a local worker gets `SIGKILL` when the process that started it exits
/// (Linux), and checks that this is still the parent that said hello; returns `false` if it is
/// already gone. A remote worker becomes the leader of a process group of its own, which its
/// control thread kills as a whole when its input ends.
fn follow_parent(parent: u32, remote: bool) -> Result<bool, String> {
    if remote {
        // Fails only for a session leader, which already leads its group.
        let _ = rustix::process::setpgid(None, None);
        // No parent-death signal: it would kill this process alone, before its control
        // thread sees the end of input (which always follows) and kills the whole group.
        return Ok(true);
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .map_err(|e| format!("could not set the parent death signal: {e}"))?;
    let current = rustix::process::getppid().map_or(0, |pid| pid.as_raw_nonzero().get() as u32);
    Ok(current == parent)
}

/// Runs `job` on its arguments `args`, and writes its reply (after everything the task
/// reported). `lent` is the input a local worker lends the task; it is given back.
fn run(
    link: &ParentLink,
    job: &Run,
    lent: Option<std::io::BufReader<File>>,
    args: &[u8],
    reply: &mut Vec<u8>,
) -> Result<Option<std::io::BufReader<File>>, String> {
    let channel = link.output;
    match channel.begin(job.id, job.flags, job.window, lent) {
        Ok(()) => call(job.id, job.entry, args, reply),
        Err(message) => {
            *reply = frame::frame(&FromWorker::Panicked {
                id: job.id,
                message: format!("offload: {message}"),
                location: None,
            })
        }
    }
    channel.end(reply)
}

/// Calls the trampoline at `entry` for task `id` and leaves the complete reply frame in `reply`.
fn call(id: u64, entry: u64, args: &[u8], reply: &mut Vec<u8>) {
    // SAFETY: the parent passed the handshake, so it runs this very executable file (or, for
    // a remote worker, a file of the same content), and it sends only entries it made with
    // `entry::entry_for` for a trampoline of `func`.
    let trampoline = unsafe { entry::resolve(entry) };
    // Headers always encode.
    let _ = frame::begin(reply, &FromWorker::Done { id });
    let failure = match panic::catch(|| trampoline(args, reply)) {
        Ok(Ok(())) => match frame::finish(reply) {
            Ok(()) => return,
            Err(msg) => FromWorker::Failed {
                id,
                error: CodecFailure::Encode(format!("result: {msg}")),
            },
        },
        Ok(Err(error)) => FromWorker::Failed { id, error },
        Err(Panic { message, location }) => FromWorker::Panicked {
            id,
            message,
            location,
        },
    };
    *reply = frame::frame(&failure);
}
