//! Cancel, timeout, `shutdown_now` and the crash of a worker stop its whole process group:
//! a process the task started (`sleep 1000` here) is gone with it.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{alive, read_pid, temp_dir, Runtime};
use offload::ProcessPool;

/// How long a task's child may outlive the stop of its worker.
const GONE_WITHIN: Duration = Duration::from_secs(1);

/// Starts `sleep 1000` (in the worker's group, as any `Command` does), writes its pid to
/// `pid_file`, then `and_then`.
fn start_sleep(pid_file: &Path) {
    let child = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    let tmp = pid_file.with_extension("tmp");
    std::fs::write(&tmp, child.id().to_string()).unwrap();
    std::fs::rename(tmp, pid_file).unwrap();
    std::mem::forget(child);
}

fn sleep_then_wait(pid_file: PathBuf) -> u32 {
    start_sleep(&pid_file);
    std::thread::sleep(Duration::from_secs(1000));
    0
}

fn sleep_then_abort(pid_file: PathBuf) -> u32 {
    start_sleep(&pid_file);
    std::process::abort()
}

/// Waits for the task's `sleep` to be started and returns its pid.
async fn started_sleep(pid_file: &Path) -> u32 {
    common::eventually("the task started its child", || pid_file.exists()).await;
    let pid = read_pid(pid_file);
    assert!(alive(pid), "the task's child runs");
    pid
}

/// Asserts that `pid` is gone (or a zombie) within [`GONE_WITHIN`] of `since`.
async fn gone_soon(pid: u32, since: Instant, after: &str) {
    while alive(pid) {
        assert!(
            since.elapsed() < GONE_WITHIN,
            "the task's child {pid} still runs {GONE_WITHIN:?} after {after}"
        );
        async_io::Timer::after(Duration::from_millis(2)).await;
    }
}

async fn a_cancelled_task_takes_its_child_process_with_it() {
    let pool = ProcessPool::new(1).unwrap();
    let file = temp_dir("tree-cancel").join("pid");
    let mut task = pool.spawn(sleep_then_wait, file.clone());
    let sleep = started_sleep(&file).await;
    let cancelled = Instant::now();
    assert!(task.cancel());
    gone_soon(sleep, cancelled, "the cancel").await;
    assert!((&mut task).await.unwrap_err().is_cancelled());
    // The replacement serves.
    assert_eq!(pool.spawn(|x: u32| x + 1, 1).await.unwrap(), 2);
}

async fn a_timed_out_task_takes_its_child_process_with_it() {
    let pool = ProcessPool::new(1).unwrap();
    let file = temp_dir("tree-timeout").join("pid");
    let task = pool
        .task(sleep_then_wait)
        .timeout(Duration::from_secs(2))
        .spawn(file.clone());
    let sleep = started_sleep(&file).await;
    let err = task.await.unwrap_err();
    assert!(err.is_timed_out(), "{err}");
    gone_soon(sleep, Instant::now(), "the timeout").await;
}

async fn shutdown_now_takes_the_child_processes_of_every_task() {
    let pool = ProcessPool::new(2).unwrap();
    let dir = temp_dir("tree-shutdown");
    let files = [dir.join("a"), dir.join("b")];
    let tasks: Vec<_> = files
        .iter()
        .map(|f| pool.spawn(sleep_then_wait, f.clone()))
        .collect();
    let mut sleeps = Vec::new();
    for file in &files {
        sleeps.push(started_sleep(file).await);
    }
    let stopped = Instant::now();
    pool.shutdown_now().await;
    for sleep in sleeps {
        gone_soon(sleep, stopped, "shutdown_now").await;
    }
    for task in tasks {
        assert!(task.await.is_err());
    }
}

async fn a_crashed_worker_takes_the_child_processes_of_its_task() {
    let pool = ProcessPool::new(1).unwrap();
    let file = temp_dir("tree-crash").join("pid");
    let err = pool
        .spawn(sleep_then_abort, file.clone())
        .await
        .unwrap_err();
    assert!(err.is_worker_died(), "{err}");
    let sleep = read_pid(&file);
    gone_soon(sleep, Instant::now(), "the crash was reported").await;
}

fn main() {
    let scenarios = scenarios![
        a_cancelled_task_takes_its_child_process_with_it,
        a_timed_out_task_takes_its_child_process_with_it,
        shutdown_now_takes_the_child_processes_of_every_task,
        a_crashed_worker_takes_the_child_processes_of_its_task,
    ];
    let runtimes = [Runtime::Smol, Runtime::TokioMultiThread];
    common::main_with(common::trials_under(&runtimes, &scenarios));
}
