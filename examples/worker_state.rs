//! Run with: `cargo run --release --example worker_state`
//!
//! State loaded once per worker by the pool's `init`, kept in the worker's own `static` between
//! its tasks, on an elastic pool that grows under load and shrinks when idle.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use offload::ProcessPool;

/// The worker's "model": loaded once by `init`, read by every task the worker runs.
static MODEL: OnceLock<(u32, Vec<u64>)> = OnceLock::new();

/// Runs in every worker before its first task; a slow load paid once per worker.
fn load_model() -> Result<(), String> {
    std::thread::sleep(Duration::from_millis(200));
    let weights = (1..=1000).collect();
    MODEL
        .set((std::process::id(), weights))
        .map_err(|_| "the model was loaded twice".to_string())
}

/// Uses the worker's model (for 100 ms); says which worker loaded it.
fn score(x: u64) -> (u32, u64) {
    std::thread::sleep(Duration::from_millis(100));
    let (loaded_by, weights) = MODEL.get().expect("init loaded the model");
    (*loaded_by, weights.iter().map(|w| w * x).sum())
}

fn main() -> Result<(), offload::Error> {
    let pool = ProcessPool::builder()
        .workers(4)
        .min_workers(1)
        .idle_timeout(Duration::from_secs(1))
        .init(load_model)
        .env("OMP_NUM_THREADS", "1")
        .build()?;
    let started = Instant::now();
    pool.ready_blocking()?;
    println!(
        "ready after {:?}: {} worker has loaded the model",
        started.elapsed(),
        pool.stats().workers
    );
    let tasks: Vec<_> = (0..16).map(|x| pool.spawn(score, x)).collect();
    std::thread::sleep(Duration::from_millis(500));
    println!("under load: {:?}", pool.stats());
    for task in tasks {
        let (loaded_by, value) = task.wait()?;
        println!("score {value:>9} by the worker that loaded its model: {loaded_by}");
    }
    std::thread::sleep(Duration::from_millis(1500));
    println!("after 1.5 s idle: {:?}", pool.stats());
    Ok(())
}
