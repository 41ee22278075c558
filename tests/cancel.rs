//! Cancelling really stops the work: a queued task never runs, a running task's worker is
//! stopped (SIGTERM, grace, SIGKILL), reaped and replaced, and nothing else is disturbed.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, is_our_child, sleep_ms, spin, temp_dir, touch, wait_for_file, Runtime};
use offload::{ProcessPool, TaskError, TaskStatus};

/// Spins with `SIGTERM` caught, so only `SIGKILL` stops it; creates `ready` once the
/// handler is in place.
fn spin_ignoring_sigterm(ready: PathBuf) -> u32 {
    let flag = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, flag.clone()).unwrap();
    std::fs::write(ready, b"").unwrap();
    loop {
        if flag.load(Ordering::Relaxed) {
            flag.store(false, Ordering::Relaxed); // noticed, and ignored
        }
        std::hint::spin_loop();
    }
}

fn whoami() -> u32 {
    std::process::id()
}

async fn queued_task_cancelled_never_runs() {
    let pool = ProcessPool::new(1).unwrap();
    let dir = temp_dir("queued");
    let blocker = pool.spawn(wait_for_file, dir.join("go"));
    eventually("the blocker runs", || blocker.status() == "running").await;
    let mut queued = pool.spawn(touch, dir.join("ran"));
    assert_eq!(queued.status(), TaskStatus::Pending);

    assert!(queued.cancel(), "a queued task is cancelled");
    assert_eq!(queued.status(), TaskStatus::Cancelled);
    assert_eq!(queued.pid(), None);
    assert!(queued.ended_at().is_some() && queued.duration().is_none());
    assert!(matches!((&mut queued).await, Err(TaskError::Cancelled)));
    assert!(!queued.cancel(), "cancelling twice does nothing");

    std::fs::write(dir.join("go"), b"").unwrap();
    let worker = blocker.await.unwrap();
    // The queue moved past the cancelled task: the next task ran, the cancelled one did not.
    assert_eq!(pool.spawn(whoami, ()).await.unwrap(), worker);
    assert!(
        !dir.join("ran").exists(),
        "the cancelled task's function never ran"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

async fn running_task_cancelled_stops_its_worker_which_is_replaced() {
    let pool = ProcessPool::new(1).unwrap();
    let mut task = pool.spawn(spin, ());
    eventually("the task runs", || task.status() == "running").await;
    let pid = task.pid().unwrap();
    assert!(is_our_child(pid));

    assert!(task.cancel_and_wait().await, "a running task is cancelled");
    assert!(
        !is_our_child(pid),
        "the worker {pid} is gone once cancel_and_wait returns"
    );
    assert_eq!(task.status(), TaskStatus::Cancelled);
    assert!(task.duration().is_some(), "end time and duration are set");
    assert!(matches!((&mut task).await, Err(TaskError::Cancelled)));

    let next = pool.spawn(whoami, ()).await.unwrap();
    assert_ne!(next, pid, "a replacement serves");
}

async fn worker_ignoring_sigterm_is_killed_after_the_cancel_timeout() {
    let pool = ProcessPool::new(1).unwrap();
    let grace = Duration::from_millis(300);
    let dir = temp_dir("sigterm");
    let ready = dir.join("ready");
    let task = pool
        .task(spin_ignoring_sigterm)
        .cancel_timeout(grace)
        .spawn(ready.clone());
    eventually("the task ignores SIGTERM", || ready.exists()).await;
    let pid = task.pid().unwrap();
    let started = Instant::now();
    assert!(task.cancel_and_wait().await);
    assert!(
        started.elapsed() >= grace,
        "SIGTERM alone did not stop it; SIGKILL came after the grace"
    );
    assert!(!is_our_child(pid));
    assert_ne!(pool.spawn(whoami, ()).await.unwrap(), pid);
    std::fs::remove_dir_all(dir).unwrap();
}

async fn cancelling_a_finished_task_leaves_its_worker_alone() {
    let pool = ProcessPool::new(1).unwrap();
    let mut task = pool.spawn(whoami, ());
    let pid = (&mut task).await.unwrap();
    assert!(!task.cancel(), "nothing to cancel");
    assert!(!task.cancel_and_wait().await);
    assert_eq!(task.status(), TaskStatus::Done);
    assert!(is_our_child(pid), "the worker that ran it lives");
    assert_eq!(pool.spawn(whoami, ()).await.unwrap(), pid, "and serves on");
}

async fn dropping_a_running_task_stops_its_worker() {
    let pool = ProcessPool::new(1).unwrap();
    let task = pool.spawn(spin, ());
    eventually("the task runs", || task.status() == "running").await;
    let pid = task.pid().unwrap();
    drop(task);
    eventually("the dropped task's worker is gone", || !is_our_child(pid)).await;
    assert_ne!(pool.spawn(whoami, ()).await.unwrap(), pid);
}

async fn detached_task_runs_to_the_end() {
    let pool = ProcessPool::new(1).unwrap();
    let dir = temp_dir("detached");
    pool.spawn(sleep_ms, 50).detach();
    let path = dir.join("done");
    pool.spawn(touch, path.clone()).detach();
    eventually("the detached task ran", || path.exists()).await;
    std::fs::remove_dir_all(dir).unwrap();
}

async fn cancel_disturbs_no_other_task() {
    let pool = ProcessPool::new(2).unwrap();
    let victim = pool.spawn(spin, ());
    let bystander = pool.spawn(sleep_ms, 300);
    eventually("both run", || {
        victim.status() == "running" && bystander.status() == "running"
    })
    .await;
    let victim_pid = victim.pid().unwrap();
    assert!(victim.cancel_and_wait().await);
    let bystander_pid = bystander.await.unwrap();
    assert_ne!(bystander_pid, victim_pid);
    assert!(is_our_child(bystander_pid), "the other worker lives on");
}

/// A cancel must never reach a worker that already answered and took the next job (written
/// to it early, before the answer is handed out): a cancel that crosses the answer of task A
/// leaves B, queued right behind A on the same worker, alone. (A stop sent from the caller's
/// thread the moment it cancels, without this guard, fails it within a few dozen rounds.)
async fn a_cancel_that_crosses_the_answer_never_stops_the_next_task() {
    let pool = ProcessPool::new(1).unwrap();
    let mut cancelled = 0;
    for round in 0..400u64 {
        let a = pool.spawn(whoami, ());
        let b = pool.spawn(whoami, ());
        // A is answered within microseconds: cancel it after a delay that sweeps the window.
        let until = Instant::now() + Duration::from_micros(round % 100);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        cancelled += usize::from(a.cancel());
        match b.await {
            Ok(_) => {}
            Err(error) => panic!("round {round}: the task behind the cancelled one got {error}"),
        }
    }
    // The sweep hit running tasks, not only queued or finished ones.
    assert!(cancelled > 0, "no cancel took effect");
}

/// A cancel signals the worker of a task it runs alone from the cancelling thread itself: the
/// worker goes even while the pool's own thread is held up (here in a slow `on_done` callback
/// of another task), long before that thread could stop it. (Before the stopper, the worker
/// spun on until the callback returned.)
async fn a_cancel_stops_the_worker_while_the_pool_thread_is_busy() {
    let pool = ProcessPool::new(2).unwrap();
    let victim = pool.spawn(spin, ());
    eventually("the victim runs", || victim.status() == "running").await;
    let pid = victim.pid().unwrap();
    let (entered, release) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let hold = {
        let (entered, release) = (entered.clone(), release.clone());
        move |_: &offload::TaskInfo| {
            entered.store(true, Ordering::SeqCst);
            // Bounded, so that a failure cannot hang the test.
            let until = Instant::now() + Duration::from_secs(20);
            while !release.load(Ordering::SeqCst) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    };
    let holder = pool.task(whoami).on_done(hold).spawn(());
    eventually("the pool's thread is in the callback", || {
        entered.load(Ordering::SeqCst)
    })
    .await;

    assert!(victim.cancel());
    let gone = Instant::now();
    eventually("the cancelled task's worker exits", || !common::alive(pid)).await;
    let took = gone.elapsed();
    assert!(
        !release.load(Ordering::SeqCst) && took < Duration::from_secs(5),
        "the worker {pid} went only after {took:?}"
    );
    release.store(true, Ordering::SeqCst);
    holder.await.unwrap();
    assert!(victim.await.unwrap_err().is_cancelled());
    assert_ne!(
        pool.spawn(whoami, ()).await.unwrap(),
        pid,
        "a replacement serves"
    );
}

fn main() {
    let scenarios = scenarios![
        a_cancel_that_crosses_the_answer_never_stops_the_next_task,
        queued_task_cancelled_never_runs,
        running_task_cancelled_stops_its_worker_which_is_replaced,
        worker_ignoring_sigterm_is_killed_after_the_cancel_timeout,
        cancelling_a_finished_task_leaves_its_worker_alone,
        dropping_a_running_task_stops_its_worker,
        detached_task_runs_to_the_end,
        cancel_disturbs_no_other_task,
        a_cancel_stops_the_worker_while_the_pool_thread_is_busy,
    ];
    let runtimes = [Runtime::Smol, Runtime::TokioMultiThread];
    common::main_with(common::trials_under(&runtimes, &scenarios));
}
