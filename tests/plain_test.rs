//! A crate's plain `#[test]` functions, under libtest's own harness, build pools and run tasks:
//! the worker (this test binary, started with `--worker`, which libtest's argument parser would
//! refuse) is recognised and served before libtest's `main` runs. Nothing calls
//! `offload::init()`.

use offload::ProcessPool;

fn double(x: u64) -> u64 {
    x * 2
}

fn worker_pid() -> u32 {
    std::process::id()
}

#[test]
fn a_plain_test_runs_tasks_in_a_worker() {
    let pool = ProcessPool::new(1).unwrap();
    assert_eq!(pool.spawn(double, 21).wait().unwrap(), 42);
    let pid = pool.spawn(worker_pid, ()).wait().unwrap();
    assert_ne!(pid, std::process::id());
}

#[test]
fn the_worker_marker_is_not_inherited_by_what_a_task_starts() {
    fn marker_seen_by_a_child() -> String {
        let out = std::process::Command::new("sh")
            .args(["-c", "echo \"${OFFLOAD_WORKER-unset}\""])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
    let pool = ProcessPool::new(1).unwrap();
    let seen = pool.spawn(marker_seen_by_a_child, ()).wait().unwrap();
    assert_eq!(seen, "unset");
}
