//! What crosses the pipes between the parent and a worker: frames, the messages they carry,
//! the entries that name functions, the build identity both sides must share, and the
//! encoding of `map` chunks.

pub(crate) mod build;
pub(crate) mod chunk;
pub(crate) mod codec;
pub(crate) mod entry;
pub(crate) mod event;
pub(crate) mod frame;
mod message;

pub use frame::MAX_FRAME_LEN;

/// The argument that makes a process an offload worker (as its only argument).
pub(crate) const WORKER_FLAG: &str = "--worker";

/// The environment variable every launcher sets on a worker, recognised before `main` runs
/// (the `before-main` feature); the worker removes it from its environment at once, so that
/// the processes its tasks start do not inherit it.
pub(crate) const WORKER_ENV: &str = "OFFLOAD_WORKER";
/// The most bytes of one task's captured fd 1, and as many of its fd 2, that reach the
/// parent; the rest is counted, not sent.
pub(crate) const CAPTURE_LIMIT: usize = 1 << 20;

pub(crate) use message::{CodecFailure, FromWorker, Run, ToWorker, RUN_CAPTURE, RUN_ITEM_PROGRESS};
