//! 100,000 tasks queued at once cost no descriptors and no threads, and all run.
//!
//! One test in its own binary: descriptors and threads are process-wide.

mod common;

use std::path::PathBuf;

use common::{temp_dir, wait_for_file, Runtime};
use offload::ProcessPool;

fn whoami() -> u32 {
    std::process::id()
}

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

/// The names of this process's threads, sorted.
fn threads() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect();
    names.sort();
    names
}

fn fds() -> usize {
    count("/proc/self/fd")
}

async fn a_hundred_thousand_queued_tasks_cost_no_descriptors_or_threads() {
    let pool = ProcessPool::new(1).unwrap();
    let dir = temp_dir("queued");
    let go: PathBuf = dir.join("go");
    let blocker = pool.spawn(wait_for_file, go.clone());
    common::eventually("the blocker runs", || blocker.status() == "running").await;
    let (fds_before, threads_before) = (fds(), threads());
    let tasks: Vec<_> = (0..100_000u64).map(|_| pool.spawn(whoami, ())).collect();
    assert_eq!(pool.stats().queued, 100_000);
    assert!(fds() <= fds_before, "queued tasks hold no descriptors");
    let threads_after = threads();
    assert!(
        threads_after.len() <= threads_before.len(),
        "queued tasks hold no threads: {threads_before:?} before, {threads_after:?} after"
    );
    std::fs::write(&go, b"").unwrap();
    let worker = blocker.await.unwrap();
    for task in tasks {
        assert_eq!(task.await.unwrap(), worker);
    }
    std::fs::remove_dir_all(dir).unwrap();
}

fn main() {
    common::main_with(vec![common::trial(
        "a_hundred_thousand_queued_tasks_cost_no_descriptors_or_threads",
        || Runtime::Smol.block_on(a_hundred_thousand_queued_tasks_cost_no_descriptors_or_threads()),
    )]);
}
