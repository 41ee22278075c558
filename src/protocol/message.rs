//! The messages between the parent and a worker: the headers of frames.

use serde::{Deserialize, Serialize};

use super::event::LogRecord;

/// Parent → worker headers.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToWorker {
    /// The first frame: the parent's build identity and pid, and the worker's memory cap.
    Hello {
        build: u64,
        parent: u32,
        memory_limit: Option<u64>,
        /// Started by a launcher other than a local exec: the identity is the executable's
        /// content, the parent is not the worker's parent, and a control thread watches the
        /// input (`Stop`, end of input) while a task runs.
        #[serde(default)]
        remote: bool,
        /// The parent's `os/arch`, so that a worker of another platform says so.
        #[serde(default)]
        target: String,
        /// The most verbose `log` level the parent's logger takes (`log::LevelFilter` as a
        /// number, 0 for none): records above it are not sent.
        #[serde(default)]
        log_level: u8,
        /// For a local worker, the parent's descriptors of the shared memory for large frames
        /// (see [`frame`](super::frame)): jobs to the worker, then replies from it.
        #[serde(default)]
        regions: Option<(i32, i32)>,
    },
    /// Run a job on the arguments that follow the header.
    Run(Run),
    /// The consumer of stream `id` took items: it may send `items` more.
    Credit { id: u64, items: u64 },
    /// Exit after the current frame.
    Shutdown,
    /// Stop at once (a remote worker's control thread): `SIGTERM` to the worker's process
    /// group, `SIGKILL` after `grace_ms` if it is still alive.
    Stop { grace_ms: u64 },
    /// The next `Run` is part of a pipeline: more jobs may follow it before it ends, so the
    /// worker's input thread reads them (and `Skip`) while it runs. With `confirm`, it was
    /// sent while another job ran: the worker says `Started` as it begins it, and the parent
    /// may withdraw it until then.
    Piped { confirm: bool },
    /// Withdraw job `id`, sent ahead (`Piped { confirm: true }`): answered `Skipped` if it has
    /// not started, and not at all if its `Started` is already on its way.
    Skip { id: u64 },
}

/// A `Run` flag: the task's fds 1 and 2 go to the parent (`Output`), not to the worker's stderr.
pub(crate) const RUN_CAPTURE: u8 = 1;
/// A `Run` flag: a `map` chunk reports the items it has done (`Progress`).
pub(crate) const RUN_ITEM_PROGRESS: u8 = 2;

/// What a `Run` header asks for: the function at `entry` as job `id`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Run {
    pub(crate) id: u64,
    pub(crate) entry: u64,
    /// What the task reports beside its result ([`RUN_CAPTURE`], [`RUN_ITEM_PROGRESS`]).
    pub(crate) flags: u8,
    /// For a stream: how many items it may send before the parent grants more.
    pub(crate) window: u64,
}

/// Worker → parent headers.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromWorker {
    /// The answer to `Hello`: the worker runs the same build and is ready; `pid` and `host`
    /// are its own, on its machine.
    Hello {
        pid: u32,
        build: u64,
        #[serde(default)]
        host: String,
        /// Whether it opened the parent's regions (large frames go through them from now on,
        /// both ways).
        #[serde(default)]
        regions: bool,
    },
    /// The worker will not serve this parent; it exits after sending this.
    Refused { reason: String },
    /// Task `id`, sent ahead, starts now (after the answer to the job before it).
    Started { id: u64 },
    /// Task `id`, sent ahead, was withdrawn before it started.
    Skipped { id: u64 },
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
    /// Task `id` reports how far it is (the latest report wins).
    Progress { id: u64, done: u64, total: u64 },
    /// Stream `id` yields `count` items, which follow the header as `u32` length and bytes
    /// each.
    Items { id: u64, count: u32 },
    /// Task `id` wrote the bytes that follow the header to `fd` (1 or 2), which it captures;
    /// `cut` bytes more that it wrote there were dropped (over the cap).
    Output { id: u64, fd: u8, cut: u64 },
    /// Task `id` emitted a `log` record.
    Log { id: u64, record: LogRecord },
}

impl FromWorker {
    /// The message's name, for error messages (the message itself may be large).
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            FromWorker::Hello { .. } => "Hello",
            FromWorker::Refused { .. } => "Refused",
            FromWorker::Started { .. } => "Started",
            FromWorker::Skipped { .. } => "Skipped",
            FromWorker::Done { .. } => "Done",
            FromWorker::Panicked { .. } => "Panicked",
            FromWorker::Failed { .. } => "Failed",
            FromWorker::Progress { .. } => "Progress",
            FromWorker::Items { .. } => "Items",
            FromWorker::Output { .. } => "Output",
            FromWorker::Log { .. } => "Log",
        }
    }
}

/// A serialization failure inside the worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum CodecFailure {
    Encode(String),
    Decode(String),
}
