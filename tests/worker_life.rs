//! Worker life: `init` in every worker, the crash-loop breaker, `ready()`, the elastic pool,
//! and the workers' environment and directory.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{alive, rendezvous, temp_dir, Runtime};
use offload::{ProcessPool, TaskError};

// ---- initializers and tasks, run in the workers ----

/// How often `load` ran in this process.
static INIT_RUNS: AtomicU32 = AtomicU32::new(0);
/// What `load` set up: state a worker keeps between its tasks.
static LOADED: OnceLock<String> = OnceLock::new();

fn load() {
    INIT_RUNS.fetch_add(1, Ordering::SeqCst);
    LOADED
        .set(format!("model of {}", std::process::id()))
        .unwrap();
}

/// The pid that ran the task, how often `load` ran there, and what it left.
fn what_init_left() -> (u32, u32, Option<String>) {
    (
        std::process::id(),
        INIT_RUNS.load(Ordering::SeqCst),
        LOADED.get().cloned(),
    )
}

/// Records this worker's start in `$OFFLOAD_TEST_STARTS` (a directory), by pid.
fn record_start() {
    let dir = std::env::var_os("OFFLOAD_TEST_STARTS").expect("set with PoolBuilder::env");
    let pid = std::process::id().to_string();
    std::fs::write(Path::new(&dir).join(pid), b"").unwrap();
}

fn no_gpu() -> Result<(), String> {
    record_start();
    Err("no GPU on this node".to_string())
}

/// Fails until the file `$OFFLOAD_TEST_GATE` exists.
fn gated() -> Result<(), std::io::Error> {
    record_start();
    let gate = std::env::var_os("OFFLOAD_TEST_GATE").expect("set with PoolBuilder::env");
    std::fs::metadata(gate).map(drop)
}

fn hangs() {
    record_start();
    std::thread::sleep(Duration::from_secs(1000));
}

fn panics() {
    panic!("the weights are corrupt")
}

fn exits() {
    std::process::exit(3)
}

fn pid() -> u32 {
    std::process::id()
}

fn starts(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

fn pids_in(dir: &Path) -> Vec<u32> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect()
}

/// What the worker sees of its environment: `$OFFLOAD_TEST_VAR`, whether `PATH` is set,
/// whether the variable was in the environment the program was started with, its directory.
fn environment() -> (Option<String>, bool, bool, PathBuf) {
    let exec_env = std::fs::read("/proc/self/environ").unwrap();
    let at_exec = exec_env
        .split(|&b| b == 0)
        .any(|var| var == b"OFFLOAD_TEST_VAR=one two");
    (
        std::env::var("OFFLOAD_TEST_VAR").ok(),
        std::env::var_os("PATH").is_some(),
        at_exec,
        std::env::current_dir().unwrap(),
    )
}

// ---- scenarios ----

async fn init_runs_once_in_every_worker_and_its_state_lives_between_tasks() {
    let pool = ProcessPool::builder()
        .workers(2)
        .init(load)
        .build()
        .unwrap();
    pool.ready().await.unwrap();
    assert_eq!(pool.stats().workers, 2);
    for _ in 0..6 {
        let (pid, runs, loaded) = pool.spawn(what_init_left, ()).await.unwrap();
        assert_eq!(runs, 1, "init ran once in worker {pid}");
        assert_eq!(loaded, Some(format!("model of {pid}")));
    }
    // Replacements run it too.
    let pool = ProcessPool::builder()
        .workers(1)
        .max_tasks_per_worker(1)
        .init(load)
        .build()
        .unwrap();
    let mut pids = Vec::new();
    for _ in 0..3 {
        let (pid, runs, loaded) = pool.spawn(what_init_left, ()).await.unwrap();
        assert_eq!((runs, loaded.is_some()), (1, true));
        pids.push(pid);
    }
    pids.dedup();
    assert_eq!(pids.len(), 3, "every task had a fresh worker: {pids:?}");
    // The parent never runs it.
    assert_eq!(INIT_RUNS.load(Ordering::SeqCst), 0);
}

