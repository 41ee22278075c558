//! The child side: `--worker` detection, file descriptor set-up and the serve loop.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io::{self, BufReader, Write};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::event::{PollFd, PollFlags};

use crate::entry::{self, build_id};
use crate::wire::{self, CodecFailure, FromWorker, ToWorker};

/// The argument that makes a process an offload worker (as its only argument).
pub(crate) const WORKER_FLAG: &str = "--worker";

/// How long an idle worker polls for its next task before it sleeps, yielding its CPU in
/// between (docs/performance.md has the before and after).
const SPIN: std::time::Duration = std::time::Duration::from_micros(100);

/// Size of the buffer in front of the protocol input.
const READ_BUFFER: usize = 64 * 1024;

/// Set once `init` took over this process as a worker.
static SERVING: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Whether this thread is inside a task call, where panics are reported to the parent.
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
    /// Where the last task panic happened.
    static PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Whether this process was started as `program --worker`.
pub(crate) fn started_as_worker() -> bool {
    let mut args = std::env::args_os().skip(1);
    args.next().is_some_and(|arg| arg == WORKER_FLAG) && args.next().is_none()
}

/// Whether this process was started as a worker but `init` did not take it over: it is then
/// running the application's `main` by mistake and must not start workers of its own.
pub(crate) fn is_stray_worker() -> bool {
    !SERVING.load(Ordering::Relaxed) && started_as_worker()
}

/// Serves as a worker and exits, if this process was started as one; returns otherwise.
pub(crate) fn init() {
    if !started_as_worker() {
        return;
    }
    SERVING.store(true, Ordering::Relaxed);
    let code = match serve() {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("offload worker {}: {err}", std::process::id());
            2
        }
    };
    std::process::exit(code);
}

/// The protocol's ends: private close-on-exec copies of the original stdin and stdout.
struct Channel {
    input: BufReader<File>,
    output: File,
    /// The body of the last frame read.
    frame: Vec<u8>,
    /// Where the payload starts in `frame`, after the header.
    payload_start: usize,
    /// The frame being written.
    reply: Vec<u8>,
}

impl Channel {
    /// Moves the protocol off fds 0 and 1, so that user code that reads stdin gets end of file
    /// and user code that prints writes to stderr instead of into a frame.
    fn take_over_stdio() -> io::Result<Channel> {
        use rustix::io::fcntl_dupfd_cloexec;
        use rustix::stdio;
        let input = fcntl_dupfd_cloexec(stdio::stdin(), 3)?;
        let output = fcntl_dupfd_cloexec(stdio::stdout(), 3)?;
        stdio::dup2_stdout(stdio::stderr())?;
        let null = rustix::fs::open(
            "/dev/null",
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        stdio::dup2_stdin(&null)?;
        Ok(Channel {
            input: BufReader::with_capacity(READ_BUFFER, File::from(input)),
            output: File::from(output),
            frame: Vec::new(),
            payload_start: 0,
            reply: Vec::new(),
        })
    }

    /// Reads the next header; `None` at end of input (the parent is gone or done).
    fn receive(&mut self) -> Result<Option<ToWorker>, String> {
        self.spin_for_input();
        match wire::read_frame(&mut self.input, &mut self.frame) {
            Ok(true) => {
                let (header, payload) = wire::split(&self.frame)
                    .map_err(|e| format!("undecodable message from the parent: {e}"))?;
                self.payload_start = self.frame.len() - payload.len();
                Ok(Some(header))
            }
            Ok(false) => Ok(None),
            Err(e) => Err(format!("could not read from the parent: {e}")),
        }
    }

    /// Polls for input for up to [`SPIN`] before the blocking read: a task that arrives soon
    /// after the last one then starts without waiting for this process to be woken.
    fn spin_for_input(&self) {
        if !self.input.buffer().is_empty() {
            return;
        }
        let now = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let started = std::time::Instant::now();
        while started.elapsed() < SPIN {
            let mut fds = [PollFd::new(self.input.get_ref(), PollFlags::IN)];
            if rustix::event::poll(&mut fds, Some(&now)).unwrap_or(1) > 0 {
                return; // input (or an error, which the read will report)
            }
            // Yield rather than spin: another thread of this CPU may be the one to send.
            std::thread::yield_now();
        }
    }

    /// The payload after the last header read.
    fn payload(&self) -> &[u8] {
        &self.frame[self.payload_start..]
    }

    /// Sends a header-only message.
    fn send(&mut self, header: &FromWorker) -> Result<(), String> {
        self.output
            .write_all(&wire::frame(header))
            .map_err(|e| format!("could not write to the parent: {e}"))
    }
}

fn serve() -> Result<(), String> {
    let mut channel =
        Channel::take_over_stdio().map_err(|e| format!("could not set up its pipes: {e}"))?;
    let parent = match channel.receive()? {
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
                let _ = channel.send(&FromWorker::Refused {
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
    channel.send(&FromWorker::Hello {
        pid: std::process::id(),
        build: build_id(),
    })?;
    install_panic_hook();

    loop {
        let (id, entry) = match channel.receive()? {
            None | Some(ToWorker::Shutdown) => return Ok(()),
            Some(ToWorker::Run { id, entry }) => (id, entry),
            Some(other) => return Err(format!("unexpected message {other:?}")),
        };
        let mut reply = std::mem::take(&mut channel.reply);
        run(id, entry, channel.payload(), &mut reply);
        channel.reply = reply;
        channel
            .output
            .write_all(&channel.reply)
            .map_err(|e| format!("could not write to the parent: {e}"))?;
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

/// Records the location of panics inside tasks; other threads keep the usual report.
fn install_panic_hook() {
    let previous = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        if IN_TASK.with(Cell::get) {
            let location = info.location().map(|l| l.to_string());
            PANIC_LOCATION.with(|slot| *slot.borrow_mut() = location);
        } else {
            previous(info);
        }
    }));
}

/// A panic caught inside a task.
pub(crate) struct Panic {
    pub(crate) message: String,
    pub(crate) location: Option<String>,
}

/// Runs one task call, turning a panic into data. Must run inside [`run`], where the panic
/// hook records locations.
pub(crate) fn catch<R>(call: impl FnOnce() -> R) -> Result<R, Panic> {
    panic::catch_unwind(AssertUnwindSafe(call)).map_err(|payload| Panic {
        message: panic_message(&*payload),
        location: PANIC_LOCATION.with(|slot| slot.borrow_mut().take()),
    })
}

/// Runs task `id` and leaves the complete reply frame in `reply`.
fn run(id: u64, entry: u64, args: &[u8], reply: &mut Vec<u8>) {
    // SAFETY: the parent passed the handshake, so it runs this very executable file and
    // `entry` came from `entry::entry_of` there.
    let trampoline = unsafe { entry::resolve(entry) };
    let header = FromWorker::Done { id };
    // Headers always encode.
    let _ = wire::begin(reply, &header);
    IN_TASK.with(|flag| flag.set(true));
    let outcome = catch(|| trampoline(args, reply));
    IN_TASK.with(|flag| flag.set(false));
    let failure = match outcome {
        Ok(Ok(())) => match wire::finish(reply) {
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
    *reply = wire::frame(&failure);
}

pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any>".to_string()
    }
}
