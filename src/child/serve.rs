//! The worker's life: the handshake, then one task at a time until the parent lets it go.
//!
//! A worker reads its input on its main thread between tasks, and runs tasks there. While a
//! task runs that must still hear the parent, its input thread reads it (see
//! [`inbox`](super::inbox)): the jobs the parent pipes ahead, a stream's credit, and for a
//! remote worker (started by a launcher other than a local exec) `Stop` (`SIGTERM` to the
//! worker's process group, `SIGKILL` after the grace) and the end of input (the parent, the
//! ssh client or the srun process is gone: the whole group is killed at once, even in the
//! middle of a task), since no signal of the parent's can reach it there.

use super::inbox::{stop_group, Inbox, Waiting};
use super::link::ParentLink;
use crate::inside::logger;
use crate::protocol::build::{build_id, content_id, target};
use crate::protocol::{entry, frame, CodecFailure, FromWorker, Run, ToWorker};
use crate::sys::panic::{self, Panic};
use crate::sys::region::Region;
use crate::sys::signal::kill_own_group;

/// Serves the parent on this process's stdin and stdout until it says `Shutdown` or goes away.
pub(super) fn serve() -> Result<(), String> {
    let mut link =
        ParentLink::take_over_stdio().map_err(|e| format!("could not set up its pipes: {e}"))?;
    let (parent, remote, expected, regions) = match link.receive()? {
        None => return Ok(()),
        Some(ToWorker::Hello {
            build,
            parent,
            memory_limit,
            remote,
            target: parent_target,
            log_level,
            regions,
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
            (parent, remote, own, regions.filter(|_| !remote))
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
    // Without them (a `/proc` this process may not read), every frame goes through the pipe.
    let regions = regions.and_then(|(jobs, replies)| {
        Some((
            Region::open(parent, jobs).ok()?,
            Region::open(parent, replies).ok()?,
        ))
    });
    let opened = regions.is_some();
    if let Some((jobs, replies)) = regions {
        link.use_regions(jobs, replies);
    }
    link.send(&FromWorker::Hello {
        pid: std::process::id(),
        build: expected,
        host: rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned(),
        regions: opened,
    })?;
    panic::record_locations();
    serve_jobs(link, remote)
}

/// How long the input thread keeps the input after a piped task, for the pipeline's next
/// job, before the main thread takes it back to read for itself.
const PIPELINE_PAUSE: std::time::Duration = std::time::Duration::from_millis(1);

/// One task at a time, on this thread. The input is read here between tasks, and lent to the
/// input thread while a watched task runs (see [`inbox`](super::inbox)); the next job then
/// comes from the inbox, and its `Started`, if it confirms its start, leaves in the same write
/// as the reply of the task before it.
fn serve_jobs(mut link: ParentLink, remote: bool) -> Result<(), String> {
    let inbox = Inbox::start(link.output, remote)?;
    let mut reply = Vec::new();
    // The job taken from the inbox as the last task ended.
    let mut next: Option<Waiting> = None;
    loop {
        let (job, piped) = match next.take() {
            Some(Waiting::End) => return Ok(()),
            Some(Waiting::Job(queued)) => {
                link.take_frame(queued.body)?;
                (queued.run, queued.piped)
            }
            None => match link.receive()? {
                // The parent, or the connection to it, is gone: nothing may be left running.
                None if remote => kill_own_group(),
                None | Some(ToWorker::Shutdown) => return Ok(()),
                // A stop that crossed the end of its task: the parent expects this worker to go.
                Some(ToWorker::Stop { grace_ms }) => stop_group(grace_ms),
                Some(ToWorker::Piped { confirm }) => {
                    link.mark(confirm);
                    continue;
                }
                Some(ToWorker::Run(job)) => {
                    let marker = link.take_marker();
                    if marker == Some(true) {
                        link.send(&FromWorker::Started { id: job.id })?;
                    }
                    (job, marker.is_some())
                }
                // A job withdrawn that the input thread read ahead, or one that started.
                Some(ToWorker::Skip { id }) => {
                    inbox.skip(id);
                    continue;
                }
                // Credit that crossed the end of its stream.
                Some(ToWorker::Credit { .. }) => continue,
                Some(other) => return Err(format!("unexpected message {other:?}")),
            },
        };
        if remote || piped || job.window > 0 {
            if let Some(input) = link.lend_input() {
                inbox.lend(input)?;
            }
        }
        let (body, payload_start) = link.last_frame();
        // A reply buffer that a large result grew is given back when the next job is small.
        frame::shrink_for(&mut reply, body.len());
        run(&link, &job, &body[payload_start..], &mut reply);
        let channel = link.output;
        next = inbox.next(|started| {
            if let Some(id) = started {
                reply.extend_from_slice(&frame::frame(&FromWorker::Started { id }));
            }
            channel.end(&reply)
        })?;
        let started = |started: Option<u64>| match started {
            Some(id) => channel.write(&frame::frame(&FromWorker::Started { id })),
            None => Ok(()),
        };
        // The next job of a pipeline is usually on its way: taking the input back (and
        // lending it again for that job) would cost two wake-ups of the input thread.
        if next.is_none() && piped && link.input_is_lent() && inbox.wait_briefly(PIPELINE_PAUSE) {
            next = inbox.next(started)?;
        }
        // (What came may have been withdrawn meanwhile.)
        if next.is_none() && link.input_is_lent() {
            link.give_input(inbox.take_back()?);
            next = inbox.next(started)?;
        }
    }
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

/// Runs `job` on its arguments `args`, leaving its reply in `reply`; what it reports is
/// written as it runs, and the reply by [`Channel::end`](crate::inside::Channel::end).
fn run(link: &ParentLink, job: &Run, args: &[u8], reply: &mut Vec<u8>) {
    match link.output.begin(job.id, job.flags, job.window) {
        Ok(()) => call(job.id, job.entry, args, reply),
        Err(message) => {
            *reply = frame::frame(&FromWorker::Panicked {
                id: job.id,
                message: format!("offload: {message}"),
                location: None,
            })
        }
    }
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
