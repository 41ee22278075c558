//! The worker's life: the handshake, then one task at a time until the parent lets it go.

use super::link::ParentLink;
use crate::protocol::build::build_id;
use crate::protocol::{entry, frame, CodecFailure, FromWorker, ToWorker};
use crate::sys::panic::{self, Panic};

/// Serves the parent on this process's stdin and stdout until it says `Shutdown` or goes away.
pub(super) fn serve() -> Result<(), String> {
    let mut link =
        ParentLink::take_over_stdio().map_err(|e| format!("could not set up its pipes: {e}"))?;
    let parent = match link.receive()? {
        None => return Ok(()),
        Some(ToWorker::Hello {
            build,
            parent,
            memory_limit,
        }) => {
            if build != build_id() {
                let reason = format!(
                    "the parent runs another build of the program ({build:016x}, this is {:016x})",
                    build_id()
                );
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
            parent
        }
        Some(other) => {
            return Err(format!(
                "expected a handshake from the parent, got {other:?}; \
                 `--worker` is meant to be started by offload only"
            ))
        }
    };
    if !follow_parent(parent)? {
        return Ok(()); // nobody is left to serve
    }
    link.send(&FromWorker::Hello {
        pid: std::process::id(),
        build: build_id(),
    })?;
    panic::record_locations();

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

/// Dies with the parent: `SIGKILL` when it exits (Linux). Returns `false` if it already has.
fn follow_parent(parent: u32) -> Result<bool, String> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .map_err(|e| format!("could not set the parent death signal: {e}"))?;
    let current = rustix::process::getppid().map_or(0, |pid| pid.as_raw_nonzero().get() as u32);
    Ok(current == parent)
}

/// Runs task `id` and leaves the complete reply frame in `reply`.
fn run(id: u64, entry: u64, args: &[u8], reply: &mut Vec<u8>) {
    // SAFETY: the parent passed the handshake, so it runs this very executable file, and it
    // sends only entries it made with `entry::entry_for` for a trampoline of `func`.
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
