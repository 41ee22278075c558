//! A storm: 10,000 tasks on a pool of 4 with panics, aborts, exits, timeouts, cancels, drops
//! and SIGKILLs from outside, in a seeded random mix. Every task ends exactly once, with the
//! outcome its kind calls for; the stats add up; after shutdown no descriptor, zombie or
//! orphan is left.
//!
//! One test in its own binary: descriptors and children are process-wide.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{children, eventually, open_fds, spin, Runtime};
use offload::{ProcessPool, TaskError, TaskInfo};

const TASKS: u64 = 10_000;
const OUTSIDE_KILLS: usize = 20;
const RUNNING_CANCELS: usize = 20;

fn double(x: u64) -> u64 {
    x * 2
}

fn panic_with(x: u64) -> u64 {
    panic!("storm {x}")
}

fn abort_now(_: u64) -> u64 {
    std::process::abort()
}

fn exit_with(code: u64) -> u64 {
    std::process::exit(code as i32)
}

fn sleep_short(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(20));
    x * 2
}

fn sleep_long(_: u64) -> u64 {
    std::thread::sleep(Duration::from_secs(60));
    0
}

/// What a task of each kind must end with.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Ok,
    Panic,
    Abort,
    Exit,
    Timeout,
    Cancel,
    Drop,
}

fn kind_of(roll: u64) -> Kind {
    match roll % 100 {
        0..=69 => Kind::Ok,
        70..=74 => Kind::Panic,
        75..=76 => Kind::Abort,
        77..=78 => Kind::Exit,
        79..=81 => Kind::Timeout,
        82..=91 => Kind::Cancel,
        _ => Kind::Drop,
    }
}

fn check(kind: Kind, x: u64, result: &Result<u64, TaskError>) {
    let ok = match (kind, result) {
        (Kind::Ok, Ok(v)) => *v == x * 2,
        (Kind::Panic, Err(TaskError::Panicked { message, .. })) => *message == format!("storm {x}"),
        (
            Kind::Abort,
            Err(TaskError::WorkerDied {
                signal: Some(6), ..
            }),
        ) => true,
        (Kind::Exit, Err(TaskError::WorkerDied { code: Some(c), .. })) => *c as u64 == x % 100 + 1,
        (Kind::Timeout, Err(TaskError::TimedOut { .. })) => true,
        (Kind::Cancel, Err(TaskError::Cancelled)) => true,
        _ => false,
    };
    assert!(ok, "task {x} of kind {kind:?} ended with {result:?}");
}