async fn a_failing_init_fails_the_queued_tasks_without_a_respawn_storm() {
    let starts_dir = temp_dir("init-fails");
    let built = Instant::now();
    let pool = ProcessPool::builder()
        .workers(4)
        .init(no_gpu)
        .env("OFFLOAD_TEST_STARTS", &starts_dir)
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..8).map(|_| pool.spawn(pid, ())).collect();
    for task in tasks {
        match task.await {
            Err(TaskError::InitFailed { message }) => {
                assert!(message.contains("no GPU on this node"), "{message}")
            }
            other => panic!("expected InitFailed, got {other:?}"),
        }
    }
    let err = pool.ready().await.unwrap_err();
    assert!(err.to_string().contains("no GPU"), "{err}");
    // Counted over the first two seconds: the pool backs off instead of respawning.
    async_io::Timer::at(built + Duration::from_secs(2)).await;
    let early = starts(&starts_dir);
    assert!(
        (3..10).contains(&early),
        "{early} workers started in the first 2 s"
    );
    assert_eq!(pool.stats().start_failures, early as u64);
    // A later task makes one new attempt after the back-off, and fails the same way.
    let err = pool.spawn(pid, ()).await.unwrap_err();
    assert!(err.is_init_failed(), "{err}");
    assert_eq!(starts(&starts_dir), early + 1, "one attempt per back-off");
    // No worker that failed its init is left.
    for pid in pids_in(&starts_dir) {
        common::eventually("the failed workers are gone", || !alive(pid)).await;
    }
}

async fn a_pool_whose_init_fails_recovers_once_it_can_start() {
    let dir = temp_dir("init-recovers");
    let (starts_dir, gate) = (dir.join("starts"), dir.join("gate"));
    std::fs::create_dir(&starts_dir).unwrap();
    let pool = ProcessPool::builder()
        .workers(2)
        .init(gated)
        .env("OFFLOAD_TEST_STARTS", &starts_dir)
        .env("OFFLOAD_TEST_GATE", &gate)
        .build()
        .unwrap();
    let err = pool.spawn(pid, ()).await.unwrap_err();
    assert!(err.is_init_failed(), "{err}");
    std::fs::write(&gate, b"").unwrap();
    // The next task waits for the back-off, then its attempt succeeds: not broken for good.
    let served_by = pool.spawn(pid, ()).await.unwrap();
    assert!(pids_in(&starts_dir).contains(&served_by));
    pool.ready().await.unwrap();
    common::eventually("both workers serve again", || pool.stats().workers == 2).await;
}

async fn shutdown_during_a_back_off_fails_the_waiting_task_without_an_attempt() {
    let starts_dir = temp_dir("init-shutdown");
    let pool = ProcessPool::builder()
        .workers(1)
        .init(no_gpu)
        .env("OFFLOAD_TEST_STARTS", &starts_dir)
        .build()
        .unwrap();
    assert!(pool.spawn(pid, ()).await.unwrap_err().is_init_failed());
    let attempts = pool.stats().start_failures;
    // Spawned during the back-off, then the pool shuts down: no worker can start for it.
    let waiting = pool.spawn(pid, ());
    pool.shutdown().await;
    let err = waiting.await.unwrap_err();
    assert!(err.is_init_failed(), "{err}");
    assert_eq!(
        pool.stats().start_failures,
        attempts,
        "no start-up was attempted after the shutdown"
    );
}

async fn an_init_that_hangs_panics_or_exits_fails_with_what_happened() {
    let starts_dir = temp_dir("init-hangs");
    let pool = ProcessPool::builder()
        .workers(1)
        .init(hangs)
        .init_timeout(Duration::from_millis(300))
        .env("OFFLOAD_TEST_STARTS", &starts_dir)
        .build()
        .unwrap();
    let err = pool.spawn(pid, ()).await.unwrap_err();
    let TaskError::InitFailed { message } = err else {
        panic!("expected InitFailed, got {err:?}")
    };
    assert!(message.contains("did not finish within 300ms"), "{message}");
    for pid in pids_in(&starts_dir) {
        common::eventually("the hung workers are killed", || !alive(pid)).await;
    }

    let pool = ProcessPool::builder()
        .workers(1)
        .init(panics)
        .build()
        .unwrap();
    let err = pool.spawn(pid, ()).await.unwrap_err().to_string();
    assert!(err.contains("panicked: the weights are corrupt"), "{err}");

    let pool = ProcessPool::builder()
        .workers(1)
        .init(exits)
        .build()
        .unwrap();
    let err = pool.spawn(pid, ()).await.unwrap_err().to_string();
    assert!(err.contains("exited with code 3"), "{err}");
}

