//! Run inside a Slurm job: `sbatch examples/slurm_batch.sh target/release/examples/slurm_job`
//! (after `cargo build --release --example slurm_job`).
//!
//! The program a batch script runs: a pool whose workers are job steps of this job (`srun`,
//! which offload runs with `--overlap` inside an allocation), as many as the job has tasks.
//! Prints where each piece of work ran: its host and its pid there.

use offload::{Launcher, ProcessPool};

/// Sums the squares below `n` (CPU work that takes a moment).
fn sum_of_squares(n: u64) -> u64 {
    (0..n).map(|i| i.wrapping_mul(i)).fold(0, u64::wrapping_add)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    offload::init();
    let job = std::env::var("SLURM_JOB_ID")
        .map_err(|_| "not inside a Slurm job: run it with sbatch (see the top of this file)")?;
    let workers = std::env::var("SLURM_NTASKS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    println!("job {job}: {workers} workers as job steps");
    let pool = ProcessPool::builder()
        .workers(workers)
        .launcher(Launcher::srun())
        .build()?;
    let tasks: Vec<_> = (0..4 * workers as u64)
        .map(|i| pool.spawn(sum_of_squares, 1_000_000 + i))
        .collect();
    for mut task in tasks {
        let sum = futures_lite::future::block_on(&mut task)?;
        println!(
            "sum of squares below {}: {sum} (on {} pid {})",
            task.args().unwrap_or_default(),
            task.host().unwrap_or_default(),
            task.pid().unwrap_or_default()
        );
    }
    pool.shutdown_blocking();
    println!("job {job}: done");
    Ok(())
}
