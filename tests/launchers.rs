//! Workers started through a command (`Launcher::command`) keep every rule of a local worker:
//! results and truthful metadata (the worker's own pid and host), cancel and timeout that
//! stop the worker *and the processes its task started* through its control thread, a crash
//! that fails one task, a launcher killed from outside that leaves nothing running, and the
//! build proven by content (a copy of this program serves, a different build is refused).
//!
//! Two local stand-ins for remote launchers: `sh -c '"$0" "$@"'`, which keeps a shell between
//! the parent and the worker, and a Python relay that forwards stdin and stdout through pipes
//! of its own, as ssh and srun do, so that killing it closes the worker's input.

mod common;

use std::time::Duration;

use common::{
    alive, another_build, children, eventually, hostname, read_pid, sleeper_then_spin, temp_dir,
    Runtime,
};
use offload::{Launcher, ProcessPool, TaskError};

/// A shell between the parent and the worker; the worker is its child, not ours.
fn shell() -> Launcher {
    Launcher::command("sh").args(["-c", "\"$0\" \"$@\""])
}

/// A relay with pipes of its own, as ssh and srun have.
fn relay() -> Launcher {
    const RELAY: &str = r#"
import os, subprocess, sys, threading
worker = subprocess.Popen(sys.argv[1:], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
def upstream():
    while True:
        data = os.read(0, 1 << 16)
        if not data:
            break
        worker.stdin.write(data)
    worker.stdin.close()
threading.Thread(target=upstream, daemon=True).start()
while True:
    data = os.read(worker.stdout.fileno(), 1 << 16)
    if not data:
        break
    os.write(1, data)
sys.exit(worker.wait())
"#;
    Launcher::command("python3").args(["-c", RELAY])
}

fn pool(workers: usize, launcher: Launcher) -> ProcessPool {
    ProcessPool::builder()
        .workers(workers)
        .launcher(launcher)
        .build()
        .unwrap()
}

fn whoami() -> (u32, u32) {
    let ppid = std::os::unix::process::parent_id();
    (std::process::id(), ppid)
}

fn add(a: u64, b: u64) -> u64 {
    a + b
}

fn spin() -> u32 {
    common::spin()
}

fn abort() -> u32 {
    std::process::abort()
}

/// Whether the task runs on the process's main thread (whose thread id is the pid; a worker
/// that serves before `main` has no thread named "main").
fn on_main_thread(n: u64) -> (u64, bool) {
    let main = rustix::thread::gettid() == rustix::process::getpid();
    (n, main)
}

/// The input goes back and forth between a remote worker's two threads at every job: jobs
/// back to back all run, in order, on the main thread; a cancel sent right behind a job (its
/// stop may sit in the main thread's buffer) still stops the worker, and the pool serves on.
async fn jobs_back_to_back_and_cancels_right_behind_them() {
    for launcher in [shell(), relay()] {
        let pool = pool(1, launcher);
        for n in 0..300 {
            assert_eq!(pool.spawn(on_main_thread, n).await.unwrap(), (n, true));
        }
        for round in 0..10 {
            let task = pool
                .task(spin)
                .cancel_timeout(Duration::from_millis(100))
                .spawn(());
            // Cancelled as soon as it started, or before: either way it ends cancelled.
            eventually("the task starts", || task.pid().is_some() || round % 2 == 1).await;
            task.cancel_and_wait().await;
            assert_eq!(pool.spawn(add, (round, 1)).await.unwrap(), round + 1);
        }
        pool.shutdown().await;
    }
}

async fn results_and_metadata_through_a_shell() {
    let pool = pool(2, shell());
    assert_eq!(pool.spawn(add, (40, 2)).await.unwrap(), 42);
    let mut task = pool.spawn(whoami, ());
    let (pid, ppid) = (&mut task).await.unwrap();
    assert_eq!(task.pid(), Some(pid), "the pid is the worker's own");
    assert_ne!(ppid, std::process::id(), "a shell stands between");
    assert!(children().contains(&ppid), "the shell is ours");
    assert_eq!(task.host().as_deref(), Some(hostname().as_str()));
    assert_eq!(task.info().host(), Some(hostname().as_str()));
    let local = ProcessPool::new(1).unwrap();
    assert_eq!(
        local.spawn(add, (1, 1)).info().host(),
        None,
        "local: no host"
    );
    // The second worker may still be starting when the first served both tasks.
    eventually("both workers serve", || pool.stats().workers == 2).await;
    pool.shutdown().await;
    eventually("the shells are gone", || !alive(ppid)).await;
}

async fn cancel_stops_the_worker_and_what_its_task_started() {
    for launcher in [shell(), relay()] {
        let pool = pool(1, launcher);
        let dir = temp_dir("launcher-cancel");
        let path = dir.join("sleeper");
        let task = pool
            .task(sleeper_then_spin)
            .cancel_timeout(Duration::from_millis(200))
            .spawn(path.clone());
        let sleeper = read_pid(&path);
        let worker = task.pid().unwrap();
        assert!(alive(worker) && alive(sleeper));
        assert!(task.cancel_and_wait().await);
        eventually("the worker is gone", || !alive(worker)).await;
        eventually("the task's child is gone", || !alive(sleeper)).await;
        assert_eq!(
            pool.spawn(add, (2, 3)).await.unwrap(),
            5,
            "a replacement serves"
        );
        pool.shutdown().await;
    }
}

async fn timeout_and_crash_fail_their_task_and_the_worker_is_replaced() {
    let pool = pool(1, relay());
    let mut timed_out = pool
        .task(spin)
        .timeout(Duration::from_millis(100))
        .cancel_timeout(Duration::ZERO)
        .spawn(());
    assert!((&mut timed_out).await.unwrap_err().is_timed_out());
    let spun = timed_out.pid().unwrap();
    eventually("the timed-out worker is gone", || !alive(spun)).await;

    let mut crashed = pool.spawn(abort, ());
    let err = (&mut crashed).await.unwrap_err();
    assert!(matches!(err, TaskError::WorkerDied { .. }), "{err}");
    assert_eq!(pool.spawn(add, (1, 2)).await.unwrap(), 3);
    assert!(pool.stats().replaced >= 2);
    pool.shutdown().await;
}

async fn a_killed_launcher_fails_the_task_and_leaves_nothing_running() {
    let dir = temp_dir("launcher-killed");
    let tag = dir.display().to_string();
    let pool = common::tagged_pool(relay(), &tag);
    let path = dir.join("sleeper");
    let mut task = pool.spawn(sleeper_then_spin, path.clone());
    let sleeper = read_pid(&path);
    let worker = task.pid().unwrap();
    // This test's relay (the tag is in its command line), as a dropped connection would.
    assert_eq!(common::kill_children_mentioning(&tag), 1);
    let err = (&mut task).await.unwrap_err();
    assert!(err.is_worker_died(), "{err}");
    eventually("the worker is gone", || !alive(worker)).await;
    eventually("the task's child is gone", || !alive(sleeper)).await;
    assert_eq!(
        pool.spawn(add, (4, 4)).await.unwrap(),
        8,
        "the pool recovers"
    );
    pool.shutdown().await;
}

async fn a_copy_of_this_build_serves_and_another_build_is_refused() {
    let dir = temp_dir("launcher-builds");
    let copy = dir.join("copy");
    std::fs::copy(std::env::current_exe().unwrap(), &copy).unwrap();
    let pool = pool(1, shell().remote_program(&copy));
    assert_eq!(
        pool.spawn(add, (5, 5)).await.unwrap(),
        10,
        "same content: served"
    );
    pool.shutdown().await;

    // The same program with another build-id: another build.
    let other = another_build(&dir);
    let pool = self::pool(1, shell().remote_program(&other));
    let err = pool.spawn(add, (1, 1)).await.unwrap_err();
    assert!(err.is_spawn(), "{err}");
    assert!(err.to_string().contains("another build"), "{err}");
}

async fn a_launcher_that_cannot_run_fails_tasks_clearly() {
    let pool = ProcessPool::builder()
        .workers(1)
        .launcher(Launcher::command("/nonexistent/launcher"))
        .build();
    let err = pool.unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/launcher"),
        "names the launcher: {err}"
    );
}

