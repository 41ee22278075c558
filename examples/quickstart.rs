//! Run with: `cargo run --release --example quickstart`
//!
//! Offloads real CPU work (naive Fibonacci numbers) to a pool of worker processes, several
//! tasks at once, while a ticker on the same async loop shows that the loop stays responsive.
//! Prints what each task knows about itself, what the pool is doing, and what a cancel does.

use std::time::{Duration, Instant};

use futures_lite::future;
use smol::Timer;

fn fib(n: u64) -> u64 {
    if n < 2 {
        n
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

fn main() -> Result<(), offload::Error> {
    offload::init(); // in a worker process this serves tasks and never returns

    smol::block_on(async {
        let pool = offload::ProcessPool::builder().build()?;
        println!("pool of {} worker processes", pool.workers());

        let started = Instant::now();
        let mut tasks: Vec<_> = (36..42).map(|n| (n, pool.spawn(fib, n))).collect();
        for (n, task) in &tasks {
            println!("fib({n}) spawned: {task:?}");
        }
        // A moment later the first tasks run, each in a worker with its own pid.
        while pool.stats().busy < pool.workers().min(tasks.len()) {
            Timer::after(Duration::from_millis(1)).await;
        }
        println!("{:?}", pool.stats());
        for info in pool.tasks() {
            println!("  {info:?}");
        }

        // A ticker on the same loop: it keeps ticking while the workers compute.
        let ticker = async {
            let mut ticks = 0u32;
            let mut worst = Duration::ZERO;
            loop {
                let before = Instant::now();
                Timer::after(Duration::from_millis(50)).await;
                worst = worst.max(before.elapsed().saturating_sub(Duration::from_millis(50)));
                ticks += 1;
                if ticks % 5 == 0 {
                    println!("  tick {ticks}: loop responsive, worst timer lag {worst:?}");
                }
            }
        };
        let work = async {
            for (n, task) in &mut tasks {
                let value = (&mut *task).await?;
                println!(
                    "fib({n}) = {value}: {task:?} queued {:?}",
                    task.queued().unwrap_or_default()
                );
            }
            Ok::<(), offload::Error>(())
        };
        future::or(work, async {
            ticker.await;
            Ok(())
        })
        .await?;

        let sum = pool.spawn(|a: u64, b: u64| a + b, (40, 2)).await?;
        println!("a closure of two arguments: {sum}");

        // Cancelling stops the work: the worker computing fib(60) is stopped and replaced.
        let hopeless = pool.spawn(fib, 60);
        while hopeless.pid().is_none() {
            Timer::after(Duration::from_millis(1)).await;
        }
        println!("fib(60) runs: {hopeless:?}");
        hopeless.cancel_and_wait().await;
        println!("fib(60) cancelled: {hopeless:?}");
        while pool.stats().workers < pool.workers() {
            Timer::after(Duration::from_millis(1)).await; // the replacement is starting
        }
        println!("{:?}", pool.stats());
        println!("all done in {:?}", started.elapsed());
        Ok(())
    })
}
