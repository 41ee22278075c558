//! Workers over ssh (`Launcher::ssh`) against a real OpenSSH server: results and truthful
//! metadata, the program copied once per build and reused, cancel and timeout that stop the
//! worker and what its task started, a crash that fails one task, the ssh client killed from
//! outside (the worker and its children go, the pool recovers), another build refused, workers
//! spread over two hosts (the same server on two loopback addresses).
//!
//! The server is the one `scripts/test-sshd.sh` starts (`.ci/run` does): set
//! `OFFLOAD_TEST_SSH_CONFIG` to the ssh_config it prints. Without it these tests are ignored.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{
    alive, another_build, children, eventually, hostname, read_pid, sleeper_then_spin, temp_dir,
    Runtime,
};
use offload::{Launcher, ProcessPool, TaskError};

/// The environment variable naming the test server's ssh_config.
const CONFIG_ENV: &str = "OFFLOAD_TEST_SSH_CONFIG";

fn launcher() -> Launcher {
    let config = std::env::var(CONFIG_ENV).expect("checked in main");
    Launcher::ssh("offload-test").args(["-F", &config])
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

/// The copies in the test user's cache (the server is this machine, as the same user).
fn copies() -> Vec<PathBuf> {
    let dir = PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/offload");
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("worker-")
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

async fn results_metadata_and_one_copy_per_build() {
    let pool = pool(2);
    assert_eq!(pool.spawn(add, (40, 2)).await.unwrap(), 42);
    let mut task = pool.spawn(whoami, ());
    let (pid, exe) = (&mut task).await.unwrap();
    assert_eq!(
        task.pid(),
        Some(pid),
        "the pid is the worker's own, on its host"
    );
    assert!(alive(pid), "alive on the host (this machine)");
    assert!(
        !children().contains(&pid),
        "not a child of ours: ssh stands between"
    );
    assert_eq!(task.host().as_deref(), Some(hostname().as_str()));
    let copy = PathBuf::from(&exe);
    assert!(copies().contains(&copy), "ran from the cache: {exe}");
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(&copy).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    let dir = std::fs::metadata(copy.parent().unwrap()).unwrap();
    assert_eq!(dir.permissions().mode() & 0o777, 0o700);
    pool.shutdown().await;

    // Another pool of the same build starts from the same copy, which is not written again.
    let pool = self::pool(1);
    let (_, again) = pool.spawn(whoami, ()).await.unwrap();
    assert_eq!(again, exe);
    assert_eq!(std::fs::metadata(&copy).unwrap().mtime(), meta.mtime());
    pool.shutdown().await;
}

async fn cancel_and_timeout_stop_the_worker_and_what_its_task_started() {
    let pool = pool(1);
    let dir = temp_dir("ssh-cancel");
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

async fn a_killed_ssh_client_fails_the_task_and_leaves_nothing_running() {
    let dir = temp_dir("ssh-killed");
    let tag = dir.display().to_string();
    let pool = common::tagged_pool(launcher(), &tag);
    let path = dir.join("sleeper");
    let mut task = pool.spawn(sleeper_then_spin, path.clone());
    let sleeper = read_pid(&path);
    let worker = task.pid().unwrap();
    let ours = std::process::id().to_string();
    // This test's ssh client: the tag is in its remote command line.
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
    let dir = temp_dir("ssh-builds");
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

/// The address the worker's ssh connection reached: which of the two test hosts it is on.
fn server_address() -> String {
    let connection = std::env::var("SSH_CONNECTION").unwrap_or_default();
    connection.split(' ').nth(2).unwrap_or_default().to_string()
}

async fn workers_are_spread_over_hosts_in_turn() {
    let config = std::env::var(CONFIG_ENV).unwrap();
    let pool = ProcessPool::builder()
        .workers(4)
        .launcher(Launcher::ssh_hosts(["offload-test", "offload-test-2"]).args(["-F", &config]))
        .build()
        .unwrap();
    // Each task waits until all four run, so that each runs on a worker of its own.
    let dir = temp_dir("ssh-hosts");
    let tasks: Vec<_> = (0..4)
        .map(|_| pool.spawn(address_once_all_run, (dir.clone(), 4)))
        .collect();
    let mut addresses = Vec::new();
    for task in tasks {
        addresses.push(task.await.unwrap());
    }
    addresses.sort();
    assert_eq!(
        addresses,
        ["127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.2"],
        "two workers on each host"
    );
    // A replacement goes to the next host in turn, and serves.
    let err = pool.spawn(abort, ()).await.unwrap_err();
    assert!(err.is_worker_died(), "{err}");
    assert!(!pool.spawn(server_address, ()).await.unwrap().is_empty());
    pool.shutdown().await;
}

/// The worker's host address, once `all` tasks have marked themselves running in `dir`
/// (bounded: after 60 s it answers anyway, and the test's assertion says what happened).
fn address_once_all_run(dir: PathBuf, all: usize) -> String {
    std::fs::write(dir.join(std::process::id().to_string()), b"").unwrap();
    let started = std::time::Instant::now();
    while std::fs::read_dir(&dir).unwrap().count() < all && started.elapsed().as_secs() < 60 {
        std::thread::sleep(Duration::from_millis(5));
    }
    server_address()
}

async fn an_unreachable_host_fails_clearly() {
    let config = std::env::var(CONFIG_ENV).unwrap();
    let pool = ProcessPool::builder()
        .workers(1)
        .launcher(Launcher::ssh("nobody@127.0.0.1").args(["-F", &config, "-p", "1"]))
        .build()
        .unwrap();
    let err = pool.spawn(add, (1, 1)).await.unwrap_err();
    assert!(err.is_spawn(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("(ssh nobody@127.0.0.1)"),
        "names the host: {text}"
    );
    assert!(
        text.contains("Connection refused"),
        "quotes what ssh said: {text}"
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
    offload::init(); // first: a worker started over ssh serves here
    let scenarios = scenarios![
        workers_get_the_environment_and_directory_they_are_given,
        what_a_running_task_reports_reaches_the_parent,
        results_metadata_and_one_copy_per_build,
        cancel_and_timeout_stop_the_worker_and_what_its_task_started,
        a_crash_fails_its_task_and_the_worker_is_replaced,
        a_killed_ssh_client_fails_the_task_and_leaves_nothing_running,
        another_build_is_refused_and_says_so,
        an_unreachable_host_fails_clearly,
        workers_are_spread_over_hosts_in_turn,
    ];
    let mut trials = common::trials_under(&[Runtime::Smol, Runtime::TokioMultiThread], &scenarios);
    if std::env::var_os(CONFIG_ENV).is_none() {
        eprintln!(
            "ssh tests ignored: {CONFIG_ENV} is not set (scripts/test-sshd.sh starts a server and prints it)"
        );
        trials = trials
            .into_iter()
            .map(|t| t.with_ignored_flag(true))
            .collect();
    }
    common::main_with(trials);
}
