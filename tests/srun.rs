//! Workers as Slurm job steps (`Launcher::srun`) against a real single-node Slurm: results and
//! truthful metadata, the program copied to the node once per build and reused, cancel and timeout that stop the worker and what its task started, a
//! crash that fails one task, the srun process killed from outside (the step is cancelled,
//! nothing is left, the pool recovers), another build refused, a rejected srun failing tasks.
//!
//! The cluster is the one `scripts/test-slurm.sh` starts (`.ci/run` does): set
//! `OFFLOAD_TEST_SLURM_CONF` to the slurm.conf it prints. Without it these tests are ignored.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{
    alive, another_build, children, eventually, hostname, read_pid, sleeper_then_spin, temp_dir,
    Runtime,
};
use offload::{Launcher, ProcessPool, TaskError};

/// The environment variable naming the test cluster's slurm.conf.
const CONFIG_ENV: &str = "OFFLOAD_TEST_SLURM_CONF";

fn launcher() -> Launcher {
    Launcher::srun()
}

fn pool(workers: usize) -> ProcessPool {
    ProcessPool::builder()
        .workers(workers)
        .launcher(launcher())
        .build()
        .unwrap()
}

fn whoami() -> (u32, String) {
    (
        std::process::id(),
        std::env::current_exe().unwrap().display().to_string(),
    )
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

async fn results_and_metadata() {
    let pool = pool(2);
    assert_eq!(pool.spawn(add, (40, 2)).await.unwrap(), 42);
    let mut task = pool.spawn(whoami, ());
    let (pid, exe) = (&mut task).await.unwrap();
    assert_eq!(
        task.pid(),
        Some(pid),
        "the pid is the worker's own, on its node"
    );
    assert!(alive(pid), "alive on the node (this machine)");
    assert!(
        !children().contains(&pid),
        "not a child of ours: slurmd started it"
    );
    assert_eq!(task.host().as_deref(), Some(hostname().as_str()));
    let copy = PathBuf::from(&exe);
    let cache = PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/offload");
    assert_eq!(
        copy.parent(),
        Some(cache.as_path()),
        "ran from the node's cache: {exe}"
    );
    let name = copy.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("worker-"), "{exe}");
    let written = std::fs::metadata(&copy).unwrap().modified().unwrap();
    pool.shutdown().await;

    // Another pool of the same build starts from the same copy, which is not written again.
    let pool = self::pool(1);
    let (_, again) = pool.spawn(whoami, ()).await.unwrap();
    assert_eq!(again, exe);
    assert_eq!(
        std::fs::metadata(&copy).unwrap().modified().unwrap(),
        written
    );
    pool.shutdown().await;
}

async fn cancel_and_timeout_stop_the_worker_and_what_its_task_started() {
    let pool = pool(1);
    let dir = temp_dir("srun-cancel");
    let path = dir.join("sleeper");
    let task = pool
        .task(sleeper_then_spin)
        .cancel_timeout(Duration::from_millis(200))
        .spawn(path.clone());
    let sleeper = read_pid(&path);
    let worker = task.pid().unwrap();
    assert!(task.cancel_and_wait().await);
    eventually("the worker is gone", || !alive(worker)).await;
    eventually("the task's child is gone", || !alive(sleeper)).await;

    let mut timed_out = pool
        .task(spin)
        .timeout(Duration::from_millis(100))
        .spawn(());
    assert!((&mut timed_out).await.unwrap_err().is_timed_out());
    let spun = timed_out.pid().unwrap();
    eventually("the timed-out worker is gone", || !alive(spun)).await;
    assert_eq!(
        pool.spawn(add, (2, 3)).await.unwrap(),
        5,
        "a replacement serves"
    );
    pool.shutdown().await;
}

async fn a_crash_fails_its_task_and_the_worker_is_replaced() {
    let pool = pool(1);
    let err = pool.spawn(abort, ()).await.unwrap_err();
    assert!(matches!(err, TaskError::WorkerDied { .. }), "{err}");
    assert_eq!(pool.spawn(add, (1, 2)).await.unwrap(), 3);
    assert_eq!(pool.stats().replaced, 1);
    pool.shutdown().await;
}

async fn a_killed_srun_fails_the_task_and_leaves_nothing_running() {
    let dir = temp_dir("srun-killed");
    let tag = dir.display().to_string();
    let pool = common::tagged_pool(launcher(), &tag);
    let path = dir.join("sleeper");
    let mut task = pool.spawn(sleeper_then_spin, path.clone());
    let sleeper = read_pid(&path);
    let worker = task.pid().unwrap();
    let ours = std::process::id().to_string();
    // This test's srun: the tag is in its environment.
    assert_eq!(common::kill_children_mentioning(&tag), 1);
    let err = (&mut task).await.unwrap_err();
    assert!(err.is_worker_died(), "{err} (parent {ours})");
    eventually("the worker is gone", || !alive(worker)).await;
    eventually("the task's child is gone", || !alive(sleeper)).await;
    assert_eq!(
        pool.spawn(add, (4, 4)).await.unwrap(),
        8,
        "the pool recovers"
    );
    pool.shutdown().await;
}

async fn another_build_is_refused_and_says_so() {
    let dir = temp_dir("srun-builds");
    let other = another_build(&dir);
    let pool = ProcessPool::builder()
        .workers(1)
        .launcher(launcher().remote_program(&other))
        .build()
        .unwrap();
    let err = pool.spawn(add, (1, 1)).await.unwrap_err();
    assert!(err.is_spawn(), "{err}");
    assert!(err.to_string().contains("another build"), "{err}");
}

async fn a_rejected_srun_fails_tasks_clearly() {
    let pool = ProcessPool::builder()
        .workers(1)
        .launcher(Launcher::srun().arg("--partition=no-such-partition"))
        .build()
        .unwrap();
    let err = pool.spawn(add, (1, 1)).await.unwrap_err();
    assert!(err.is_spawn(), "{err}");
    assert!(err.to_string().contains("during start-up"), "{err}");
    assert!(
        err.to_string().contains("Invalid partition name"),
        "quotes srun: {err}"
    );
}

/// The pool's environment and directory reach the workers on the other side.
async fn what_a_running_task_reports_reaches_the_parent() {
    common::assert_reports_reach_the_parent(launcher()).await;
}

async fn workers_get_the_environment_and_directory_they_are_given() {
    common::assert_environment_and_directory_reach_workers(launcher()).await;
}

fn main() {
    offload::init(); // first: a worker started by srun serves here
    let scenarios = scenarios![
        workers_get_the_environment_and_directory_they_are_given,
        what_a_running_task_reports_reaches_the_parent,
        results_and_metadata,
        cancel_and_timeout_stop_the_worker_and_what_its_task_started,
        a_crash_fails_its_task_and_the_worker_is_replaced,
        a_killed_srun_fails_the_task_and_leaves_nothing_running,
        another_build_is_refused_and_says_so,
        a_rejected_srun_fails_tasks_clearly,
    ];
    let mut trials = common::trials_under(&[Runtime::Smol, Runtime::TokioMultiThread], &scenarios);
    match std::env::var_os(CONFIG_ENV) {
        // srun finds the cluster through SLURM_CONF; set before any thread starts.
        Some(conf) => std::env::set_var("SLURM_CONF", conf),
        None => eprintln!(
            "srun tests ignored: {CONFIG_ENV} is not set (scripts/test-slurm.sh starts a cluster and prints it)"
        ),
    }
    if std::env::var_os(CONFIG_ENV).is_none() {
        trials = trials
            .into_iter()
            .map(|t| t.with_ignored_flag(true))
            .collect();
    }
    common::main_with(trials);
}
