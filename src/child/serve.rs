//! The worker's life: the handshake, then one task at a time until the parent lets it go.
//!
//! A local worker reads its input on its main thread, between tasks. A remote worker (started
//! by a launcher other than a local exec) hands its input to a control thread, which passes
//! jobs on and, while a task runs, still hears the parent: `Stop` (`SIGTERM` to the worker's
//! process group, `SIGKILL` after the grace) and the end of input (the parent, the ssh client
//! or the srun process is gone: the whole group is killed at once, even in the middle of a
//! task), since no signal of the parent's can reach it there.

use std::fs::File;
use std::io::BufReader;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::link::{write_to, ParentLink};
use crate::protocol::build::{build_id, content_id, target};
use crate::protocol::{entry, frame, CodecFailure, FromWorker, ToWorker};
use crate::sys::panic::{self, Panic};
use crate::sys::signal::Signal;

/// How long an idle remote worker looks for its next job before it sleeps.
const SPIN: Duration = Duration::from_micros(100);

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

/// One task at a time, the input read on this thread between tasks.
fn serve_locally(mut link: ParentLink) -> Result<(), String> {
    let mut reply = Vec::new();
    loop {
        let (id, entry) = match link.receive()? {
            None | Some(ToWorker::Shutdown) => return Ok(()),
            Some(ToWorker::Run { id, entry }) => (id, entry),
            Some(other) => return Err(format!("unexpected message {other:?}")),
        };
        let (body, payload_start) = link.last_frame();
        // A reply buffer that a large result grew is given back when the next job is small.
        frame::shrink_for(&mut reply, body.len());
        run(id, entry, &body[payload_start..], &mut reply);
        link.write(&reply)?;
    }
}

/// What the control thread passes to the main thread.
enum Mail {
    Run {
        id: u64,
        entry: u64,
        /// The frame's body; the arguments start at `payload_start`.
        body: Vec<u8>,
        payload_start: usize,
    },
    Shutdown,
}

/// One task at a time, with the input on a control thread (see the module docs).
fn serve_remotely(link: ParentLink) -> Result<(), String> {
    let ParentLink {
        input, mut output, ..
    } = link;
    let (mail, inbox) = mpsc::channel();
    let (recycle, used) = mpsc::channel();
    std::thread::Builder::new()
        .name("offload-control".into())
        .spawn(move || control(input, mail, used))
        .map_err(|e| format!("could not start its control thread: {e}"))?;
    let mut reply = Vec::new();
    loop {
        match next_mail(&inbox) {
            Some(Mail::Run {
                id,
                entry,
                body,
                payload_start,
            }) => {
                frame::shrink_for(&mut reply, body.len());
                run(id, entry, &body[payload_start..], &mut reply);
                write_to(&mut output, &reply)?;
                let _ = recycle.send(body);
            }
            Some(Mail::Shutdown) | None => return Ok(()),
        }
    }
}

/// The next mail, looked for during [`SPIN`] before sleeping on it.
fn next_mail(inbox: &mpsc::Receiver<Mail>) -> Option<Mail> {
    let started = Instant::now();
    while started.elapsed() < SPIN {
        match inbox.try_recv() {
            Ok(mail) => return Some(mail),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) => std::thread::yield_now(),
        }
    }
    inbox.recv().ok()
}

/// The control thread: reads every frame from the parent; jobs go to the main thread, `Stop`
/// and the end of input are acted on here, whatever the main thread is doing.
fn control(mut input: BufReader<File>, mail: mpsc::Sender<Mail>, used: mpsc::Receiver<Vec<u8>>) {
    loop {
        let mut body = used.try_recv().unwrap_or_default();
        match frame::read_frame(&mut input, &mut body) {
            Ok(true) => {}
            // The parent, or the connection to it, is gone: nothing may be left running.
            Ok(false) | Err(_) => kill_group(Signal::KILL),
        }
        match frame::split::<ToWorker>(&body) {
            Ok((ToWorker::Run { id, entry }, payload)) => {
                let payload_start = body.len() - payload.len();
                let _ = mail.send(Mail::Run {
                    id,
                    entry,
                    body,
                    payload_start,
                });
            }
            Ok((ToWorker::Shutdown, _)) => {
                let _ = mail.send(Mail::Shutdown);
                return;
            }
            Ok((ToWorker::Stop { grace_ms }, _)) => {
                kill_group(Signal::TERM);
                std::thread::sleep(Duration::from_millis(grace_ms));
                kill_group(Signal::KILL);
            }
            Ok((other, _)) => {
                eprintln!("offload worker: unexpected message {other:?}");
                kill_group(Signal::KILL);
            }
            Err(e) => {
                eprintln!("offload worker: undecodable message from the parent: {e}");
                kill_group(Signal::KILL);
            }
        }
    }
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

/// Runs task `id` and leaves the complete reply frame in `reply`.
fn run(id: u64, entry: u64, args: &[u8], reply: &mut Vec<u8>) {
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
