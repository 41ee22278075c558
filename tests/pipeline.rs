//! Pipelined dispatch keeps every lifecycle rule: a task sent ahead to a busy worker stays
//! queued until that worker starts it, is withdrawn when it is cancelled (and never runs),
//! goes to another worker when the one it waits on dies (and runs once), and leaves a slow
//! task for a worker that is free.
//!
//! Each scenario first makes sure a task really is out ahead (`stats().sent_ahead`), so each
//! fails on a look-ahead that writes jobs behind a running one without these rules.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{bounded, eventually, temp_dir, touch, wait_for_file, Runtime};
use offload::{ProcessPool, TaskStatus};

fn whoami() -> u32 {
    std::process::id()
}

/// Sleeps `us` microseconds: quick enough for its worker to pipe the next task.
fn nap_us(us: u64) -> u32 {
    std::thread::sleep(Duration::from_micros(us));
    std::process::id()
}

/// Waits for `path`, then the worker exits with code 3.
fn exit_once_file_exists(path: PathBuf) -> u32 {
    wait_for_file(path);
    std::process::exit(3)
}

/// Adds a line to `path`; returns the pid that did.
fn count_run(path: PathBuf) -> u32 {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    writeln!(file, "ran").unwrap();
    std::process::id()
}

/// Holds a worker with a task that waits for `dir/hold` until `spawn` has queued its tasks,
/// then lets it go: quick tasks run next, then the first of them, and the others go ahead
/// behind it. (A worker pipes the task after one that was quick, under 1 ms as the parent
/// sees it; on a loaded machine one of a few 50 µs tasks is.) Returns what `spawn` returned.
async fn queued_behind_a_quick_task<T>(
    pool: &ProcessPool,
    dir: &Path,
    spawn: impl FnOnce() -> T,
) -> T {
    let hold = dir.join("hold");
    let holder = pool.spawn(wait_for_file, hold.clone());
    eventually("the holder runs", || holder.status() == TaskStatus::Running).await;
    let quick: Vec<_> = (0..5).map(|_| pool.spawn(nap_us, 50)).collect();
    let tasks = spawn();
    std::fs::write(&hold, b"").unwrap();
    bounded(holder).await.unwrap();
    for task in quick {
        bounded(task).await.unwrap();
    }
    tasks
}

/// Waits until `n` tasks are out ahead.
async fn until_sent_ahead(pool: &ProcessPool, n: usize) {
    eventually(&format!("{n} tasks are sent ahead"), || {
        pool.stats().sent_ahead == n
    })
    .await;
}

async fn a_task_sent_ahead_is_queued_until_its_worker_starts_it() {
    let pool = ProcessPool::new(1).unwrap();
    let dir = temp_dir("pipeline-queued");
    let go = dir.join("go");
    let (first, behind) = queued_behind_a_quick_task(&pool, &dir, || {
        (
            pool.spawn(wait_for_file, go.clone()),
            pool.spawn(whoami, ()),
        )
    })
    .await;
    until_sent_ahead(&pool, 1).await;
    assert_eq!(first.status(), TaskStatus::Running);
    assert_eq!((behind.status(), behind.pid()), (TaskStatus::Pending, None));
    assert_eq!(behind.started_at(), None);
    assert_eq!(pool.stats().queued, 1, "a task sent ahead is still queued");
    std::fs::write(&go, b"").unwrap();
    let worker = bounded(first).await.unwrap();
    assert_eq!(bounded(behind).await.unwrap(), worker);
    assert_eq!(pool.stats().sent_ahead, 0);
}

async fn a_task_sent_ahead_reports_its_own_start_and_duration() {
    let pool = ProcessPool::new(1).unwrap();
    let dir = temp_dir("pipeline-duration");
    let go = dir.join("go");
    let (first, mut behind) = queued_behind_a_quick_task(&pool, &dir, || {
        (
            pool.spawn(wait_for_file, go.clone()),
            pool.spawn(nap_us, 1000),
        )
    })
    .await;
    until_sent_ahead(&pool, 1).await;
    let held = Instant::now();
    eventually("the first task is held for 100 ms", || {
        held.elapsed() >= Duration::from_millis(100)
    })
    .await;
    std::fs::write(&go, b"").unwrap();
    let worker = bounded(first).await.unwrap();
    assert_eq!(bounded(&mut behind).await.unwrap(), worker);
    let duration = behind.duration().expect("it ran");
    assert!(
        duration < Duration::from_millis(100),
        "its duration ({duration:?}) counts only its own run, not the 100 ms it waited ahead"
    );
    assert_eq!(behind.pid(), Some(worker));
}

