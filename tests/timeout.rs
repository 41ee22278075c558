//! A timeout clocks run time only, and stops the worker of a task that overruns it.

mod common;

use std::time::Duration;

use common::{eventually, is_our_child, sleep_ms, spin, Runtime};
use offload::{ProcessPool, TaskError, TaskStatus};

fn whoami() -> u32 {
    std::process::id()
}

async fn overrunning_task_times_out_and_its_worker_is_stopped() {
    let pool = ProcessPool::new(1).unwrap();
    let after = Duration::from_millis(200);
    let mut task = pool.task(spin).timeout(after).spawn(());
    eventually("the task runs", || task.status() == "running").await;
    let pid = task.pid().unwrap();
    match (&mut task).await {
        Err(TaskError::TimedOut { after: reported }) => assert_eq!(reported, after),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(task.status(), TaskStatus::Failed);
    assert!(task.duration().unwrap() >= after);
    assert!(task.info().error().unwrap().is_timed_out());
    eventually("the worker is gone", || !is_our_child(pid)).await;
    assert_ne!(
        pool.spawn(whoami, ()).await.unwrap(),
        pid,
        "a replacement serves"
    );
}

async fn time_in_the_queue_does_not_count() {
    let pool = ProcessPool::new(1).unwrap();
    let first = pool.spawn(sleep_ms, 400);
    eventually("the first task runs", || first.status() == "running").await;
    // Queued behind 400 ms of work, it runs for 100 ms: within its 300 ms timeout.
    let mut second = pool
        .task(sleep_ms)
        .timeout(Duration::from_millis(300))
        .spawn(100);
    let worker = first.await.unwrap();
    assert_eq!((&mut second).await.unwrap(), worker);
    let waited = second.ended_at().unwrap() - second.submitted_at();
    assert!(waited > Duration::from_millis(300), "{waited:?} in all");
}

async fn task_within_its_timeout_keeps_its_worker() {
    let pool = ProcessPool::new(1).unwrap();
    let pid = pool
        .task(whoami)
        .timeout(Duration::from_secs(30))
        .spawn(())
        .await
        .unwrap();
    assert_eq!(pool.spawn(whoami, ()).await.unwrap(), pid);
}

fn main() {
    let scenarios = scenarios![
        overrunning_task_times_out_and_its_worker_is_stopped,
        time_in_the_queue_does_not_count,
        task_within_its_timeout_keeps_its_worker,
    ];
    let runtimes = [Runtime::Smol, Runtime::TokioMultiThread];
    common::main_with(common::trials_under(&runtimes, &scenarios));
}
