//! Worker hygiene against leaks in user code: workers retire after `max_tasks_per_worker`
//! tasks, and `memory_limit` caps each worker's address space; the library leaves the
//! parent's signal handling alone.

mod common;

use common::{temp_dir, Runtime};
use offload::{ProcessPool, TaskError};

fn whoami() -> u32 {
    std::process::id()
}

/// Allocates and touches `bytes`; returns the pid.
fn allocate(bytes: usize) -> u32 {
    let block = vec![1u8; bytes];
    assert_eq!(block[bytes / 2], 1);
    std::process::id()
}

async fn workers_retire_after_their_share_of_tasks() {
    let pool = ProcessPool::builder()
        .workers(1)
        .max_tasks_per_worker(3)
        .build()
        .unwrap();
    let mut pids = Vec::new();
    for _ in 0..7 {
        pids.push(pool.spawn(whoami, ()).await.unwrap());
    }
    assert!(pids[0] == pids[1] && pids[1] == pids[2]);
    assert!(pids[3] == pids[4] && pids[4] == pids[5]);
    assert!(pids[2] != pids[3] && pids[5] != pids[6]);
    assert_eq!(pool.stats().replaced, 2);
    assert!(ProcessPool::builder()
        .max_tasks_per_worker(0)
        .build()
        .is_err());
}

async fn a_task_over_the_memory_limit_fails_alone() {
    let pool = ProcessPool::builder()
        .workers(2)
        .memory_limit(256 << 20)
        .build()
        .unwrap();
    let small = pool.spawn(allocate, 16 << 20).await.unwrap();
    let mut greedy = pool.spawn(allocate, 1 << 30);
    match (&mut greedy).await {
        Err(TaskError::MemoryLimit { pid, limit }) => {
            assert_eq!(limit, 256 << 20);
            assert_eq!(Some(pid), greedy.pid());
        }
        other => panic!("expected the memory limit, got {other:?}"),
    }
    let err = greedy.info().error().unwrap().to_string();
    assert!(err.contains("memory limit of 268435456 bytes"), "{err}");
    // Other deaths are still told apart.
    let aborted = pool
        .spawn(|(): ()| -> u32 { std::process::abort() }, ())
        .await;
    assert!(
        matches!(
            aborted,
            Err(TaskError::WorkerDied {
                signal: Some(6),
                ..
            })
        ),
        "{aborted:?}"
    );
    // The pool serves at full size.
    let dir = temp_dir("limit");
    let a = pool.spawn(common::rendezvous, (dir.clone(), 2));
    let b = pool.spawn(common::rendezvous, (dir.clone(), 2));
    assert_ne!(a.await.unwrap(), b.await.unwrap());
    let _ = small;
    std::fs::remove_dir_all(dir).unwrap();
}

/// The signals this process catches, from `/proc/self/status`.
fn caught_signals() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .unwrap();
    u64::from_str_radix(mask.trim(), 16).unwrap()
}

fn the_parents_signal_handling_is_untouched() {
    let before = caught_signals();
    let pool = ProcessPool::new(1).unwrap();
    pool.spawn(whoami, ()).wait().unwrap();
    futures_lite::future::block_on(pool.shutdown());
    let after = caught_signals();
    let sigint = 1 << (2 - 1);
    assert_eq!(
        after & sigint,
        before & sigint,
        "SIGINT handling is the parent's"
    );
    assert_eq!(after, before, "no signal handler was installed");
}

fn main() {
    let scenarios = scenarios![
        workers_retire_after_their_share_of_tasks,
        a_task_over_the_memory_limit_fails_alone,
    ];
    let mut trials = common::trials_under(&[Runtime::Smol, Runtime::TokioMultiThread], &scenarios);
    trials.push(common::trial(
        "the_parents_signal_handling_is_untouched",
        the_parents_signal_handling_is_untouched,
    ));
    common::main_with(trials);
}
