//! A pool's life: shutdown drains, shutdown_now cancels, dropping never blocks nor leaks,
//! and workers never outlive their parent.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    alive, eventually, is_our_child, rendezvous, sleep_ms, spin, temp_dir, wait_for_file, Runtime,
};
use libtest_mimic::Trial;
use offload::{ProcessPool, TaskStatus};

/// The pids of both workers of a two-worker pool.
async fn worker_pids(pool: &ProcessPool) -> [u32; 2] {
    let dir = temp_dir("pids");
    let a = pool.spawn(rendezvous, (dir.clone(), 2));
    let b = pool.spawn(rendezvous, (dir.clone(), 2));
    let pids = [a.await.unwrap(), b.await.unwrap()];
    std::fs::remove_dir_all(dir).unwrap();
    pids
}

async fn shutdown_finishes_the_work_then_reaps_every_worker() {
    let pool = ProcessPool::new(2).unwrap();
    let workers = worker_pids(&pool).await;
    let tasks: Vec<_> = (0..4).map(|_| pool.spawn(sleep_ms, 50)).collect();
    pool.shutdown().await;
    for pid in workers {
        assert!(
            !is_our_child(pid),
            "worker {pid} is reaped when shutdown returns"
        );
    }
    for task in tasks {
        assert!(
            workers.contains(&task.await.unwrap()),
            "queued work finished"
        );
    }
    assert!(pool.is_closed());
    let refused = pool.spawn(sleep_ms, 1).await.unwrap_err();
    assert!(refused.is_pool_closed(), "{refused:?}");
    pool.clone().shutdown().await; // again, from another handle: returns at once
}

async fn shutdown_now_cancels_everything_and_reaps_every_worker() {
    let pool = ProcessPool::new(2).unwrap();
    let running: Vec<_> = (0..2).map(|_| pool.spawn(spin, ())).collect();
    eventually("both run", || {
        running.iter().all(|t| t.status() == "running")
    })
    .await;
    let queued: Vec<_> = (0..3).map(|_| pool.spawn(spin, ())).collect();
    let pids: Vec<u32> = running.iter().map(|t| t.pid().unwrap()).collect();
    pool.shutdown_now().await;
    for pid in pids {
        assert!(
            !is_our_child(pid),
            "worker {pid} is reaped when shutdown_now returns"
        );
    }
    for task in running.into_iter().chain(queued) {
        assert_eq!(task.status(), TaskStatus::Cancelled);
        assert!(task.await.unwrap_err().is_cancelled());
    }
}

async fn dropping_the_last_handle_does_not_wait_for_running_work() {
    let pool = ProcessPool::new(2).unwrap();
    let workers = worker_pids(&pool).await;
    let dir = temp_dir("drop");
    let go = dir.join("go");
    // This task can only finish after the pool handle is gone: if dropping waited for it,
    // the test would never reach the line that lets it finish.
    let task = pool.spawn(wait_for_file, go.clone());
    eventually("the task runs", || task.status() == "running").await;
    drop(pool);
    std::fs::write(&go, b"").unwrap();
    assert!(
        workers.contains(&task.await.unwrap()),
        "running work still finishes"
    );
    for pid in workers {
        eventually("the workers exit and are reaped", || !is_our_child(pid)).await;
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// `main` of the child in `workers_die_with_their_parent`: a parent with two busy workers,
/// which prints their pids and waits to be killed.
fn parent_of_two_busy_workers() -> ! {
    let pool = ProcessPool::new(2).unwrap();
    let tasks: Vec<_> = (0..2).map(|_| pool.spawn(spin, ())).collect();
    let deadline = std::time::Instant::now() + common::BOUND;
    while tasks.iter().any(|t| t.status() != "running") {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
    for task in &tasks {
        println!("{}", task.pid().unwrap());
    }
    loop {
        std::thread::park();
    }
}

fn workers_die_with_their_parent() {
    let mut parent = Command::new(std::env::current_exe().unwrap())
        .arg("--parent-of-two-busy-workers")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(parent.stdout.take().unwrap()).lines();
    let workers: Vec<u32> = (0..2)
        .map(|_| lines.next().unwrap().unwrap().parse().unwrap())
        .collect();
    assert!(workers.iter().all(|&pid| alive(pid)));
    parent.kill().unwrap(); // SIGKILL: the parent cannot clean anything up
    parent.wait().unwrap();
    // Busy workers do not read their stdin: only the parent-death signal stops them.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while workers.iter().any(|&pid| alive(pid)) {
        assert!(
            std::time::Instant::now() < deadline,
            "workers outlived their parent by 2 s"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--parent-of-two-busy-workers") {
        parent_of_two_busy_workers();
    }
    let scenarios = scenarios![
        shutdown_finishes_the_work_then_reaps_every_worker,
        shutdown_now_cancels_everything_and_reaps_every_worker,
        dropping_the_last_handle_does_not_wait_for_running_work,
    ];
    let runtimes = [Runtime::Smol, Runtime::TokioMultiThread];
    let mut trials = common::trials_under(&runtimes, &scenarios);
    trials.push(Trial::test("workers_die_with_their_parent", || {
        workers_die_with_their_parent();
        Ok(())
    }));
    common::main_with(trials);
}
