//! Run with: `cargo run --release --example executors`
//!
//! A library function that takes any `E: Executor`, so that its caller decides where the work
//! runs: on a pool of long-lived workers, or in a fresh process per call (`Isolated`).

use offload::{Executor, Isolated, ProcessPool, TaskError};

/// Counts the primes below `limit` (deliberately naive CPU work).
fn count_primes(limit: u64) -> u64 {
    (2..limit)
        .filter(|&n| (2..).take_while(|d| d * d <= n).all(|d| n % d != 0))
        .count() as u64
}

/// The "library": counts primes below each limit, wherever the caller wants.
async fn prime_counts<E: Executor>(executor: &E, limits: &[u64]) -> Result<Vec<u64>, TaskError> {
    let tasks: Vec<_> = limits
        .iter()
        .map(|&limit| executor.spawn(count_primes, limit))
        .collect();
    let mut counts = Vec::with_capacity(tasks.len());
    for mut task in tasks {
        counts.push((&mut task).await?);
        println!("  {task:?}");
    }
    Ok(counts)
}

fn main() -> Result<(), offload::Error> {
    offload::init();
    smol::block_on(async {
        let limits = [200_000, 300_000, 400_000, 500_000];

        println!("on a pool of 2 long-lived workers:");
        let pool = ProcessPool::new(2)?;
        let pooled = prime_counts(&pool, &limits).await?;

        println!("in a fresh process per call, at most 2 at once:");
        let isolated = Isolated::with_max_procs(2);
        let fresh = prime_counts(&isolated, &limits).await?;

        assert_eq!(pooled, fresh);
        println!("prime counts: {pooled:?}");
        pool.shutdown().await;
        isolated.shutdown().await;
        Ok(())
    })
}
