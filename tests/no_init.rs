//! A program that forgets `offload::init()`. With the `before-main` feature (the default) its
//! workers serve anyway: they are recognised before `main` runs. Without it (`cargo test
//! --no-default-features --test no_init`, which `.ci/run` runs), its workers cannot serve,
//! tasks fail with a message that says why instead of hanging, and the worker, running `main`
//! by mistake, is refused pools of its own (no fork bomb).
//!
//! This binary's `main` deliberately calls `init()` late: when started as a worker it reports
//! what building a pool gave it, through its exit code, and exits.

mod common;

use common::trial;
use offload::{Error, ProcessPool};

/// Exit code of a worker that was refused a pool with `Error::NotInitialized`.
const REFUSED: i32 = 42;

fn whoami() -> u32 {
    std::process::id()
}

#[cfg(feature = "before-main")]
fn a_missing_init_does_not_matter_before_main() {
    let pool = ProcessPool::new(1).unwrap();
    let pid = pool.spawn(whoami, ()).wait().unwrap();
    assert_ne!(pid, std::process::id(), "the task ran in a worker");
    assert!(common::alive(pid), "the worker serves on");
}

#[cfg(not(feature = "before-main"))]
fn a_missing_init_fails_tasks_with_a_clear_error() {
    let pool = ProcessPool::new(1).unwrap();
    let err = pool.spawn(whoami, ()).wait().unwrap_err();
    match &err {
        offload::TaskError::Spawn(io) => {
            let msg = io.to_string();
            assert!(msg.contains("offload::init()"), "{msg}");
            assert!(msg.contains(&format!("exit status: {REFUSED}")), "{msg}");
        }
        other => panic!("expected a spawn error, got {other:?}"),
    }
    // The next task fails the same way, and no process multiplied meanwhile.
    assert!(pool.spawn(whoami, ()).wait().unwrap_err().is_spawn());
    assert!(common::children().len() <= 2, "{:?}", common::children());
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
    #[cfg(feature = "before-main")]
    let trial = trial(
        "a_missing_init_does_not_matter_before_main",
        a_missing_init_does_not_matter_before_main,
    );
    #[cfg(not(feature = "before-main"))]
    let trial = trial(
        "a_missing_init_fails_tasks_with_a_clear_error",
        a_missing_init_fails_tasks_with_a_clear_error,
    );
    common::main_with(vec![trial]);
}
