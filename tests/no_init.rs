//! A program that forgets `offload::init()`: its workers cannot serve, tasks fail with a
//! message that says why instead of hanging, and the worker, running `main` by mistake, is
//! refused pools of its own (no fork bomb).
//!
//! This binary's `main` deliberately calls `init()` late: when started as a worker it reports
//! what building a pool gave it, through its exit code, and exits.

mod common;

use common::{children, trial};
use offload::{Error, ProcessPool, TaskError};

/// Exit code of a worker that was refused a pool with `Error::NotInitialized`.
const REFUSED: i32 = 42;

fn whoami() -> u32 {
    std::process::id()
}

fn a_missing_init_fails_tasks_with_a_clear_error() {
    let pool = ProcessPool::new(1).unwrap();
    let err = pool.spawn(whoami, ()).wait().unwrap_err();
    match &err {
        TaskError::Spawn(io) => {
            let msg = io.to_string();
            assert!(msg.contains("offload::init()"), "{msg}");
            assert!(msg.contains(&format!("exit status: {REFUSED}")), "{msg}");
        }
        other => panic!("expected a spawn error, got {other:?}"),
    }
    // The next task fails the same way, and no process multiplied meanwhile.
    assert!(pool.spawn(whoami, ()).wait().unwrap_err().is_spawn());
    assert!(children().len() <= 2, "{:?}", children());
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--worker") {
        // `main` of a program that forgot `init()`, running in a worker.
        let code = match ProcessPool::new(1) {
            Err(Error::NotInitialized) => REFUSED,
            Err(_) => 1,
            Ok(_) => 0,
        };
        std::process::exit(code);
    }
    common::main_with(vec![trial(
        "a_missing_init_fails_tasks_with_a_clear_error",
        a_missing_init_fails_tasks_with_a_clear_error,
    )]);
}
