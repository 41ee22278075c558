//! The worker process: recognising a worker (before `main` by its environment marker, or in
//! `init` by `--worker`), taking over the protocol's descriptors, and serving tasks. Nothing
//! here knows the parent side.

mod inbox;
mod link;
mod serve;

use std::sync::atomic::{AtomicBool, Ordering};

use crate::protocol::{WORKER_ENV, WORKER_FLAG};

/// Set once this process was taken over as a worker.
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
    if !started_as_worker() || SERVING.load(Ordering::Relaxed) {
        return;
    }
    serve_and_exit();
}

/// Serves the parent, then exits the process with the outcome.
fn serve_and_exit() -> ! {
    SERVING.store(true, Ordering::Relaxed);
    // Not for the processes this worker's tasks start. `remove_var` is safe here: before
    // `main` no other thread exists, and in `init` (first in `main`) none of ours does yet.
    std::env::remove_var(WORKER_ENV);
    let code = match serve::serve() {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("offload worker {}: {err}", std::process::id());
            2
        }
    };
    std::process::exit(code);
}

#[cfg(feature = "before-main")]
ctor::declarative::ctor! {
    // `unsafe` acknowledges that this runs before `main`, where Rust's runtime set-up has
    // not happened: it only reads the environment unless the marker is there, and a worker
    // then does what `main` would have set up itself (`SIGPIPE` ignored), never lets a panic
    // escape, and exits without returning to the program.
    #[ctor(unsafe)]
    fn serve_before_main() {
        before_main();
    }
}

/// A process started by a pool serves before `main` runs (so `main`, its runtime and its
/// argument parser never run in a worker); any other process returns at once.
#[cfg(feature = "before-main")]
fn before_main() {
    if std::env::var_os(WORKER_ENV).is_none() {
        return;
    }
    crate::sys::sigpipe::ignore_sigpipe();
    // Task panics are caught where tasks run; this catches the rest, which must not unwind
    // out of the constructor.
    if std::panic::catch_unwind(|| serve_and_exit()).is_err() {
        std::process::exit(2);
    }
}