async fn isolated_runs_each_call_in_a_fresh_remote_process() {
    use offload::Executor;
    let isolated = offload::Isolated::with_max_procs(2).launcher(shell());
    let (first, shell_a) = isolated.spawn(whoami, ()).await.unwrap();
    let (second, shell_b) = isolated.spawn(whoami, ()).await.unwrap();
    assert_ne!(first, second, "a fresh process per call");
    assert_ne!(shell_a, std::process::id(), "started through the launcher");
    assert_ne!(shell_b, std::process::id(), "started through the launcher");
    isolated.shutdown().await;
}

/// The pool's environment and directory reach a worker behind a command launcher (as words
/// before its program: `sh -c 'cd …' sh DIR env K=V program --worker`).
async fn workers_get_the_environment_and_directory_they_are_given() {
    for launcher in [shell(), relay()] {
        common::assert_environment_and_directory_reach_workers(launcher).await;
    }
}

/// Progress, a stream waiting for credit, captured output and a dead worker's last words
/// come through a command launcher (the worker is remote: its control thread reads credit).
async fn what_a_running_task_reports_reaches_the_parent() {
    for launcher in [shell(), relay()] {
        common::assert_reports_reach_the_parent(launcher).await;
    }
}

/// How many shared-memory regions this worker holds.
fn regions_held() -> usize {
    common::region_fds().len()
}

/// A worker behind a launcher is remote as far as the parent knows: large frames go through
/// its pipes, never through shared memory (which a remote host could not open).
async fn large_frames_through_a_launcher_take_the_pipe() {
    let pool = ProcessPool::builder()
        .workers(1)
        .launcher(shell())
        .build()
        .unwrap();
    let data = serde_bytes::ByteBuf::from(vec![5; 4 << 20]);
    assert_eq!(pool.spawn(common::echo, data.clone()).await.unwrap(), data);
    assert_eq!(pool.spawn(regions_held, ()).await.unwrap(), 0);
    let local = ProcessPool::new(1).unwrap();
    assert_eq!(
        local.spawn(regions_held, ()).await.unwrap(),
        2,
        "a local worker has two"
    );
}

fn main() {
    let scenarios = scenarios![
        large_frames_through_a_launcher_take_the_pipe,
        workers_get_the_environment_and_directory_they_are_given,
        what_a_running_task_reports_reaches_the_parent,
        results_and_metadata_through_a_shell,
        cancel_stops_the_worker_and_what_its_task_started,
        timeout_and_crash_fail_their_task_and_the_worker_is_replaced,
        a_killed_launcher_fails_the_task_and_leaves_nothing_running,
        a_copy_of_this_build_serves_and_another_build_is_refused,
        a_launcher_that_cannot_run_fails_tasks_clearly,
        isolated_runs_each_call_in_a_fresh_remote_process,
        jobs_back_to_back_and_cancels_right_behind_them,
    ];
    common::main_with(common::trials_under(
        &[Runtime::Smol, Runtime::TokioMultiThread],
        &scenarios,
    ));
}
