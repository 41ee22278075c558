//! `TaskScope`: its tasks all end with it; dropping it (or the future that owns it) stops
//! them; a race keeps the first result and kills the rest.

mod common;

use common::{eventually, is_our_child, sleep_ms, spin, Runtime};
use offload::{ProcessPool, TaskScope};

fn fib(n: u64) -> u64 {
    if n < 2 {
        n
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

async fn join_waits_for_every_task_in_order() {
    let pool = ProcessPool::new(2).unwrap();
    let mut scope = TaskScope::new();
    for n in [25, 5, 20, 1] {
        scope.spawn(&pool, fib, n);
    }
    assert_eq!(scope.len(), 4);
    let results: Vec<u64> = scope.join().await.into_iter().map(Result::unwrap).collect();
    assert_eq!(results, [75025, 5, 6765, 1]);
}

async fn dropping_the_scope_stops_every_task() {
    let pool = ProcessPool::new(2).unwrap();
    let mut scope = TaskScope::new();
    scope.spawn(&pool, spin, ());
    scope.spawn(&pool, spin, ());
    scope.spawn(&pool, spin, ()); // queued
    eventually("two spin", || pool.stats().busy == 2).await;
    let pids: Vec<u32> = scope.tasks().filter_map(|(_, t)| t.pid()).collect();
    assert_eq!(pids.len(), 2);
    // The future that owns the scope is dropped before it completes.
    let join = scope.join();
    assert!(futures_lite::future::poll_once(Box::pin(join))
        .await
        .is_none());
    for pid in pids {
        eventually("the scope's workers are gone", || !is_our_child(pid)).await;
    }
    eventually("nothing is queued", || pool.tasks().is_empty()).await;
    assert_eq!(pool.stats().cancelled, 3);
}

async fn a_race_keeps_the_first_result_and_kills_the_rest() {
    let pool = ProcessPool::new(2).unwrap();
    let mut scope = TaskScope::new();
    let slow = scope.spawn(&pool, spin, ());
    let fast = scope.spawn(&pool, sleep_ms, 20);
    let (winner, result) = scope.next().await.unwrap();
    assert_eq!(winner, fast);
    let fast_pid = result.unwrap();
    let slow_pid = scope
        .tasks()
        .find(|(i, _)| *i == slow)
        .unwrap()
        .1
        .pid()
        .unwrap();
    drop(scope);
    eventually("the loser's worker is gone", || !is_our_child(slow_pid)).await;
    assert!(is_our_child(fast_pid), "the winner's worker serves on");
}

fn main() {
    let scenarios = scenarios![
        join_waits_for_every_task_in_order,
        dropping_the_scope_stops_every_task,
        a_race_keeps_the_first_result_and_kills_the_rest,
    ];
    common::main_with(common::trials_under(
        &[Runtime::Smol, Runtime::TokioMultiThread],
        &scenarios,
    ));
}
