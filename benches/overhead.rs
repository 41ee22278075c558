//! Run with: `cargo bench --bench overhead`
//!
//! Prints, in one run and side by side, what offload costs next to what the operating system
//! allows, on a pool of 2 workers (docs/performance.md explains each figure):
//!
//! 1. raw pipe ping-pong with a child process, same CPU and across CPUs (the floor);
//! 2. offload's trivial-task round trip under smol and Tokio, and the ratio to (1), also with
//!    the caller, the pool's thread and its workers all on one CPU;
//! 3. trivial tasks per second, spawned one by one and through `map`;
//! 4. a 16 MiB `serde_bytes` echo against a raw pipe echo of the same buffer;
//! 5. cold start of a pool of 2 and its first result;
//! 6. cancel of a spinning task: until the worker is reaped, until a replacement served;
//! 7. CPU speedup of 8 × 250 ms of compute on 2 workers against sequential;
//! 8. lag of a 1 ms async ticker while the workers compute (a second run of 7);
//! 9. parent memory per queued task, with 100,000 tasks queued at once.
//!
//! 10. peers in the same run: procspawn's pool of 2 on the same work (round trip, tasks/s, the
//!     16 MiB echo, cold start, cancel → worker gone), and offload's ratio to it;
//! 11. scale: round trip p50 and trivial tasks/s spawned one by one with 1, 2, 4, 8 and 16
//!     workers (on this machine's CPUs: past 2, more workers only share them);
//! 12. payload size against echo time, 1 KiB to 256 MiB, for a raw pipe, offload and
//!     procspawn, alternated per round; written as the plot docs/payloads.svg.
//!
//! `cargo bench --bench overhead -- payloads` runs figure 12 alone.
//!
//! `cargo bench --bench overhead -- throughput` prints figure 3 alone, five times;
//! `-- round-trip` figures 1 and 2 alone, to profile; `-- cancel` cancel → worker gone alone,
//! beside procspawn; `-- speedup` figure 7 alone, five times; `-- echo` figure 4 alone,
//! four series.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use offload::ProcessPool;
use serde_bytes::ByteBuf;

/// Round trips per measured series.
const ROUND_TRIPS: usize = 20_000;
/// Cold starts measured.
const COLD_STARTS: usize = 50;
/// Cancels measured.
const CANCELS: usize = 100;
/// Size of the echoed buffer.
const ECHO_BYTES: usize = 16 << 20;
/// Echoes measured.
const ECHOES: usize = 10;

fn trivial(x: u64) -> u64 {
    x + 1
}

fn spin() -> u64 {
    loop {
        std::hint::spin_loop();
    }
}

fn echo(bytes: ByteBuf) -> ByteBuf {
    bytes
}

