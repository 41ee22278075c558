//! Run with: `cargo run --release --example kill_from_another_task`
//!
//! A long job, and another task that decides to stop it: the operator sees the job's progress
//! and, once it has seen enough, asks for the job to be killed. The job's owner cancels it
//! and waits until its worker process (with everything it started) is gone; the pool goes on
//! serving on a replacement.

use futures_lite::future;
use offload::{ProcessPool, TaskError};

/// Counts to `n`, reporting its progress; far longer than anyone waits for.
fn crunch(n: u64) -> u64 {
    let mut sum = 0u64;
    for i in 0..n {
        sum = sum.wrapping_add(i ^ (i >> 3));
        if i % 10_000_000 == 0 {
            offload::progress(i, n);
        }
    }
    sum
}

fn quick(x: u64) -> u64 {
    x * 2
}

/// What the job's owner hears.
enum Event {
    Finished(Result<u64, TaskError>),
    KillAsked,
}

fn main() -> Result<(), offload::Error> {
    offload::init();
    smol::block_on(async {
        let pool = ProcessPool::new(2)?;
        let (kill, kill_asked) = async_channel::bounded::<()>(1);
        let (progress_tx, progress_rx) = async_channel::unbounded::<(u64, u64)>();

        let mut job = pool
            .task(crunch)
            .on_progress(move |info| {
                if let Some(progress) = info.progress() {
                    let _ = progress_tx.try_send((progress.done, progress.total));
                }
            })
            .spawn(u64::MAX);

        // The operator: another task, which sees the progress and asks for the kill.
        let operator = smol::spawn(async move {
            let mut reports = 0;
            while let Ok((done, total)) = progress_rx.recv().await {
                reports += 1;
                println!("operator: the job is at {done} of {total}");
                if reports == 3 {
                    println!("operator: seen enough, asking for the job to be killed");
                    let _ = kill.send(()).await;
                    return;
                }
            }
        });

        // The owner: waits for the job or for the operator, whichever comes first.
        let outcome = loop {
            let event = future::or(async { Event::Finished((&mut job).await) }, async {
                let _ = kill_asked.recv().await;
                Event::KillAsked
            })
            .await;
            match event {
                Event::Finished(outcome) => break outcome,
                Event::KillAsked => {
                    let pid = job.pid().expect("the job runs");
                    // Returns once the worker is stopped and reaped.
                    job.cancel_and_wait().await;
                    let gone = !std::path::Path::new(&format!("/proc/{pid}")).exists();
                    println!("owner: cancelled the job; its worker {pid} is gone: {gone}");
                    assert!(gone);
                }
            }
        };
        operator.await;
        match outcome {
            Err(err) if err.is_cancelled() => println!("owner: the job ended: {err}"),
            other => panic!("expected a cancelled job, got {other:?}"),
        }
        println!("job: {job:?}");

        // The pool serves on, on a replacement for the worker that was stopped.
        assert_eq!(pool.spawn(quick, 21).await?, 42);
        let stats = pool.stats();
        println!(
            "pool: {} completed, {} cancelled, {} workers",
            stats.completed, stats.cancelled, stats.workers
        );
        assert_eq!(stats.cancelled, 1);
        pool.shutdown().await; // every worker reaped
        Ok(())
    })
}
