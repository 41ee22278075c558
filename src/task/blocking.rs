//! Blocking the calling thread on a task, for the synchronous twins (`wait`, `map_blocking`,
//! `shutdown_blocking`), with a guard against the one thread where that would never end.

use std::cell::Cell;
use std::future::Future;

thread_local! {
    /// Whether this thread is a pool's driver thread.
    static ON_DRIVER: Cell<bool> = const { Cell::new(false) };
}

/// Marks the current thread as a pool's driver thread, where [`block_on`] refuses to block.
pub(crate) fn mark_driver_thread() {
    ON_DRIVER.with(|flag| flag.set(true));
}

/// Blocks the current thread on `future`.
///
/// # Panics
///
/// On a pool's driver thread (in a task callback), where it would wait for itself forever.
pub(crate) fn block_on<T>(what: &str, future: impl Future<Output = T>) -> T {
    assert!(
        !ON_DRIVER.with(Cell::get),
        "{what} called on a pool's own thread (from a task callback), where it would wait forever"
    );
    futures_lite::future::block_on(future)
}
