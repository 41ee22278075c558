//! Run with: `cargo bench --bench overhead`
//!
//! Prints, in one run and side by side, the figures that bound what a process pool costs:
//! a raw pipe ping-pong with a child process (the floor), offload's trivial-task round trip
//! under smol and under Tokio, the cold start of a pool of two workers, and how long a cancel
//! takes to free the CPU and to have a replacement worker serving.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use offload::ProcessPool;

/// Round trips per measured series.
const ROUND_TRIPS: usize = 20_000;
/// Cold starts measured.
const COLD_STARTS: usize = 50;
/// Cancels measured.
const CANCELS: usize = 100;

fn trivial(x: u64) -> u64 {
    x + 1
}

fn spin() -> u64 {
    loop {
        std::hint::spin_loop();
    }
}

/// The child side of the raw ping-pong: echo 16-byte messages until stdin closes.
fn raw_echo() -> ! {
    let (mut input, mut output) = (std::io::stdin().lock(), std::io::stdout().lock());
    let mut msg = [0u8; 16];
    while input.read_exact(&mut msg).is_ok() {
        output.write_all(&msg).unwrap();
        output.flush().unwrap();
    }
    std::process::exit(0)
}

/// Median and 99th percentile of `samples`.
fn percentiles(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    let p = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (p(0.50), p(0.99))
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn raw_pipe_round_trips() -> Vec<Duration> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg("--raw-echo")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut to, mut from) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
    let mut msg = [7u8; 16];
    let mut samples = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
        let start = Instant::now();
        to.write_all(&msg).unwrap();
        from.read_exact(&mut msg).unwrap();
        samples.push(start.elapsed());
    }
    drop(to);
    child.wait().unwrap();
    samples
}

async fn offload_round_trips(pool: &ProcessPool) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(ROUND_TRIPS);
    for i in 0..ROUND_TRIPS as u64 {
        let start = Instant::now();
        let v = pool.spawn(trivial, i).await.unwrap();
        samples.push(start.elapsed());
        assert_eq!(v, i + 1);
    }
    samples
}

fn cold_starts() -> Vec<Duration> {
    (0..COLD_STARTS)
        .map(|_| {
            let start = Instant::now();
            let pool = ProcessPool::new(2).unwrap();
            pool.spawn(trivial, 1).wait().unwrap();
            start.elapsed()
        })
        .collect()
}

/// For a spinning task on a one-worker pool: time from `cancel_and_wait` to the worker being
/// reaped, and to a replacement worker having served a task.
fn cancels() -> (Vec<Duration>, Vec<Duration>) {
    let pool = ProcessPool::new(1).unwrap();
    let mut reaped = Vec::with_capacity(CANCELS);
    let mut replaced = Vec::with_capacity(CANCELS);
    for _ in 0..CANCELS {
        pool.spawn(trivial, 0).wait().unwrap(); // a worker is up
        let task = pool.spawn(spin, ());
        while task.status() != "running" {
            std::thread::yield_now();
        }
        let start = Instant::now();
        futures_lite::future::block_on(task.cancel_and_wait());
        reaped.push(start.elapsed());
        pool.spawn(trivial, 1).wait().unwrap();
        replaced.push(start.elapsed());
    }
    (reaped, replaced)
}

/// Trivial tasks per second: spawned one by one and awaited together, and through `map`.
fn throughput(pool: &ProcessPool) -> (f64, f64) {
    const SPAWNED: u64 = 100_000;
    const MAPPED: u64 = 2_000_000;
    let start = Instant::now();
    let tasks: Vec<_> = (0..SPAWNED).map(|i| pool.spawn(trivial, i)).collect();
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.wait().unwrap(), i as u64 + 1);
    }
    let spawned = SPAWNED as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    let results = pool.map_blocking(trivial, 0..MAPPED);
    let mapped = MAPPED as f64 / start.elapsed().as_secs_f64();
    assert!(results
        .iter()
        .enumerate()
        .all(|(i, r)| r.as_ref().ok() == Some(&(i as u64 + 1))));
    (spawned, mapped)
}

fn main() {
    offload::init();
    if std::env::args().nth(1).as_deref() == Some("--raw-echo") {
        raw_echo();
    }
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let pool = ProcessPool::new(2).unwrap();
    pool.spawn(trivial, 0).wait().unwrap(); // workers are ready

    let (raw50, raw99) = percentiles(&mut raw_pipe_round_trips());
    let (smol50, smol99) = percentiles(&mut smol::block_on(offload_round_trips(&pool)));
    let tokio_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (tokio50, tokio99) = percentiles(&mut tokio_rt.block_on(offload_round_trips(&pool)));
    let (wait50, wait99) = percentiles(
        &mut (0..ROUND_TRIPS as u64)
            .map(|i| {
                let start = Instant::now();
                pool.spawn(trivial, i).wait().unwrap();
                start.elapsed()
            })
            .collect::<Vec<_>>(),
    );
    let (cold50, cold99) = percentiles(&mut cold_starts());
    let (mut reaped, mut replaced) = cancels();
    let (spawned_per_s, mapped_per_s) = throughput(&pool);
    let (reaped50, reaped99) = percentiles(&mut reaped);
    let (replaced50, replaced99) = percentiles(&mut replaced);

    println!("figure                                   p50          p99   ratio to raw p50");
    println!(
        "raw pipe ping-pong, 16 B            {:>8.1} µs  {:>8.1} µs",
        micros(raw50),
        micros(raw99)
    );
    for (name, p50, p99) in [
        ("offload round trip, smol", smol50, smol99),
        ("offload round trip, tokio", tokio50, tokio99),
        ("offload round trip, wait()", wait50, wait99),
    ] {
        println!(
            "{name:<34}  {:>8.1} µs  {:>8.1} µs   {:>5.1}x",
            micros(p50),
            micros(p99),
            p50.as_secs_f64() / raw50.as_secs_f64()
        );
    }
    println!("trivial tasks, spawned one by one      {spawned_per_s:>10.0} /s");
    println!("trivial items through map              {mapped_per_s:>10.0} /s");
    for (name, p50, p99) in [
        ("cold start: pool of 2 + first result", cold50, cold99),
        ("cancel of a spinning task → reaped", reaped50, reaped99),
        (
            "cancel → a replacement served a task",
            replaced50,
            replaced99,
        ),
    ] {
        println!(
            "{name:<37} {:>8.2} ms  {:>8.2} ms",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
    }
}