/// A fixed amount of CPU work: `rounds` of a xorshift step.
fn work(rounds: u64) -> u64 {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..rounds {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x
}

/// Waits until `path` exists.
fn wait_for(path: PathBuf) -> u64 {
    while !path.exists() {
        std::thread::sleep(Duration::from_millis(1));
    }
    0
}

/// Pins the calling thread to `cpu`, or frees it with `None` (every CPU again: the count is
/// taken once, before any pinning, since a pinned thread sees only its own CPU).
fn pin(cpu: Option<usize>) {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cpus = *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut set = rustix::thread::CpuSet::new();
    match cpu {
        Some(cpu) => set.set(cpu % cpus),
        None => (0..cpus).for_each(|c| set.set(c)),
    }
    let _ = rustix::thread::sched_setaffinity(None, &set);
}

/// The child side of the raw measurements: pinned to `cpu` if given, echoes messages of
/// `size` bytes (16 for the ping-pong, a whole buffer for the echoes).
fn raw_echo(cpu: Option<usize>, size: usize) -> ! {
    if cpu.is_some() {
        pin(cpu);
    }
    let (mut input, mut output) = (std::io::stdin().lock(), std::io::stdout().lock());
    let mut msg = vec![0u8; size];
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

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A raw child for `raw_echo` of `size`-byte messages, pinned to `child_cpu` if given.
fn raw_child(child_cpu: Option<usize>, size: usize) -> std::process::Child {
    let cpu = child_cpu.map_or("any".to_string(), |c| c.to_string());
    Command::new(std::env::current_exe().unwrap())
        .args(["--raw-echo", &cpu, &size.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn raw_pipe_round_trips(child_cpu: usize) -> Vec<Duration> {
    pin(Some(0));
    let mut child = raw_child(Some(child_cpu), 16);
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
    pin(None);
    samples
}

/// Echoes of `data`, alternately through a raw child (unpinned, like offload's workers) and
/// through the pool, so that both series see the same machine: (raw, offload).
fn echoes(pool: &ProcessPool, data: &[u8]) -> (Vec<Duration>, Vec<Duration>) {
    let mut child = raw_child(None, ECHO_BYTES);
    let (mut to, mut from) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
    // The same 1 MiB pipes as offload's workers: the floor is what the system allows.
    for pipe in [to.as_fd(), from.as_fd()] {
        rustix::pipe::fcntl_setpipe_size(pipe, 1 << 20).unwrap();
    }
    let mut back = vec![0u8; data.len()];
    let (mut raw, mut offloaded) = (Vec::new(), Vec::new());
    for round in 0..=ECHOES {
        let start = Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| to.write_all(data).unwrap());
            from.read_exact(&mut back).unwrap();
        });
        let raw_time = start.elapsed();

        let buffer = ByteBuf::from(data.to_vec()); // the copy is the caller's, not timed
        let start = Instant::now();
        let echoed = pool.spawn(echo, buffer).wait().unwrap();
        let offload_time = start.elapsed();
        assert_eq!(echoed.len(), data.len());

        if round > 0 {
            // Round 0 warms both paths up (fresh buffers fault their pages in).
            raw.push(raw_time);
            offloaded.push(offload_time);
        }
    }
    drop(to);
    child.wait().unwrap();
    (raw, offloaded)
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

/// Round trips on `pool` under smol, then under Tokio (a current-thread runtime).
fn runtime_round_trips(pool: &ProcessPool) -> (Vec<Duration>, Vec<Duration>) {
    let smol = smol::block_on(offload_round_trips(pool));
    let tokio_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    (smol, tokio_rt.block_on(offload_round_trips(pool)))
}

/// [`runtime_round_trips`] with the caller, the pool's thread and its workers all on CPU 0:
/// the pool is made while this thread is pinned, and its thread and workers inherit the
/// affinity (like `taskset -c 0` on the whole program).
fn pinned_round_trips() -> (Vec<Duration>, Vec<Duration>) {
    pin(Some(0));
    let pool = ProcessPool::new(2).unwrap();
    pool.spawn(trivial, 0).wait().unwrap(); // workers are ready
    let round_trips = runtime_round_trips(&pool);
    pool.shutdown_blocking();
    pin(None);
    round_trips
}

fn cold_starts() -> Vec<Duration> {
    (0..COLD_STARTS)
        .map(|_| {
            let start = Instant::now();
            let pool = ProcessPool::new(2).unwrap();
            pool.spawn(trivial, 1).wait().unwrap();
            let elapsed = start.elapsed();
            // Not timed: the next start should not share the CPUs with this pool's exit.
            futures_lite::future::block_on(pool.shutdown());
            elapsed
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
    const MAPPED: u64 = 2_000_000;
    let spawned = spawned(pool);
    let start = Instant::now();
    let results = pool.map_blocking(trivial, 0..MAPPED);
    let mapped = MAPPED as f64 / start.elapsed().as_secs_f64();
    assert!(results
        .iter()
        .enumerate()
        .all(|(i, r)| r.as_ref().ok() == Some(&(i as u64 + 1))));
    (spawned, mapped)
}

/// Trivial tasks per second, 100,000 spawned one by one, then awaited in order.
fn spawned(pool: &ProcessPool) -> f64 {
    const SPAWNED: u64 = 100_000;
    let start = Instant::now();
    let tasks: Vec<_> = (0..SPAWNED).map(|i| pool.spawn(trivial, i)).collect();
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.wait().unwrap(), i as u64 + 1);
    }
    SPAWNED as f64 / start.elapsed().as_secs_f64()
}

/// Rounds of `work` that take about 250 ms here.
fn calibrate() -> u64 {
    let rounds = 10_000_000;
    let start = Instant::now();
    std::hint::black_box(work(rounds));
    let per_round = start.elapsed().as_secs_f64() / rounds as f64;
    (0.25 / per_round) as u64
}

/// Sequential time and pool time of 8 × `rounds` of work.
fn speedup(pool: &ProcessPool, rounds: u64) -> (Duration, Duration) {
    let start = Instant::now();
    for _ in 0..8 {
        std::hint::black_box(work(rounds));
    }
    let sequential = start.elapsed();
    let start = Instant::now();
    let tasks: Vec<_> = (0..8).map(|_| pool.spawn(work, rounds)).collect();
    for task in tasks {
        task.wait().unwrap();
    }
    (sequential, start.elapsed())
}

/// The lags of a 1 ms ticker on the caller's async loop while the pool computes 8 × `rounds`
/// of work.
fn ticker_lags(pool: &ProcessPool, rounds: u64) -> Vec<Duration> {
    let lags = std::cell::RefCell::new(Vec::new());
    smol::block_on(async {
        let tasks: Vec<_> = (0..8).map(|_| pool.spawn(work, rounds)).collect();
        let ticker = async {
            loop {
                let due = Instant::now() + Duration::from_millis(1);
                async_io::Timer::at(due).await;
                lags.borrow_mut()
                    .push(Instant::now().saturating_duration_since(due));
            }
        };
        let work = async {
            for task in tasks {
                task.await.unwrap();
            }
        };
        futures_lite::future::or(work, ticker).await
    });
    lags.into_inner()
}

/// Resident memory of this process, in bytes.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split(' ').nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Parent memory per queued task, with 100,000 queued behind a blocked worker.
fn memory_per_queued_task() -> f64 {
    const QUEUED: usize = 100_000;
    let pool = ProcessPool::new(1).unwrap();
    let go = std::env::temp_dir().join(format!("offload-bench-{}", std::process::id()));
    let blocker = pool.spawn(wait_for, go.clone());
    while blocker.status() != "running" {
        std::thread::yield_now();
    }
    let before = rss();
    let tasks: Vec<_> = (0..QUEUED as u64).map(|i| pool.spawn(trivial, i)).collect();
    let per_task = (rss() - before) as f64 / QUEUED as f64;
    assert_eq!(pool.stats().queued, QUEUED);
    std::fs::write(&go, b"").unwrap();
    for task in tasks {
        task.wait().unwrap();
    }
    let _ = std::fs::remove_file(go);
    per_task
}

/// Figure 11: for each pool size, the round trip p50 (2000 sequential trivial tasks) and the
/// tasks/s of 50,000 trivial tasks spawned one by one.
fn scale() -> Vec<(usize, Duration, f64)> {
    [1, 2, 4, 8, 16]
        .into_iter()
        .map(|workers| {
            let pool = ProcessPool::new(workers).unwrap();
            pool.ready_blocking().unwrap();
            let mut trips: Vec<Duration> = (0..2000u64)
                .map(|i| {
                    let start = Instant::now();
                    pool.spawn(trivial, i).wait().unwrap();
                    start.elapsed()
                })
                .collect();
            let (trip50, _) = percentiles(&mut trips);
            const SPAWNED: u64 = 50_000;
            let start = Instant::now();
            let tasks: Vec<_> = (0..SPAWNED).map(|i| pool.spawn(trivial, i)).collect();
            for task in tasks {
                task.wait().unwrap();
            }
            let per_s = SPAWNED as f64 / start.elapsed().as_secs_f64();
            pool.shutdown_blocking();
            (workers, trip50, per_s)
        })
        .collect()
}

/// Figure 12: median echo times of a `size`-byte buffer through a raw pipe child, an offload
/// worker and a procspawn worker, alternated round by round: `(size, raw, offload, procspawn)`.
fn payload_curve(pool: &ProcessPool, peer: &procspawn::Pool) -> Vec<(usize, [Duration; 3])> {
    let sizes = (0..10).map(|i| 1024usize << (2 * i)); // 1 KiB, 4 KiB, … 256 MiB
    sizes
        .map(|size| {
            let rounds = match size {
                s if s >= 64 << 20 => 3,
                s if s >= 1 << 20 => 7,
                _ => 41,
            };
            let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            let mut child = raw_child(None, size);
            let (mut to, mut from) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
            for pipe in [to.as_fd(), from.as_fd()] {
                rustix::pipe::fcntl_setpipe_size(pipe, 1 << 20).unwrap();
            }
            let mut back = vec![0u8; size];
            let mut times = [Vec::new(), Vec::new(), Vec::new()];
            for round in 0..=rounds {
                let start = Instant::now();
                if size <= 1 << 20 {
                    // It fits in the pipe: no writer thread to start (its cost would dominate).
                    to.write_all(&data).unwrap();
                    from.read_exact(&mut back).unwrap();
                } else {
                    std::thread::scope(|s| {
                        s.spawn(|| to.write_all(&data).unwrap());
                        from.read_exact(&mut back).unwrap();
                    });
                }
                let raw = start.elapsed();
                let buffer = ByteBuf::from(data.clone());
                let start = Instant::now();
                assert_eq!(pool.spawn(echo, buffer).wait().unwrap().len(), size);
                let ours = start.elapsed();
                let buffer = ByteBuf::from(data.clone());
                let start = Instant::now();
                assert_eq!(peer.spawn(buffer, peers::echo).join().unwrap().len(), size);
                let theirs = start.elapsed();
                if round > 0 {
                    for (series, time) in times.iter_mut().zip([raw, ours, theirs]) {
                        series.push(time);
                    }
                }
            }
            drop(to);
            child.wait().unwrap();
            (size, times.map(|mut series| percentiles(&mut series).0))
        })
        .collect()
}

/// The plot of figure 12: echo time against payload size, both on log scales, as SVG.
fn payload_plot(curve: &[(usize, [Duration; 3])]) -> String {
    const W: f64 = 720.0;
    const H: f64 = 440.0;
    const LEFT: f64 = 80.0;
    const RIGHT: f64 = 160.0;
    const TOP: f64 = 30.0;
    const BOTTOM: f64 = 60.0;
    let (x_min, x_max) = (10.0, 28.0); // log2 of 1 KiB and of 256 MiB
    let (y_min, y_max) = (-6.0, 1.0); // log10 of 1 µs and of 10 s
    let x =
        |size: usize| LEFT + ((size as f64).log2() - x_min) / (x_max - x_min) * (W - LEFT - RIGHT);
    let y = |time: Duration| {
        let t = time.as_secs_f64().max(1e-6).log10();
        TOP + (y_max - t) / (y_max - y_min) * (H - TOP - BOTTOM)
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"{W}\" height=\"{H}\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">\
         Echo of one buffer: time against size (medians, cargo bench --bench overhead)</text>\n",
        (W - RIGHT + LEFT) / 2.0
    );
    for (i, label) in ["1 KiB", "16 KiB", "256 KiB", "4 MiB", "64 MiB"]
        .iter()
        .enumerate()
    {
        let px = x(1024 << (4 * i));
        svg += &format!(
            "<line x1=\"{px:.1}\" y1=\"{TOP}\" x2=\"{px:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>\n",
            H - BOTTOM,
            H - BOTTOM + 18.0
        );
    }
    for (i, label) in [
        "1 µs", "10 µs", "100 µs", "1 ms", "10 ms", "100 ms", "1 s", "10 s",
    ]
    .iter()
    .enumerate()
    {
        let py = y(Duration::from_nanos(1000 * 10u64.pow(i as u32)));
        svg += &format!(
            "<line x1=\"{LEFT}\" y1=\"{py:.1}\" x2=\"{:.1}\" y2=\"{py:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>\n",
            W - RIGHT,
            LEFT - 8.0,
            py + 4.0
        );
    }
    svg += &format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">payload size</text>\n",
        (W - RIGHT + LEFT) / 2.0,
        H - 16.0
    );
    for (series, (name, colour)) in [
        ("raw pipe", "#555555"),
        ("offload", "#d62728"),
        ("procspawn", "#1f77b4"),
    ]
    .iter()
    .enumerate()
    {
        let points: Vec<String> = curve
            .iter()
            .map(|(size, times)| format!("{:.1},{:.1}", x(*size), y(times[series])))
            .collect();
        let legend_y = TOP + 20.0 + 20.0 * series as f64;
        svg += &format!(
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>\
             <line x1=\"{:.1}\" y1=\"{legend_y:.1}\" x2=\"{:.1}\" y2=\"{legend_y:.1}\" \
             stroke=\"{colour}\" stroke-width=\"2\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{name}</text>\n",
            points.join(" "),
            W - RIGHT + 15.0,
            W - RIGHT + 40.0,
            W - RIGHT + 46.0,
            legend_y + 4.0
        );
    }
    svg + "</svg>\n"
}

/// Runs figure 12, prints it and writes docs/payloads.svg.
fn payloads(pool: &ProcessPool, peer: &procspawn::Pool) {
    let curve = payload_curve(pool, peer);
    println!("12. echo of one buffer, medians (raw pipe / offload / procspawn)");
    for (size, [raw, ours, theirs]) in &curve {
        println!(
            "    {:>9} bytes: {:>9.1} µs / {:>9.1} µs / {:>9.1} µs   offload at {:>3.0} % of raw",
            size,
            micros(*raw),
            micros(*ours),
            micros(*theirs),
            100.0 * raw.as_secs_f64() / ours.as_secs_f64()
        );
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/payloads.svg");
    std::fs::write(path, payload_plot(&curve)).unwrap();
    println!("    plot written to docs/payloads.svg");
}

/// procspawn's pool on the same work, for figure 10.
mod peers {
    use std::time::{Duration, Instant};

    use serde_bytes::ByteBuf;

    /// Round trips and cancels measured for the peer (it is slower: fewer keep the run short).
    const ROUND_TRIPS: usize = 2_000;
    const SPAWNED: u64 = 20_000;
    const COLD_STARTS: usize = 20;
    const CANCELS: usize = 30;

    fn trivial(x: u64) -> u64 {
        x + 1
    }

    pub fn echo(bytes: ByteBuf) -> ByteBuf {
        bytes
    }

    fn offload_spin() -> u64 {
        loop {
            std::hint::spin_loop();
        }
    }

    fn spin(_: ()) -> u64 {
        loop {
            std::hint::spin_loop();
        }
    }

    pub fn round_trips(pool: &procspawn::Pool) -> Vec<Duration> {
        (0..ROUND_TRIPS as u64)
            .map(|i| {
                let start = Instant::now();
                assert_eq!(pool.spawn(i, trivial).join().unwrap(), i + 1);
                start.elapsed()
            })
            .collect()
    }

    /// Trivial tasks per second, spawned one by one and joined together, `BATCH` at a time:
    /// each queued procspawn task holds descriptors of its own (two IPC channels), and all
    /// 20,000 at once would exhaust the descriptor limit.
    pub fn throughput(pool: &procspawn::Pool) -> f64 {
        const BATCH: u64 = 200;
        let start = Instant::now();
        for batch in 0..SPAWNED / BATCH {
            let first = batch * BATCH;
            let handles: Vec<_> = (first..first + BATCH)
                .map(|i| pool.spawn(i, trivial))
                .collect();
            for (i, handle) in (first..).zip(handles) {
                assert_eq!(handle.join().unwrap(), i + 1);
            }
        }
        SPAWNED as f64 / start.elapsed().as_secs_f64()
    }

    pub fn echoes(pool: &procspawn::Pool, data: &[u8], rounds: usize) -> Vec<Duration> {
        (0..=rounds)
            .map(|_| {
                let buffer = ByteBuf::from(data.to_vec());
                let start = Instant::now();
                let echoed = pool.spawn(buffer, echo).join().unwrap();
                let elapsed = start.elapsed();
                assert_eq!(echoed.len(), data.len());
                elapsed
            })
            .skip(1) // the first warms up
            .collect()
    }

    pub fn cold_starts() -> Vec<Duration> {
        (0..COLD_STARTS)
            .map(|_| {
                let start = Instant::now();
                let pool = procspawn::Pool::new(2).unwrap();
                pool.spawn(1, trivial).join().unwrap();
                let elapsed = start.elapsed();
                pool.shutdown();
                elapsed
            })
            .collect()
    }

    /// Whether process `pid` is gone (or a zombie: it runs no more).
    pub fn gone(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
            stat.rfind(')')
                .is_some_and(|end| stat[end..].starts_with(") Z"))
        })
    }

    /// The same for offload: a spinning task on a pool of one, time from `cancel` until its
    /// worker runs no more (gone or a zombie, before the reap that figure 6 includes).
    pub fn offload_cancels() -> Vec<Duration> {
        let pool = offload::ProcessPool::new(1).unwrap();
        let mut samples = Vec::with_capacity(CANCELS);
        for _ in 0..CANCELS {
            pool.spawn(trivial, 0).wait().unwrap(); // a worker is up
            let task = pool.spawn(offload_spin, ());
            let pid = loop {
                if let Some(pid) = task.pid() {
                    break pid;
                }
                std::thread::yield_now();
            };
            let start = Instant::now();
            task.cancel();
            while !gone(pid) {
                std::thread::yield_now();
            }
            samples.push(start.elapsed());
            task.cancel_and_wait_blocking();
        }
        samples
    }

    /// A spinning task on a pool of one: time from `kill` until its worker runs no more.
    pub fn cancels() -> Vec<Duration> {
        let pool = procspawn::Pool::new(1).unwrap();
        let mut samples = Vec::with_capacity(CANCELS);
        for _ in 0..CANCELS {
            pool.spawn(0, trivial).join().unwrap(); // a worker is up
            let mut handle = pool.spawn((), spin);
            let pid = loop {
                if let Some(pid) = handle.pid() {
                    break pid;
                }
                std::thread::yield_now();
            };
            let start = Instant::now();
            handle.kill().unwrap();
            while !gone(pid) {
                std::thread::yield_now();
            }
            samples.push(start.elapsed());
        }
        samples
    }
}

fn main() {
    offload::init();
    // procspawn's workers are this program too: they serve here (figure 10).
    procspawn::init();
    pin(None); // counts the CPUs while nothing is pinned
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; the raw children of figures 1, 4 and 12 this.
    if args.get(1).map(String::as_str) == Some("--raw-echo") {
        raw_echo(args[2].parse().ok(), args[3].parse().unwrap());
    }
    let pool = ProcessPool::new(2).unwrap();
    pool.spawn(trivial, 0).wait().unwrap(); // workers are ready
    if args.iter().any(|a| a == "payloads") {
        let peer = procspawn::Pool::new(1).unwrap();
        payloads(&pool, &peer);
        return;
    }
    if args.iter().any(|a| a == "spawned") {
        // `cargo bench --bench overhead -- spawned`: tasks spawned one by one alone, to profile.
        for _ in 0..5 {
            println!("3. spawned one by one {:>9.0} /s", spawned(&pool));
        }
        return;
    }
    if args.iter().any(|a| a == "round-trip") {
        // `cargo bench --bench overhead -- round-trip`: figures 1 and 2 alone, to profile.
        let (same50, _) = percentiles(&mut raw_pipe_round_trips(0));
        let (mut smol, mut tokio) = runtime_round_trips(&pool);
        let (smol50, _) = percentiles(&mut smol);
        let (tokio50, _) = percentiles(&mut tokio);
        let (mut pinned_smol, mut pinned_tokio) = pinned_round_trips();
        let (pinned_smol50, _) = percentiles(&mut pinned_smol);
        let (pinned_tokio50, _) = percentiles(&mut pinned_tokio);
        let ratio = |d: Duration| d.as_secs_f64() / same50.as_secs_f64();
        println!(
            "1./2. raw same CPU {:.1} µs; offload smol {:.1} µs ({:.1}×), Tokio {:.1} µs ({:.1}×); \
             all on one CPU: smol {:.1} µs ({:.1}×), Tokio {:.1} µs ({:.1}×)",
            micros(same50),
            micros(smol50),
            ratio(smol50),
            micros(tokio50),
            ratio(tokio50),
            micros(pinned_smol50),
            ratio(pinned_smol50),
            micros(pinned_tokio50),
            ratio(pinned_tokio50)
        );
        return;
    }
    if args.iter().any(|a| a == "cancel") {
        // `cargo bench --bench overhead -- cancel`: cancel → worker gone alone, beside the peer.
        let (peer50, _) = percentiles(&mut peers::cancels());
        let (gone50, _) = percentiles(&mut peers::offload_cancels());
        println!(
            "10. cancel → worker gone: procspawn {:.3} ms, offload {:.3} ms ({:.2}×)",
            millis(peer50),
            millis(gone50),
            peer50.as_secs_f64() / gone50.as_secs_f64()
        );
        return;
    }
    if args.iter().any(|a| a == "echo") {
        // `cargo bench --bench overhead -- echo`: figure 4 alone, four series.
        let data: Vec<u8> = (0..ECHO_BYTES).map(|i| (i * 7 % 251) as u8).collect();
        for _ in 0..4 {
            let (mut raw, mut offloaded) = echoes(&pool, &data);
            let (raw50, _) = percentiles(&mut raw);
            let (offloaded50, _) = percentiles(&mut offloaded);
            println!(
                "4. 16 MiB echo p50: raw pipe {:.1} ms, offload {:.1} ms ({:.0} %)",
                millis(raw50),
                millis(offloaded50),
                100.0 * raw50.as_secs_f64() / offloaded50.as_secs_f64()
            );
        }
        return;
    }
    if args.iter().any(|a| a == "speedup") {
        // `cargo bench --bench overhead -- speedup`: figure 7 alone, five times.
        let rounds = calibrate();
        for _ in 0..5 {
            let (sequential, parallel) = speedup(&pool, rounds);
            println!(
                "7. speedup {:.2} (sequential {} ms, pool {} ms)",
                sequential.as_secs_f64() / parallel.as_secs_f64(),
                sequential.as_millis(),
                parallel.as_millis()
            );
        }
        return;
    }
    if args.iter().any(|a| a == "throughput") {
        // `cargo bench --bench overhead -- throughput`: figure 3 alone, five times.
        for _ in 0..5 {
            let (spawned_per_s, mapped_per_s) = throughput(&pool);
            println!(
                "3. spawned one by one {spawned_per_s:>9.0} /s, through map {mapped_per_s:>9.0} /s"
            );
        }
        return;
    }

    let data: Vec<u8> = (0..ECHO_BYTES).map(|i| (i * 7 % 251) as u8).collect();
    let (mut raw_echoes, mut offload_echoes) = echoes(&pool, &data);
    let (raw_echo50, _) = percentiles(&mut raw_echoes);
    let (echo50, _) = percentiles(&mut offload_echoes);
    let (same50, same99) = percentiles(&mut raw_pipe_round_trips(0));
    let (cross50, cross99) = percentiles(&mut raw_pipe_round_trips(1));
    let (mut smol, mut tokio) = runtime_round_trips(&pool);
    let (smol50, smol99) = percentiles(&mut smol);
    let (tokio50, tokio99) = percentiles(&mut tokio);
    let (mut pinned_smol, mut pinned_tokio) = pinned_round_trips();
    let (pinned_smol50, pinned_smol99) = percentiles(&mut pinned_smol);
    let (pinned_tokio50, pinned_tokio99) = percentiles(&mut pinned_tokio);
    let (cold50, cold99) = percentiles(&mut cold_starts());
    let (mut reaped, mut replaced) = cancels();
    let (reaped50, reaped99) = percentiles(&mut reaped);
    let (replaced50, replaced99) = percentiles(&mut replaced);
    let rounds = calibrate();
    let (sequential, parallel) = speedup(&pool, rounds);
    let mut lags = ticker_lags(&pool, rounds);
    let lag_max = lags.iter().max().copied().unwrap_or_default();
    let (_, lag99) = percentiles(&mut lags);
    let per_queued = memory_per_queued_task();
    let (spawned_per_s, mapped_per_s) = throughput(&pool);

    // 10. The peer, on the same work, after offload's figures (its pool is started now, so
    // that its idle workers do not share the CPUs with the figures above).
    let peer = procspawn::Pool::new(2).unwrap();
    peer.spawn(0, |x: u64| x).join().unwrap();
    let (peer_trip50, _) = percentiles(&mut peers::round_trips(&peer));
    let peer_spawned = peers::throughput(&peer);
    let (peer_echo50, _) = percentiles(&mut peers::echoes(&peer, &data, ECHOES));
    payloads(&pool, &peer);
    peer.shutdown();
    let (peer_cold50, _) = percentiles(&mut peers::cold_starts());
    let (peer_cancel50, _) = percentiles(&mut peers::cancels());
    let (gone50, _) = percentiles(&mut peers::offload_cancels());
    let scaled = scale();

    let mb_per_s = |d: Duration| ECHO_BYTES as f64 / d.as_secs_f64() / 1e6;
    let verdict = |met: bool| if met { "met" } else { "NOT MET" };
    println!(
        "figure (2 workers)                         p50           p99   ratio, target: verdict"
    );
    println!(
        "1. raw pipe ping-pong, same CPU        {:>9.1} µs  {:>9.1} µs",
        micros(same50),
        micros(same99)
    );
    println!(
        "1. raw pipe ping-pong, across CPUs     {:>9.1} µs  {:>9.1} µs",
        micros(cross50),
        micros(cross99)
    );
    for (name, p50, p99) in [
        ("2. trivial round trip, smol", smol50, smol99),
        ("2. trivial round trip, Tokio", tokio50, tokio99),
        ("2. all on CPU 0, smol", pinned_smol50, pinned_smol99),
        ("2. all on CPU 0, Tokio", pinned_tokio50, pinned_tokio99),
    ] {
        let ratio = p50.as_secs_f64() / same50.as_secs_f64();
        println!(
            "{name:<37}  {:>9.1} µs  {:>9.1} µs   {ratio:.1}× same-CPU, {:.2}× cross-CPU raw; ≤ 3× same-CPU raw: {}",
            micros(p50),
            micros(p99),
            p50.as_secs_f64() / cross50.as_secs_f64(),
            verdict(ratio <= 3.0)
        );
    }
    println!(
        "3. trivial tasks spawned one by one     {spawned_per_s:>9.0} /s   ≥ 300k: {}",
        verdict(spawned_per_s >= 300e3)
    );
    println!(
        "3. trivial items through map            {mapped_per_s:>9.0} /s   ≥ 500k: {}",
        verdict(mapped_per_s >= 500e3)
    );
    let echo_share = 100.0 * raw_echo50.as_secs_f64() / echo50.as_secs_f64();
    println!(
        "4. 16 MiB echo: raw pipe {:>7.0} MB/s, offload {:>7.0} MB/s   {echo_share:.0} %; ≥ 100 %: {}",
        mb_per_s(raw_echo50),
        mb_per_s(echo50),
        verdict(echo_share >= 100.0)
    );
    for (name, p50, p99, bound) in [
        ("5. cold start: pool of 2 + result", cold50, cold99, 2.0),
        ("6. cancel → worker reaped", reaped50, reaped99, 1.0),
        (
            "6. cancel → a replacement served",
            replaced50,
            replaced99,
            2.0,
        ),
    ] {
        println!(
            "{name:<37}  {:>9.2} ms  {:>9.2} ms   ≤ {bound} ms: {}",
            millis(p50),
            millis(p99),
            verdict(millis(p50) <= bound)
        );
    }
    let speedup = sequential.as_secs_f64() / parallel.as_secs_f64();
    println!(
        "7. 8 × 250 ms of work: sequential {:.0} ms, pool {:.0} ms   speedup {speedup:.2}; ≥ 1.95: {}",
        millis(sequential),
        millis(parallel),
        verdict(speedup >= 1.95)
    );
    println!(
        "8. 1 ms ticker lag while computing: max {:.2} ms, p99 {:.2} ms ({} ticks); p99 < 1 ms: {}",
        millis(lag_max),
        millis(lag99),
        lags.len(),
        verdict(millis(lag99) < 1.0)
    );
    println!(
        "9. parent memory per queued task        {per_queued:>9.0} bytes   < 1 KiB: {}",
        verdict(per_queued < 1024.0)
    );
    println!("10. peers, same run: procspawn 1.0 pool of 2 (the target: offload ahead on each)");
    let ahead = |better: bool| if better { "ahead" } else { "behind" };
    let fastest = smol50.min(tokio50);
    println!(
        "    round trip p50: procspawn {:>8.1} µs, offload {:>8.1} µs   {:.1}× faster, {}",
        micros(peer_trip50),
        micros(fastest),
        peer_trip50.as_secs_f64() / fastest.as_secs_f64(),
        ahead(fastest < peer_trip50)
    );
    println!(
        "    tasks/s one by one: procspawn {peer_spawned:>8.0}, offload {spawned_per_s:>8.0}   {:.1}×, {}",
        spawned_per_s / peer_spawned,
        ahead(spawned_per_s > peer_spawned)
    );
    println!(
        "    16 MiB echo: procspawn {:>6.0} MB/s, offload {:>6.0} MB/s   {:.1}×, {}",
        mb_per_s(peer_echo50),
        mb_per_s(echo50),
        peer_echo50.as_secs_f64() / echo50.as_secs_f64(),
        ahead(echo50 < peer_echo50)
    );
    for (name, peer50, ours50) in [
        ("cold start, pool of 2 + result", peer_cold50, cold50),
        ("cancel → worker gone", peer_cancel50, gone50),
    ] {
        println!(
            "    {name}: procspawn {:>6.2} ms, offload {:>6.2} ms   {:.1}× faster, {}",
            millis(peer50),
            millis(ours50),
            peer50.as_secs_f64() / ours50.as_secs_f64(),
            ahead(ours50 < peer50)
        );
    }
    println!(
        "11. scale (this machine has {} CPUs)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for (workers, trip50, per_s) in scaled {
        println!(
            "    {workers:>2} workers: round trip p50 {:>6.1} µs, tasks spawned one by one {per_s:>8.0} /s",
            micros(trip50)
        );
    }
}
