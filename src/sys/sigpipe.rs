//! `SIGPIPE` ignored, as Rust's runtime does before `main`, for a worker that serves before
//! `main` runs: a write to a closed pipe then fails with `EPIPE` instead of killing it.

/// Sets `SIGPIPE` to be ignored in this process.
pub(crate) fn ignore_sigpipe() {
    // SAFETY: `signal` with `SIG_IGN` installs no handler, so no code of ours can run in
    // signal context; `SIGPIPE` and `SIG_IGN` are valid arguments on every Unix, and the call
    // only changes this process's disposition of one signal, which is what Rust's own runtime
    // does (with the same call) before `main`. It runs before `main` in a worker, where no
    // other thread exists that could be installing a disposition at the same time.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}
