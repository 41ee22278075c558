//! Panics as data: a caught panic becomes its message and, inside a worker's task, its
//! location.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};

thread_local! {
    /// Whether this thread runs tasks, where the hook records the locations of panics instead
    /// of printing them (set once, so that [`catch`] costs nothing when nothing panics).
    static RUNS_TASKS: Cell<bool> = const { Cell::new(false) };
    /// Where the last panic on a task thread happened, once the hook is installed.
    static LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// A panic caught by [`catch`].
pub(crate) struct Panic {
    pub(crate) message: String,
    /// `file:line:column`, on the thread that [`record_locations`] was called on.
    pub(crate) location: Option<String>,
}

/// Runs `call`, turning a panic into a [`Panic`].
pub(crate) fn catch<R>(call: impl FnOnce() -> R) -> Result<R, Panic> {
    panic::catch_unwind(AssertUnwindSafe(call)).map_err(|payload| Panic {
        message: panic_message(&*payload),
        location: LOCATION.with(|slot| slot.borrow_mut().take()),
    })
}

/// Makes the current thread the one that runs tasks, and installs a panic hook that records,
/// instead of printing, where panics on it happen (the worker reports them to its parent);
/// panics on other threads keep the usual report.
pub(crate) fn record_locations() {
    RUNS_TASKS.with(|flag| flag.set(true));
    let previous = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        if RUNS_TASKS.with(Cell::get) {
            let location = info.location().map(|l| l.to_string());
            LOCATION.with(|slot| *slot.borrow_mut() = location);
        } else {
            previous(info);
        }
    }));
}

/// The message of a panic payload (`"Box<dyn Any>"` when it is not a string).
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any>".to_string()
    }
}