async fn storm(pool: ProcessPool) {
    // Callback counts per task id: every task must report its end exactly once.
    let ends: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let starts = Arc::new(AtomicU64::new(0));
    let on_end = {
        let ends = ends.clone();
        move |info: &TaskInfo| *ends.lock().unwrap().entry(info.id()).or_default() += 1
    };
    let on_start = {
        let starts = starts.clone();
        move |_: &TaskInfo| {
            starts.fetch_add(1, Ordering::Relaxed);
        }
    };
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut roll = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    let mut counts: HashMap<String, u64> = HashMap::new();
    for x in 0..TASKS {
        let kind = kind_of(roll());
        *counts.entry(format!("{kind:?}")).or_default() += 1;
        let task = match kind {
            Kind::Ok => pool
                .task(double)
                .on_done(on_end.clone())
                .on_error(on_end.clone())
                .on_start(on_start.clone())
                .spawn(x),
            Kind::Panic => pool
                .task(panic_with)
                .on_done(on_end.clone())
                .on_error(on_end.clone())
                .spawn(x),
            Kind::Abort => pool
                .task(abort_now)
                .on_done(on_end.clone())
                .on_error(on_end.clone())
                .spawn(x),
            Kind::Exit => pool
                .task(exit_with)
                .on_done(on_end.clone())
                .on_error(on_end.clone())
                .spawn(x % 100 + 1),
            Kind::Timeout => pool
                .task(|_: u64| -> u64 { spin() as u64 })
                .timeout(Duration::from_millis(5))
                .on_done(on_end.clone())
                .on_error(on_end.clone())
                .spawn(x),
            Kind::Cancel => pool
                .task(|_: u64| -> u64 { spin() as u64 })
                .on_done(on_end.clone())
                .on_error(on_end.clone())
                .spawn(x),
            Kind::Drop => pool
                .task(sleep_short)
                .cancel_timeout(Duration::from_millis(100))
                .on_done(on_end.clone())
                .on_error(on_end.clone())
                .spawn(x),
        };
        match kind {
            // Dropped later, while some run and some are still queued.
            Kind::Drop => dropped.push(task),
            Kind::Cancel => {
                assert!(task.cancel());
                kept.push((kind, x, task));
            }
            _ => kept.push((kind, x, task)),
        }
    }
    let half = kept.len() / 2;
    for (i, (kind, x, task)) in kept.into_iter().enumerate() {
        if i == half {
            dropped.clear();
        }
        let result = task.await;
        check(kind, x, &result);
    }

    // Cancels of running tasks.
    for _ in 0..RUNNING_CANCELS {
        let task = pool
            .task(|_: u64| -> u64 { spin() as u64 })
            .on_error(on_end.clone())
            .spawn(0);
        eventually("it runs", || task.status() == "running").await;
        let pid = task.pid().unwrap();
        assert!(task.cancel_and_wait().await);
        assert!(!common::is_our_child(pid));
        assert!(matches!(task.await, Err(TaskError::Cancelled)));
    }

    // SIGKILLs from outside, each while its task runs.
    for _ in 0..OUTSIDE_KILLS {
        let task = pool.task(sleep_long).on_error(on_end.clone()).spawn(0);
        eventually("the victim runs", || task.status() == "running").await;
        let pid = task.pid().unwrap() as i32;
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
        let result = task.await;
        assert!(
            matches!(
                result,
                Err(TaskError::WorkerDied {
                    signal: Some(9),
                    ..
                })
            ),
            "{result:?}"
        );
    }

    let total = TASKS + (OUTSIDE_KILLS + RUNNING_CANCELS) as u64;
    eventually("every end is reported", || {
        ends.lock().unwrap().len() as u64 == total
    })
    .await;
    assert!(
        ends.lock().unwrap().values().all(|&n| n == 1),
        "an end reported twice"
    );
    let stats = pool.stats();
    assert_eq!(
        stats.completed + stats.failed + stats.cancelled,
        total,
        "{stats:?}"
    );
    // A dropped task either finished before it was dropped or was cancelled.
    assert_eq!(
        stats.completed + stats.cancelled,
        counts["Ok"] + counts["Cancel"] + counts["Drop"] + RUNNING_CANCELS as u64,
        "{stats:?}"
    );
    assert!(stats.completed >= counts["Ok"]);
    assert!(stats.cancelled >= counts["Cancel"] + RUNNING_CANCELS as u64);
    let deaths = counts["Abort"] + counts["Exit"] + OUTSIDE_KILLS as u64;
    assert!(stats.replaced >= deaths, "{stats:?}");
    assert!(starts.load(Ordering::Relaxed) >= counts["Ok"]);
    pool.shutdown().await;
    eprintln!("storm: {total} tasks, {counts:?}, {stats:?}, lost: 0");
}

fn a_storm_loses_nothing_and_leaks_nothing() {
    // Warm up: the reactor, the reaper and the runtimes' own descriptors exist from here on.
    Runtime::Smol.block_on(async {
        let pool = ProcessPool::new(1).unwrap();
        pool.spawn(double, 1).await.unwrap();
        pool.shutdown().await;
    });
    let baseline = open_fds();
    let started = Instant::now();
    let pool = ProcessPool::new(4).unwrap();
    Runtime::Smol.block_on(storm(pool));
    common::wait_until("no child is left", || children().is_empty());
    common::wait_until("the descriptors are back to the baseline", || {
        open_fds() <= baseline
    });
    eprintln!("storm took {:?}", started.elapsed());
}

fn main() {
    common::main_with(vec![common::trial(
        "a_storm_loses_nothing_and_leaks_nothing",
        a_storm_loses_nothing_and_leaks_nothing,
    )]);
}