async fn a_cancelled_task_sent_ahead_never_runs() {
    let pool = ProcessPool::new(1).unwrap();
    let dir = temp_dir("pipeline-cancel");
    let (go, marker) = (dir.join("go"), dir.join("ran"));
    let (first, behind) = queued_behind_a_quick_task(&pool, &dir, || {
        (
            pool.spawn(wait_for_file, go.clone()),
            pool.spawn(touch, marker.clone()),
        )
    })
    .await;
    until_sent_ahead(&pool, 1).await;
    assert!(behind.cancel());
    until_sent_ahead(&pool, 0).await; // withdrawn
    std::fs::write(&go, b"").unwrap();
    let worker = bounded(first).await.unwrap();
    // The worker served on, past the point where the withdrawn task would have run.
    assert_eq!(bounded(pool.spawn(whoami, ())).await.unwrap(), worker);
    assert!(!marker.exists(), "a task cancelled while queued ran");
    assert!(bounded(behind).await.unwrap_err().is_cancelled());
    assert_eq!(
        pool.stats().replaced,
        0,
        "the worker was not stopped for it"
    );
}

async fn a_task_behind_a_crash_runs_once_on_another_worker() {
    let pool = ProcessPool::new(1).unwrap();
    let dir = temp_dir("pipeline-crash");
    let (go, runs) = (dir.join("go"), dir.join("runs"));
    let (crashing, behind) = queued_behind_a_quick_task(&pool, &dir, || {
        let crashing = pool.spawn(exit_once_file_exists, go.clone());
        (crashing, pool.spawn(count_run, runs.clone()))
    })
    .await;
    until_sent_ahead(&pool, 1).await;
    let crashed = crashing.pid().expect("it runs");
    std::fs::write(&go, b"").unwrap();
    assert!(bounded(crashing).await.unwrap_err().is_worker_died());
    let ran_on = bounded(behind)
        .await
        .expect("a crash fails only its own task");
    assert_ne!(ran_on, crashed, "it ran on the replacement");
    let lines = std::fs::read_to_string(&runs).unwrap();
    assert_eq!(lines.lines().count(), 1, "it ran exactly once");
    assert_eq!(pool.stats().sent_ahead, 0);
}

async fn cancelling_the_task_in_front_leaves_the_ones_behind_alone() {
    let pool = ProcessPool::new(1).unwrap();
    let dir = temp_dir("pipeline-front");
    let (never, runs) = (dir.join("never"), dir.join("runs"));
    let (front, behind) = queued_behind_a_quick_task(&pool, &dir, || {
        let front = pool.spawn(wait_for_file, never.clone());
        (front, pool.spawn(count_run, runs.clone()))
    })
    .await;
    until_sent_ahead(&pool, 1).await;
    let stopped = front.pid().expect("it runs");
    assert!(front.cancel_and_wait().await);
    let ran_on = bounded(behind).await.expect("the cancel was not its");
    assert_ne!(ran_on, stopped, "it ran on the replacement");
    let lines = std::fs::read_to_string(&runs).unwrap();
    assert_eq!(lines.lines().count(), 1, "it ran exactly once");
}

async fn tasks_behind_a_slow_one_go_to_a_worker_that_is_free() {
    let pool = ProcessPool::new(2).unwrap();
    let dir = temp_dir("pipeline-slow");
    let (go_other, go_slow) = (dir.join("other"), dir.join("slow"));
    let other = pool.spawn(wait_for_file, go_other.clone());
    eventually("the other worker is busy", || {
        other.status() == TaskStatus::Running
    })
    .await;
    let (slow, behind) = queued_behind_a_quick_task(&pool, &dir, || {
        (
            pool.spawn(wait_for_file, go_slow.clone()),
            pool.spawn(whoami, ()),
        )
    })
    .await;
    until_sent_ahead(&pool, 1).await;
    // The other worker comes free while the slow task still runs.
    std::fs::write(&go_other, b"").unwrap();
    let free = bounded(other).await.unwrap();
    assert_eq!(bounded(behind).await.unwrap(), free);
    assert_eq!(
        slow.status(),
        TaskStatus::Running,
        "it did not wait for the slow task"
    );
    std::fs::write(&go_slow, b"").unwrap();
    bounded(slow).await.unwrap();
}

fn main() {
    let scenarios = scenarios![
        a_task_sent_ahead_is_queued_until_its_worker_starts_it,
        a_task_sent_ahead_reports_its_own_start_and_duration,
        a_cancelled_task_sent_ahead_never_runs,
        a_task_behind_a_crash_runs_once_on_another_worker,
        cancelling_the_task_in_front_leaves_the_ones_behind_alone,
        tasks_behind_a_slow_one_go_to_a_worker_that_is_free,
    ];
    let runtimes = [Runtime::Smol, Runtime::TokioMultiThread];
    common::main_with(common::trials_under(&runtimes, &scenarios));
}
