//! The messages between the parent and a worker: the headers of frames.

use serde::{Deserialize, Serialize};

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
    },
    /// Run the function at `entry` on the arguments that follow the header.
    Run { id: u64, entry: u64 },
    /// Exit after the current frame.
    Shutdown,
    /// Stop at once (a remote worker's control thread): `SIGTERM` to the worker's process
    /// group, `SIGKILL` after `grace_ms` if it is still alive.
    Stop { grace_ms: u64 },
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
    },
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
