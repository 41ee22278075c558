//! Run with: `cargo bench --bench inside`
//!
//! Prints, in one run, what the reports of a running task cost (docs/performance.md, "Inside
//! a running task"), medians of interleaved runs:
//!
//! 1. `offload::progress`: a task that calls it 1,000,000 times against the same loop without
//!    it; the difference per call, and in all (target: under 0.2 s for the million);
//! 2. a stream of 1,000,000 `u64`s and of 20,000 1 KiB buffers, beside `map` producing the same
//!    items (one small argument per item): items/s and MB/s;
//! 3. `capture_output`: the round trip of a trivial task with and without it.

use std::hint::black_box;
use std::time::{Duration, Instant};

use futures_lite::{future, StreamExt};
use offload::ProcessPool;
use serde_bytes::ByteBuf;

const ROUNDS: usize = 7;
const CALLS: u64 = 1_000_000;

fn with_progress(n: u64) -> u64 {
    let mut sum = 0u64;
    for i in 0..n {
        sum = black_box(sum.wrapping_add(i));
        offload::progress(i + 1, n);
    }
    sum
}

fn without_progress(n: u64) -> u64 {
    let mut sum = 0u64;
    for i in 0..n {
        sum = black_box(sum.wrapping_add(i));
        black_box((i + 1, n));
    }
    sum
}

fn numbers(n: u64) -> std::ops::Range<u64> {
    0..n
}

fn number(i: u64) -> u64 {
    i
}

fn buffers(n: u64) -> impl Iterator<Item = ByteBuf> {
    (0..n).map(|i| ByteBuf::from(vec![i as u8; 1024]))
}

fn buffer(i: u64) -> ByteBuf {
    ByteBuf::from(vec![i as u8; 1024])
}

fn trivial(x: u64) -> u64 {
    x + 1
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn time(run: impl FnOnce()) -> Duration {
    let started = Instant::now();
    run();
    started.elapsed()
}

/// The medians of `rounds` runs of `a` and of `b`, interleaved round by round so that both see
/// the same machine; each gets the round's number.
fn interleaved(
    rounds: usize,
    mut a: impl FnMut(usize),
    mut b: impl FnMut(usize),
) -> (Duration, Duration) {
    let (mut of_a, mut of_b) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        of_a.push(time(|| a(round)));
        of_b.push(time(|| b(round)));
    }
    (median(&mut of_a), median(&mut of_b))
}

fn progress_cost(pool: &ProcessPool) {
    let (with, without) = interleaved(
        ROUNDS,
        |_| {
            pool.spawn(with_progress, CALLS).wait().unwrap();
        },
        |_| {
            pool.spawn(without_progress, CALLS).wait().unwrap();
        },
    );
    let extra = with.saturating_sub(without);
    println!(
        "1. progress: {CALLS} calls in {:.1} ms against {:.1} ms without: {:.1} ms more \
         (target < 200 ms), {:.1} ns per call",
        with.as_secs_f64() * 1e3,
        without.as_secs_f64() * 1e3,
        extra.as_secs_f64() * 1e3,
        extra.as_secs_f64() * 1e9 / CALLS as f64
    );
}

fn report(what: &str, n: u64, bytes: usize, (streamed, mapped): (Duration, Duration)) {
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    let mbs = |d: Duration| (n as f64 * bytes as f64) / d.as_secs_f64() / 1e6;
    println!(
        "2. {what}: stream {:.0} items/s ({:.1} MB/s), map {:.0} items/s ({:.1} MB/s): \
         stream/map {:.2}x",
        rate(streamed),
        mbs(streamed),
        rate(mapped),
        mbs(mapped),
        mapped.as_secs_f64() / streamed.as_secs_f64()
    );
}

fn stream_throughput(pool: &ProcessPool) {
    const SMALL: u64 = 1_000_000;
    let small = interleaved(
        ROUNDS,
        |_| {
            let count = future::block_on(pool.spawn_stream(numbers, SMALL).count());
            assert_eq!(count as u64, SMALL);
        },
        |_| {
            let results = pool.map_blocking(number, 0..SMALL);
            assert_eq!(results.len() as u64, SMALL);
        },
    );
    // A u64 below 2^32 encodes in at most 5 bytes; the MB/s count 8.
    report("1,000,000 u64 items", SMALL, 8, small);

    const LARGE: u64 = 20_000;
    let large = interleaved(
        ROUNDS,
        |_| {
            let count = future::block_on(pool.spawn_stream(buffers, LARGE).count());
            assert_eq!(count as u64, LARGE);
        },
        |_| {
            let results = pool.map_blocking(buffer, 0..LARGE);
            assert_eq!(results.len() as u64, LARGE);
        },
    );
    report("20,000 items of 1 KiB", LARGE, 1024, large);
}

fn capture_cost(pool: &ProcessPool) {
    const TRIPS: usize = 2000;
    let (plain, captured) = interleaved(
        TRIPS,
        |i| {
            pool.spawn(trivial, i as u64).wait().unwrap();
        },
        |i| {
            pool.task(trivial)
                .capture_output()
                .spawn(i as u64)
                .wait()
                .unwrap();
        },
    );
    println!(
        "3. capture_output: trivial round trip {:.1} µs without, {:.1} µs with: {:.1} µs per \
         task (median of {TRIPS} each, interleaved)",
        plain.as_secs_f64() * 1e6,
        captured.as_secs_f64() * 1e6,
        captured.saturating_sub(plain).as_secs_f64() * 1e6
    );
}

fn main() {
    offload::init();
    let one = ProcessPool::new(1).unwrap();
    one.ready_blocking().unwrap();
    progress_cost(&one);
    stream_throughput(&one);
    capture_cost(&one);
}
