//! The worker's end of the protocol: private close-on-exec copies of the original stdin and
//! stdout, read and written in frames.

use std::fs::File;
use std::io::{self, BufReader};

use rustix::event::{PollFd, PollFlags};

use super::inbox::Input;
use crate::inside::{self, Channel};
use crate::protocol::frame;
use crate::protocol::{FromWorker, ToWorker};
use crate::sys::region::Region;

/// How long an idle worker polls for its next task before it sleeps, yielding its CPU in
/// between (docs/performance.md has the before and after).
const SPIN: std::time::Duration = std::time::Duration::from_micros(100);

/// Whether this process may run on more than one CPU, so that polling for input leaves a CPU
/// to whoever sends it. On one CPU (pinned, or a one-CPU machine or cgroup), every turn of
/// the polling loop is only one more switch before the sender runs.
fn may_spin() -> bool {
    static MANY_CPUS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *MANY_CPUS.get_or_init(|| std::thread::available_parallelism().is_ok_and(|n| n.get() > 1))
}

/// Size of the buffer in front of the protocol input.
const READ_BUFFER: usize = 64 * 1024;

/// The worker's link to its parent.
pub(super) struct ParentLink {
    /// The input; lent to the input thread while a watched task runs (see
    /// [`lend_input`](ParentLink::lend_input)).
    input: Option<Input>,
    /// The output, shared with what tasks report.
    pub(super) output: &'static Channel,
    /// The body of the last frame read.
    frame: Vec<u8>,
    /// Where the payload starts in `frame`, after the header.
    payload_start: usize,
}

impl ParentLink {
    /// Moves the protocol off fds 0 and 1, so that user code that reads stdin gets end of file
    /// and user code that prints writes to stderr instead of into a frame.
    pub(super) fn take_over_stdio() -> io::Result<ParentLink> {
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
        Ok(ParentLink {
            input: Some(Input {
                reader: BufReader::with_capacity(READ_BUFFER, File::from(input)),
                marker: None,
                jobs: None,
            }),
            output: inside::install(File::from(output)),
            frame: Vec::new(),
            payload_start: 0,
        })
    }

    /// Takes large frames through shared memory from now on: `jobs` from the parent, and
    /// `replies` to it.
    pub(super) fn use_regions(&mut self, jobs: Region, replies: Region) {
        self.input().jobs = Some(jobs);
        self.output.use_region(replies);
    }

    /// The input, which is only ever away while a watched task runs.
    fn input(&mut self) -> &mut Input {
        self.input
            .as_mut()
            .expect("the input is back once a watched task ends")
    }

    /// Lends the input to the input thread, for the task about to run; `None` if it is lent.
    pub(super) fn lend_input(&mut self) -> Option<Input> {
        self.input.take()
    }

    /// Whether the input is lent.
    pub(super) fn input_is_lent(&self) -> bool {
        self.input.is_none()
    }

    /// Takes back the input the input thread gave back.
    pub(super) fn give_input(&mut self, input: Input) {
        self.input = Some(input);
    }

    /// Notes a `Piped` marker, for the `Run` that follows it.
    pub(super) fn mark(&mut self, confirm: bool) {
        self.input().marker = Some(confirm);
    }

    /// The `Piped` marker of the `Run` just read: `Some(confirm)` if it had one.
    pub(super) fn take_marker(&mut self) -> Option<bool> {
        self.input().marker.take()
    }

    /// Reads the next header; `None` at end of input (the parent is gone or done).
    pub(super) fn receive(&mut self) -> Result<Option<ToWorker>, String> {
        self.spin_for_input();
        let input = self
            .input
            .as_mut()
            .expect("the input is back once a watched task ends");
        match frame::read_frame(&mut input.reader, &mut self.frame, input.jobs.as_mut()) {
            Ok(true) => {
                let (header, payload) = frame::split(&self.frame)
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
        let Some(input) = self.input.as_ref().map(|input| &input.reader) else {
            return;
        };
        if !input.buffer().is_empty() || !may_spin() {
            return;
        }
        let now = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let started = std::time::Instant::now();
        while started.elapsed() < SPIN {
            let mut fds = [PollFd::new(input.get_ref(), PollFlags::IN)];
            if rustix::event::poll(&mut fds, Some(&now)).unwrap_or(1) > 0 {
                return; // input (or an error, which the read will report)
            }
            // Yield rather than spin: another thread of this CPU may be the one to send.
            std::thread::yield_now();
        }
    }

    /// Takes `body`, a frame read elsewhere, as the last frame read, and decodes its header.
    pub(super) fn take_frame(&mut self, body: Vec<u8>) -> Result<ToWorker, String> {
        self.frame = body;
        let (header, payload) = frame::split(&self.frame)
            .map_err(|e| format!("undecodable message from the parent: {e}"))?;
        self.payload_start = self.frame.len() - payload.len();
        Ok(header)
    }

    /// The body of the last frame read, and where its payload starts.
    pub(super) fn last_frame(&self) -> (&[u8], usize) {
        (&self.frame, self.payload_start)
    }

    /// Sends a header-only message.
    pub(super) fn send(&mut self, header: &FromWorker) -> Result<(), String> {
        self.write(&frame::frame(header))
    }

    /// Writes a complete frame that belongs to no task.
    pub(super) fn write(&mut self, frame: &[u8]) -> Result<(), String> {
        self.output.write(frame)
    }
}
