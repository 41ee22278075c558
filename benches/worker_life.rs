//! Run with: `cargo bench --bench worker_life`
//!
//! Prints, in one run, what a worker's life costs (docs/performance.md, "Worker life"):
//!
//! 1. start-up of a pool of 2 until `ready()`, without an `init` and with an empty one,
//!    interleaved, medians and their ratio: the cost of the initializer's extra round trip;
//! 2. a pool of 4 whose `init` always fails: worker processes started, and start-up failures
//!    counted, in its first 2 s and first 10 s (the breaker's back-off at work), with a task
//!    spawned every 100 ms;
//! 3. an elastic pool (`min_workers(1).workers(4)`, `idle_timeout` 1 s): time for 8 concurrent
//!    tasks to have 4 workers, and time from the last result back to 1 worker.

use std::time::{Duration, Instant};

use offload::ProcessPool;

/// Start-ups measured per variant.
const STARTS: usize = 30;

fn trivial(x: u64) -> u64 {
    x + 1
}

fn nothing() {}

fn no_gpu() -> Result<(), String> {
    Err("no GPU on this node".into())
}

/// Sleeps `ms`, then returns the pid that ran it.
fn hold(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Builds a pool of 2 (with `init` if `with_init`) and waits until it is ready.
fn start_up(with_init: bool) -> Duration {
    let started = Instant::now();
    let mut builder = ProcessPool::builder();
    builder.workers(2);
    if with_init {
        builder.init(nothing);
    }
    let pool = builder.build().unwrap();
    pool.ready_blocking().unwrap();
    let elapsed = started.elapsed();
    // Not timed: the next start should not share the CPUs with this pool's exit.
    pool.shutdown_blocking();
    elapsed
}

fn start_up_cost() {
    let (mut plain, mut with_init) = (Vec::new(), Vec::new());
    for _ in 0..STARTS {
        plain.push(start_up(false));
        with_init.push(start_up(true));
    }
    let (plain, with_init) = (median(&mut plain), median(&mut with_init));
    println!(
        "1. start-up of 2 workers until ready: {:.2} ms without init, {:.2} ms with an empty init \
         ({:.2}x), median of {STARTS} each, interleaved",
        millis(plain),
        millis(with_init),
        with_init.as_secs_f64() / plain.as_secs_f64()
    );
}

fn failing_init() {
    let pool = ProcessPool::builder()
        .workers(4)
        .init(no_gpu)
        .build()
        .unwrap();
    let built = Instant::now();
    let mut tasks = Vec::new();
    let mut at_2s = None;
    while built.elapsed() < Duration::from_secs(10) {
        tasks.push(pool.spawn(trivial, 1));
        if at_2s.is_none() && built.elapsed() >= Duration::from_secs(2) {
            at_2s = Some(pool.stats().start_failures);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let at_10s = pool.stats().start_failures;
    let spawned = tasks.len();
    let failed = tasks
        .into_iter()
        .filter(|t| t.is_finished())
        .map(|t| t.wait().unwrap_err())
        .filter(|e| e.is_init_failed())
        .count();
    println!(
        "2. init that always fails, 4 workers, a task every 100 ms: {} start-ups (all failed) in \
         the first 2 s, {at_10s} in 10 s; of {spawned} tasks, {failed} failed with InitFailed, \
         the others wait for the next attempt",
        at_2s.unwrap_or(at_10s)
    );
    pool.shutdown_now_blocking();
}

fn elastic() {
    let pool = ProcessPool::builder()
        .workers(4)
        .min_workers(1)
        .idle_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    pool.ready_blocking().unwrap();
    let (mut grow, mut shrink) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let started = Instant::now();
        let tasks: Vec<_> = (0..8).map(|_| pool.spawn(hold, 300)).collect();
        while pool.stats().workers < 4 {
            std::thread::sleep(Duration::from_millis(1));
        }
        grow.push(started.elapsed());
        for task in tasks {
            task.wait().unwrap();
        }
        let done = Instant::now();
        while pool.stats().workers > 1 {
            std::thread::sleep(Duration::from_millis(1));
        }
        shrink.push(done.elapsed());
    }
    println!(
        "3. elastic 1..4 workers, idle_timeout 1 s, 8 tasks of 300 ms: 4 workers {:.1} ms after \
         the spawn, back to 1 worker {:.0} ms after the last result (medians of 5)",
        millis(median(&mut grow)),
        millis(median(&mut shrink))
    );
}

fn main() {
    offload::init();
    start_up_cost();
    failing_init();
    elastic();
}
