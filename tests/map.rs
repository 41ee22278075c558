//! `map` and `map_unordered`: one result per item, in order, a failing item alone, chunking
//! invisible, and dropping cancels what is left.

mod common;

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use common::{eventually, is_our_child, spin, Runtime};
use futures_lite::StreamExt;
use offload::{ProcessPool, TaskError};
use serde::{ser, Serialize, Serializer};

fn square(x: u64) -> u64 {
    x * x
}

fn picky(x: u64) -> u64 {
    if x % 100 == 7 {
        panic!("item {x} is picky");
    }
    x
}

fn fragile(x: u64) -> u64 {
    if x == 500 {
        std::process::abort();
    }
    x + 1
}

/// Refuses to encode 13.
#[derive(Debug, serde::Deserialize)]
struct Unlucky(u64);

impl Serialize for Unlucky {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            13 => Err(ser::Error::custom("13 is unlucky")),
            n => s.serialize_u64(n),
        }
    }
}

fn unwrap_unlucky(x: Unlucky) -> u64 {
    x.0
}

async fn results_come_in_input_order() {
    let pool = ProcessPool::new(2).unwrap();
    let results = pool.map(square, 0..20_000u64).await;
    assert_eq!(results.len(), 20_000);
    for (i, result) in results.into_iter().enumerate() {
        assert_eq!(result.unwrap(), (i * i) as u64);
    }
    assert!(pool.map(square, Vec::<u64>::new()).await.is_empty());
    // An iterator without a known length.
    let odd = pool.map(square, (0..1000u64).filter(|x| x % 2 == 1)).await;
    assert_eq!(odd.len(), 500);
    assert_eq!(*odd[1].as_ref().unwrap(), 9);
}

async fn a_panicking_item_fails_alone() {
    let pool = ProcessPool::new(2).unwrap();
    let results = pool.map(picky, 0..1000u64).await;
    for (i, result) in results.into_iter().enumerate() {
        match result {
            Err(TaskError::Panicked { message, location }) => {
                assert_eq!(i % 100, 7);
                assert_eq!(message, format!("item {i} is picky"));
                assert!(location.unwrap().contains("map.rs"));
            }
            Ok(v) => assert_eq!(v, i as u64),
            Err(other) => panic!("item {i}: {other:?}"),
        }
    }
}

async fn an_item_that_kills_its_worker_fails_alone() {
    let pool = ProcessPool::new(2).unwrap();
    let results = pool.map(fragile, 0..2000u64).await;
    for (i, result) in results.into_iter().enumerate() {
        if i == 500 {
            assert!(
                matches!(
                    result,
                    Err(TaskError::WorkerDied {
                        signal: Some(6),
                        ..
                    })
                ),
                "{result:?}"
            );
        } else {
            assert_eq!(result.unwrap(), i as u64 + 1, "item {i}");
        }
    }
    eventually("the dead worker is replaced", || pool.stats().replaced >= 1).await;
}

async fn an_item_that_cannot_be_encoded_fails_alone() {
    let pool = ProcessPool::new(1).unwrap();
    let results = pool.map(unwrap_unlucky, (0..30).map(Unlucky)).await;
    for (i, result) in results.into_iter().enumerate() {
        match i {
            13 => assert!(matches!(&result, Err(TaskError::Encode(m)) if m.contains("unlucky"))),
            _ => assert_eq!(result.unwrap(), i as u64),
        }
    }
}

async fn unordered_yields_every_index_once() {
    let pool = ProcessPool::new(2).unwrap();
    let mut seen = HashSet::new();
    let mut stream = pool.map_unordered(square, 0..5000u64);
    while let Some((index, result)) = stream.next().await {
        assert_eq!(result.unwrap(), (index * index) as u64);
        assert!(seen.insert(index), "index {index} twice");
    }
    assert_eq!(seen.len(), 5000);
}

async fn dropping_a_map_cancels_what_is_left() {
    let pool = ProcessPool::new(2).unwrap();
    let mut stream = pool.map_unordered(|(): ()| spin(), vec![(); 50]);
    // Start it: the first poll sends chunks, which the workers pick up.
    assert!(futures_lite::future::poll_once(stream.next())
        .await
        .is_none());
    eventually("both workers spin", || pool.stats().busy == 2).await;
    let pids: Vec<u32> = pool.tasks().iter().filter_map(|t| t.pid()).collect();
    assert_eq!(pids.len(), 2);
    drop(stream);
    for pid in pids {
        eventually("the spinning worker is gone", || !is_our_child(pid)).await;
    }
    eventually("nothing is left queued", || pool.tasks().is_empty()).await;
    assert_eq!(
        pool.spawn(square, 3).await.unwrap(),
        9,
        "the pool serves on"
    );
}

fn map_blocking_from_plain_threads() {
    let pool = ProcessPool::new(2).unwrap();
    let threads: Vec<_> = (0..3u64)
        .map(|t| {
            let pool = pool.clone();
            std::thread::spawn(move || pool.map_blocking(square, t * 100..(t + 1) * 100))
        })
        .collect();
    for (t, thread) in threads.into_iter().enumerate() {
        let results = thread.join().unwrap();
        let expected: Vec<u64> = (t as u64 * 100..(t as u64 + 1) * 100).map(square).collect();
        let got: Vec<u64> = results.into_iter().map(Result::unwrap).collect();
        assert_eq!(got, expected);
    }
}

/// Spins forever on 5; returns other items at once.
fn stuck_on_five(x: u64) -> u64 {
    if x == 5 {
        loop {
            std::hint::spin_loop();
        }
    }
    x
}

/// `map` takes the options of `TaskBuilder`: the timeout is per item, and only the item that
/// runs too long fails with it.
async fn a_per_item_timeout_fails_only_the_slow_item() {
    let pool = ProcessPool::new(2).unwrap();
    let chunks_done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = chunks_done.clone();
    let results = pool
        .task(stuck_on_five)
        .timeout(std::time::Duration::from_millis(500))
        .cancel_timeout(std::time::Duration::ZERO)
        .on_done(move |_: &offload::TaskInfo| {
            counted.fetch_add(1, Ordering::SeqCst);
        })
        .map(0..8)
        .await;
    for (i, result) in results.iter().enumerate() {
        match i {
            5 => assert!(result.as_ref().unwrap_err().is_timed_out(), "{result:?}"),
            _ => assert_eq!(result.as_ref().unwrap(), &(i as u64)),
        }
    }
    let done = chunks_done.load(Ordering::SeqCst);
    assert!((1..8).contains(&done), "on_done runs per chunk: {done}");
    assert_eq!(
        pool.spawn(square, 3).await.unwrap(),
        9,
        "the pool serves on"
    );
}

fn main() {
    let scenarios = scenarios![
        results_come_in_input_order,
        a_panicking_item_fails_alone,
        an_item_that_kills_its_worker_fails_alone,
        an_item_that_cannot_be_encoded_fails_alone,
        unordered_yields_every_index_once,
        dropping_a_map_cancels_what_is_left,
        a_per_item_timeout_fails_only_the_slow_item,
    ];
    let mut trials = common::trials_under(&[Runtime::Smol, Runtime::TokioMultiThread], &scenarios);
    trials.push(common::trial(
        "map_blocking_from_plain_threads",
        map_blocking_from_plain_threads,
    ));
    common::main_with(trials);
}
