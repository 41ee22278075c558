//! After a pool's busy life (results, large ones, panics, deaths, cancels, timeouts, drops) and its
//! shutdown, the process holds no more file descriptors than before and has no children.
//!
//! One test in its own binary: descriptors and children are process-wide.

mod common;

use std::time::Duration;

use common::{children, echo, eventually, open_fds, sleep_ms, spin, trial, Runtime};
use offload::ProcessPool;
use serde_bytes::ByteBuf;

fn boom() -> u32 {
    panic!("boom")
}

fn exit_3() -> u32 {
    std::process::exit(3)
}

fn exit_holding(_: ByteBuf) -> u32 {
    std::process::exit(4)
}

async fn busy_life(pool: ProcessPool) {
    let ok: Vec<_> = (0..50).map(|i| pool.spawn(sleep_ms, i % 3)).collect();
    let panicked = pool.spawn(boom, ());
    let died = pool.spawn(exit_3, ());
    // Large frames, which go through shared memory both ways, and a worker that dies with
    // one in it.
    let large = ByteBuf::from(vec![7; 4 << 20]);
    assert_eq!(pool.spawn(echo, large.clone()).await.unwrap(), large);
    assert!(pool
        .spawn(exit_holding, large)
        .await
        .unwrap_err()
        .is_worker_died());
    let timed_out = pool.task(spin).timeout(Duration::from_millis(20)).spawn(());
    let cancelled = pool.spawn(spin, ());
    let dropped = pool.spawn(spin, ());
    for task in ok {
        task.await.unwrap();
    }
    assert!(panicked.await.unwrap_err().is_panicked());
    assert!(died.await.unwrap_err().is_worker_died());
    assert!(timed_out.await.unwrap_err().is_timed_out());
    eventually("the spinners run", || {
        cancelled.status() == "running" && dropped.status() == "running"
    })
    .await;
    cancelled.cancel();
    drop(dropped);
    assert!(cancelled.await.unwrap_err().is_cancelled());
    pool.spawn(sleep_ms, 1).detach();
    pool.shutdown().await;
}

fn nothing_leaks_after_a_busy_life_and_shutdown() {
    // Warm up: the reactor, the reaper and the default allocations exist from here on.
    Runtime::Smol.block_on(async {
        let pool = ProcessPool::new(1).unwrap();
        pool.spawn(sleep_ms, 0).await.unwrap();
        pool.shutdown().await;
    });
    let baseline = open_fds();
    assert_eq!(children(), Vec::<u32>::new());

    for runtime in [Runtime::Smol, Runtime::TokioMultiThread] {
        let pool = ProcessPool::new(2).unwrap();
        runtime.block_on(busy_life(pool));
    }
    // And a pool dropped without shutdown, which winds down in the background.
    let pool = ProcessPool::new(2).unwrap();
    pool.spawn(sleep_ms, 5).wait().unwrap();
    drop(pool);

    common::wait_until("no child is left", || children().is_empty());
    common::wait_until("the descriptors are back to the baseline", || {
        open_fds() <= baseline
    });
}

fn main() {
    common::main_with(vec![trial(
        "nothing_leaks_after_a_busy_life_and_shutdown",
        nothing_leaks_after_a_busy_life_and_shutdown,
    )]);
}
