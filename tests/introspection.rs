//! `stats()` and `tasks()` tell the truth about a pool.

mod common;

use common::{eventually, sleep_ms, spin, Runtime};
use offload::{ProcessPool, TaskStatus};

fn boom() -> u32 {
    panic!("boom")
}

fn exit_3() -> u32 {
    std::process::exit(3)
}

async fn stats_and_tasks_follow_the_work() {
    let pool = ProcessPool::new(2).unwrap();
    eventually("both workers are up", || pool.stats().workers == 2).await;
    let fresh = pool.stats();
    assert_eq!(
        (fresh.workers, fresh.busy, fresh.idle, fresh.queued),
        (2, 0, 2, 0)
    );
    assert_eq!(
        (
            fresh.completed,
            fresh.failed,
            fresh.cancelled,
            fresh.replaced
        ),
        (0, 0, 0, 0)
    );

    let running: Vec<_> = (0..2).map(|_| pool.spawn(spin, ())).collect();
    let queued = pool.spawn(sleep_ms, 1);
    eventually("both workers are busy", || pool.stats().busy == 2).await;
    let stats = pool.stats();
    assert_eq!(
        (stats.workers, stats.busy, stats.idle, stats.queued),
        (2, 2, 0, 1)
    );
    let tasks = pool.tasks();
    assert_eq!(tasks.len(), 3);
    assert_eq!(tasks[0].id(), running[0].id(), "in spawning order");
    assert_eq!(tasks[0].status(), TaskStatus::Running);
    assert!(tasks[0].pid().is_some());
    assert_eq!(tasks[2].id(), queued.id());
    assert_eq!(
        (tasks[2].status(), tasks[2].pid()),
        (TaskStatus::Pending, None)
    );
    assert_eq!(tasks[2].func_name(), "sleep_ms");

    for task in &running {
        assert!(task.cancel_and_wait().await);
    }
    queued.await.unwrap();
    assert!(pool.spawn(boom, ()).await.is_err());
    assert!(pool.spawn(exit_3, ()).await.is_err());
    eventually("the three replacements serve", || {
        let stats = pool.stats();
        stats.replaced == 3 && stats.workers == 2
    })
    .await;
    let stats = pool.stats();
    assert_eq!(stats.completed, 1);
    assert_eq!(stats.failed, 2);
    assert_eq!(stats.cancelled, 2);
    assert_eq!(
        stats.replaced, 3,
        "two cancelled workers and one that exited"
    );
    assert_eq!((stats.busy, stats.queued), (0, 0));
    assert!(pool.tasks().is_empty());
}

/// Becomes another program: the protocol pipes close (close-on-exec), the process lives on.
fn become_sleep() -> u32 {
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new("sleep").arg("30").exec();
    panic!("exec failed: {err}")
}

async fn a_lost_worker_stops_counting_at_once() {
    let pool = ProcessPool::new(1).unwrap();
    eventually("the worker is up", || pool.stats().workers == 1).await;
    let task = pool.spawn(become_sleep, ());
    // The worker's output ends but its process runs on for the 2 s grace before it is
    // killed; it must not be counted as serving meanwhile.
    eventually("the lost worker is no longer counted", || {
        pool.stats().workers == 0
    })
    .await;
    assert_eq!(task.status(), TaskStatus::Running, "still being buried");
    let err = task.await.unwrap_err();
    assert!(err.is_protocol(), "{err:?}");
    eventually("the replacement serves", || pool.stats().workers == 1).await;
}

fn main() {
    let scenarios = scenarios![
        stats_and_tasks_follow_the_work,
        a_lost_worker_stops_counting_at_once
    ];
    common::main_with(common::trials_under(
        &[Runtime::Smol, Runtime::TokioMultiThread],
        &scenarios,
    ));
}
