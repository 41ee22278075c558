//! The worker process: recognising `--worker`, taking over the protocol's descriptors, and
//! serving tasks. Nothing here knows the parent side.

mod link;
mod serve;

use std::sync::atomic::{AtomicBool, Ordering};

use crate::protocol::WORKER_FLAG;

/// Set once `init` took over this process as a worker.
static SERVING: AtomicBool = AtomicBool::new(false);

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
    let code = match serve::serve() {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("offload worker {}: {err}", std::process::id());
            2
        }
    };
    std::process::exit(code);
}
