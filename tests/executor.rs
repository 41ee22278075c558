//! The `Executor` trait with both of its executors, and `Isolated`: a fresh process per call,
//! capped, with the same metadata, cancel and timeout as a pool.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{eventually, is_our_child, rendezvous, spin, temp_dir, Runtime};
use offload::{Executor, Isolated, ProcessPool, TaskError, TaskStatus};

fn checksum(data: Vec<u8>) -> u32 {
    data.iter().map(|&b| u32::from(b)).sum()
}

fn whoami() -> u32 {
    std::process::id()
}

/// A library function that lets its caller pick where the work runs.
async fn checksums<E: Executor>(executor: &E, files: Vec<Vec<u8>>) -> Result<Vec<u32>, TaskError> {
    let tasks: Vec<_> = files
        .into_iter()
        .map(|f| executor.spawn(checksum, f))
        .collect();
    let mut sums = Vec::new();
    for task in tasks {
        sums.push(task.await?);
    }
    Ok(sums)
}

async fn a_library_generic_over_executor_works_with_both() {
    let files: Vec<Vec<u8>> = (0..10u8).map(|n| vec![n; n as usize]).collect();
    let expected: Vec<u32> = files.iter().cloned().map(checksum).collect();
    let pool = ProcessPool::new(2).unwrap();
    assert_eq!(checksums(&pool, files.clone()).await.unwrap(), expected);
    let isolated = Isolated::with_max_procs(2);
    assert_eq!(checksums(&isolated, files).await.unwrap(), expected);
    isolated.shutdown().await;
}

async fn isolated_runs_every_call_in_a_fresh_process() {
    let isolated = Isolated::with_max_procs(2);
    let mut pids = HashSet::new();
    for _ in 0..5 {
        let mut task = isolated.spawn(whoami, ());
        let pid = (&mut task).await.unwrap();
        assert_eq!(task.pid(), Some(pid), "metadata names the process");
        assert_eq!(task.status(), TaskStatus::Done);
        assert!(pids.insert(pid), "process {pid} served twice");
    }
    for pid in pids {
        eventually("each process exits after its call", || !is_our_child(pid)).await;
    }
}

async fn isolated_caps_processes_and_queues_the_rest() {
    let isolated = Isolated::with_max_procs(2);
    let dir = temp_dir("cap");
    // Two calls meet, so they ran at once, each in its own process.
    let a = isolated.spawn(rendezvous, (dir.clone(), 2));
    let b = isolated.spawn(rendezvous, (dir.clone(), 2));
    let c = isolated.spawn(whoami, ());
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    let c = c.await.unwrap();
    assert!(a != b && b != c && a != c);
    std::fs::remove_dir_all(dir).unwrap();

    // A third call while two processes are busy stays queued.
    let x = isolated.spawn(spin, ());
    let y = isolated.spawn(spin, ());
    eventually("two spin", || {
        x.status() == "running" && y.status() == "running"
    })
    .await;
    let z = isolated.spawn(whoami, ());
    assert_eq!(z.status(), TaskStatus::Pending);
    assert_eq!(z.pid(), None);
    assert!(x.cancel_and_wait().await);
    let z_pid = z.await.unwrap();
    assert!(y.cancel_and_wait().await);
    assert_ne!(Some(z_pid), x.pid());
}

async fn isolated_cancel_and_timeout_stop_the_process() {
    let isolated = Isolated::with_max_procs(1);
    let task = isolated.spawn(spin, ());
    eventually("it runs", || task.status() == "running").await;
    let pid = task.pid().unwrap();
    assert!(task.cancel_and_wait().await);
    assert!(!is_our_child(pid));

    let mut timed = isolated
        .task(spin)
        .timeout(Duration::from_millis(100))
        .spawn(());
    assert!((&mut timed).await.unwrap_err().is_timed_out());
    let pid = timed.pid().unwrap();
    eventually("the timed-out process is gone", || !is_our_child(pid)).await;
    assert_ne!(isolated.spawn(whoami, ()).await.unwrap(), pid);
}

fn max_procs_comes_from_the_environment() {
    // Read in a child process, so this process's environment stays untouched.
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--print-max-procs")
        .env(offload::MAX_PROCS_ENV, "3")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(output.stdout).unwrap().trim(), "3");
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--print-max-procs")
        .env(offload::MAX_PROCS_ENV, "1000000")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(output.stdout).unwrap().trim(),
        offload::MAX_PROCS_LIMIT.to_string()
    );
}

/// Zero processes at once is refused as zero workers are: tasks fail with a clear error.
fn isolated_with_zero_processes_fails_tasks_clearly() {
    let isolated = Isolated::with_max_procs(0);
    assert_eq!(isolated.max_procs(), 0);
    let err = isolated.spawn(checksum, vec![1]).wait().unwrap_err();
    assert!(err.is_spawn(), "{err}");
    assert!(err.to_string().contains("at least one worker"), "{err}");
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--print-max-procs") {
        println!("{}", Isolated::new().max_procs());
        return;
    }
    let scenarios = scenarios![
        a_library_generic_over_executor_works_with_both,
        isolated_runs_every_call_in_a_fresh_process,
        isolated_caps_processes_and_queues_the_rest,
        isolated_cancel_and_timeout_stop_the_process,
    ];
    let mut trials = common::trials_under(&[Runtime::Smol, Runtime::TokioMultiThread], &scenarios);
    trials.push(common::trial(
        "max_procs_comes_from_the_environment",
        max_procs_comes_from_the_environment,
    ));
    trials.push(common::trial(
        "isolated_with_zero_processes_fails_tasks_clearly",
        isolated_with_zero_processes_fails_tasks_clearly,
    ));
    common::main_with(trials);
}