async fn an_elastic_pool_grows_under_load_and_shrinks_when_idle() {
    let idle_timeout = Duration::from_secs(1);
    let pool = ProcessPool::builder()
        .workers(4)
        .min_workers(1)
        .idle_timeout(idle_timeout)
        .build()
        .unwrap();
    pool.ready().await.unwrap();
    assert_eq!(
        pool.stats().workers,
        1,
        "an elastic pool starts min_workers"
    );
    // Eight tasks that all wait until four run at once: only a pool of four can finish them.
    let dir = temp_dir("elastic");
    let tasks: Vec<_> = (0..8)
        .map(|_| pool.spawn(rendezvous, (dir.clone(), 4)))
        .collect();
    let mut pids = Vec::new();
    for task in tasks {
        pids.push(task.await.unwrap());
    }
    let done = Instant::now();
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), 4, "the pool grew to its maximum, not beyond");
    common::eventually("the pool shrinks to min_workers", || {
        pool.stats().workers == 1
    })
    .await;
    let shrunk = done.elapsed();
    assert!(
        shrunk < idle_timeout + Duration::from_secs(1),
        "back to 1 worker {shrunk:?} after the last task"
    );
    // The worker that stays serves, and the pool grows again from there.
    assert!(pids.contains(&pool.spawn(pid, ()).await.unwrap()));
    assert_eq!(pool.stats().workers, 1);
}

async fn min_workers_zero_starts_workers_only_for_tasks() {
    let pool = ProcessPool::builder()
        .workers(2)
        .min_workers(0)
        .idle_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    pool.ready().await.unwrap();
    assert_eq!(pool.stats().workers, 0);
    pool.spawn(pid, ()).await.unwrap();
    common::eventually("the idle worker is retired", || pool.stats().workers == 0).await;
    pool.shutdown().await;
}

async fn workers_get_the_environment_and_directory_they_are_given() {
    let dir = temp_dir("environment");
    let pool = ProcessPool::builder()
        .workers(1)
        .env("OFFLOAD_TEST_VAR", "one two")
        .env_remove("PATH")
        .current_dir(&dir)
        .build()
        .unwrap();
    let (var, path_set, at_exec, cwd) = pool.spawn(environment, ()).await.unwrap();
    assert_eq!(var.as_deref(), Some("one two"));
    assert!(!path_set, "PATH was removed");
    assert!(
        at_exec,
        "the variable is in the environment the worker started with"
    );
    assert_eq!(cwd, dir.canonicalize().unwrap());

    // A directory that does not exist: the build fails, or the task if none had to start.
    let missing = dir.join("missing");
    let err = ProcessPool::builder()
        .workers(1)
        .current_dir(&missing)
        .build()
        .unwrap_err();
    let named = format!("in {}", missing.display());
    assert!(err.to_string().contains(&named), "{err}");
    let pool = ProcessPool::builder()
        .workers(1)
        .min_workers(0)
        .current_dir(&missing)
        .build()
        .unwrap();
    let err = pool.spawn(pid, ()).await.unwrap_err();
    assert!(err.is_spawn() && err.to_string().contains(&named), "{err}");
}

fn main() {
    let scenarios = scenarios![
        init_runs_once_in_every_worker_and_its_state_lives_between_tasks,
        a_failing_init_fails_the_queued_tasks_without_a_respawn_storm,
        a_pool_whose_init_fails_recovers_once_it_can_start,
        shutdown_during_a_back_off_fails_the_waiting_task_without_an_attempt,
        an_init_that_hangs_panics_or_exits_fails_with_what_happened,
        an_elastic_pool_grows_under_load_and_shrinks_when_idle,
        min_workers_zero_starts_workers_only_for_tasks,
        workers_get_the_environment_and_directory_they_are_given,
    ];
    let runtimes = [Runtime::Smol, Runtime::TokioMultiThread];
    common::main_with(common::trials_under(&runtimes, &scenarios));
}
