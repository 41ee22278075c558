//! Run with: `cargo bench --bench launchers` (with the test servers of `.ci/run` up:
//! `OFFLOAD_TEST_SSH_CONFIG` and `OFFLOAD_TEST_SLURM_CONF` set; a launcher without its server is
//! skipped with a line saying so).
//!
//! For each remote launcher (ssh to 127.0.0.1, srun on a single-node Slurm), in one run and
//! side by side with the raw launcher (`ssh host cat`, `srun cat`) carrying the same bytes:
//!
//! 1. start-up: a pool of one worker and its first result, the first time in a process with
//!    the copy of the program made then (removed first), and later;
//! 2. a trivial task's round trip, against a raw 16-byte ping-pong through the launcher;
//! 3. a 16 MiB `serde_bytes` echo, against a raw 16 MiB echo through the launcher;
//! 4. trivial tasks spawned one by one on the one worker (20,000, awaited together): what
//!    pipelined dispatch makes of a round trip that crosses a launcher.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use offload::{Launcher, ProcessPool};
use serde_bytes::ByteBuf;

const ROUND_TRIPS: usize = 2_000;
const ECHO_BYTES: usize = 16 << 20;
const ECHOES: usize = 5;
const STARTS: usize = 5;

fn trivial(x: u64) -> u64 {
    x + 1
}

fn echo(bytes: ByteBuf) -> ByteBuf {
    bytes
}

fn where_am_i() -> String {
    std::env::current_exe().unwrap().display().to_string()
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The raw launcher running `cat`: what the launcher itself costs.
fn raw_cat(launcher: &str, config: &str) -> std::process::Child {
    let mut command = match launcher {
        "ssh" => {
            let mut c = Command::new("ssh");
            c.args(["-T", "-F", config, "offload-test", "exec cat"]);
            c
        }
        _ => {
            let mut c = Command::new("srun");
            c.args(["--ntasks=1", "--unbuffered", "--quiet", "cat"]);
            c
        }
    };
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn raw_round_trips(launcher: &str, config: &str) -> Duration {
    let mut child = raw_cat(launcher, config);
    let (mut to, mut from) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
    let mut msg = [7u8; 15];
    msg[14] = b'\n'; // srun --unbuffered forwards lines as they come
    let mut samples = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
        let start = Instant::now();
        to.write_all(&msg).unwrap();
        from.read_exact(&mut msg).unwrap();
        samples.push(start.elapsed());
    }
    drop(to);
    child.wait().unwrap();
    median(&mut samples)
}

fn raw_echoes(launcher: &str, config: &str, data: &[u8]) -> Duration {
    let mut samples = Vec::new();
    for _ in 0..ECHOES {
        let mut child = raw_cat(launcher, config);
        let (mut to, mut from) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
        // The connection (or the step) is up before the clock starts, as the pool's is.
        to.write_all(b"up\n").unwrap();
        from.read_exact(&mut [0u8; 3]).unwrap();
        let mut back = vec![0u8; data.len()];
        let start = Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| to.write_all(data).unwrap());
            from.read_exact(&mut back).unwrap();
        });
        samples.push(start.elapsed());
        drop(to);
        child.wait().unwrap();
    }
    median(&mut samples)
}

fn pool_of(launcher: &Launcher) -> ProcessPool {
    ProcessPool::builder()
        .workers(1)
        .launcher(launcher.clone())
        .build()
        .unwrap()
}

fn measure(name: &str, launcher: Launcher, config: &str) {
    let data: Vec<u8> = (0..ECHO_BYTES).map(|i| (i * 7 % 251) as u8).collect();
    // 1. start-up: the first one in a fresh process (the copy is made there)
    let first = Command::new(std::env::current_exe().unwrap())
        .args(["--first-start", name])
        .output()
        .unwrap();
    let first = String::from_utf8_lossy(&first.stdout).trim().to_string();
    let mut starts = Vec::new();
    for _ in 0..STARTS {
        let start = Instant::now();
        let pool = pool_of(&launcher);
        pool.spawn(trivial, 1).wait().unwrap();
        starts.push(start.elapsed());
        pool.shutdown_blocking();
    }
    // 2. round trips
    let pool = pool_of(&launcher);
    pool.spawn(trivial, 0).wait().unwrap();
    let mut trips: Vec<Duration> = (0..ROUND_TRIPS as u64)
        .map(|i| {
            let start = Instant::now();
            pool.spawn(trivial, i).wait().unwrap();
            start.elapsed()
        })
        .collect();
    let trip = median(&mut trips);
    let raw_trip = raw_round_trips(name, config);
    // 3. 16 MiB echoes
    let mut echoes: Vec<Duration> = (0..ECHOES)
        .map(|_| {
            let payload = ByteBuf::from(data.clone());
            let start = Instant::now();
            let back = pool.spawn(echo, payload).wait().unwrap();
            let took = start.elapsed();
            assert_eq!(back.len(), data.len());
            took
        })
        .collect();
    let echoed = median(&mut echoes);
    let raw_echoed = raw_echoes(name, config, &data);
    // 4. tasks spawned one by one
    const SPAWNED: u64 = 20_000;
    let start = Instant::now();
    let tasks: Vec<_> = (0..SPAWNED).map(|i| pool.spawn(trivial, i)).collect();
    for (i, task) in (0..).zip(tasks) {
        assert_eq!(task.wait().unwrap(), i + 1);
    }
    let per_s = SPAWNED as f64 / start.elapsed().as_secs_f64();
    pool.shutdown_blocking();
    let mb = |d: Duration| ECHO_BYTES as f64 / d.as_secs_f64() / 1e6;
    println!(
        "{name}: start-up, first in a process {first}, later {:.1} ms (median of {STARTS})",
        ms(median(&mut starts))
    );
    println!(
        "{name}: round trip {:.1} µs, raw launcher ping-pong {:.1} µs, {:.2}×",
        us(trip),
        us(raw_trip),
        trip.as_secs_f64() / raw_trip.as_secs_f64()
    );
    println!(
        "{name}: 16 MiB echo {:.0} MB/s, raw launcher {:.0} MB/s, {:.0} %",
        mb(echoed),
        mb(raw_echoed),
        100.0 * raw_echoed.as_secs_f64() / echoed.as_secs_f64()
    );
    println!(
        "{name}: trivial tasks spawned one by one on one worker {per_s:.0} /s ({:.1} per round trip)",
        per_s * trip.as_secs_f64()
    );
}

fn ssh_launcher(config: &str) -> Launcher {
    Launcher::ssh("offload-test").args(["-F", config])
}

fn main() {
    offload::init();
    let args: Vec<String> = std::env::args().collect();
    let ssh = std::env::var("OFFLOAD_TEST_SSH_CONFIG").ok();
    let slurm = std::env::var("OFFLOAD_TEST_SLURM_CONF").ok();
    if let Some(conf) = &slurm {
        std::env::set_var("SLURM_CONF", conf);
    }
    if args.get(1).map(String::as_str) == Some("--first-start") {
        let launcher = |name: &str| match name {
            "ssh" => ssh_launcher(ssh.as_deref().unwrap()),
            _ => Launcher::srun(),
        };
        let launcher = match args[2].strip_suffix("-fresh") {
            Some(name) => launcher(name),
            None => {
                // Make the copy happen in the measured start: remove this build's copy first.
                let pool = pool_of(&launcher(&args[2]));
                let path = pool.spawn(where_am_i, ()).wait().unwrap();
                pool.shutdown_blocking();
                std::fs::remove_file(&path).unwrap();
                // A fresh process has made no copy yet: measure in one.
                let out = Command::new(std::env::current_exe().unwrap())
                    .args(["--first-start", &format!("{}-fresh", args[2])])
                    .output()
                    .unwrap();
                print!("{}", String::from_utf8_lossy(&out.stdout));
                return;
            }
        };
        let start = Instant::now();
        let pool = pool_of(&launcher);
        pool.spawn(trivial, 1).wait().unwrap();
        println!("{:.1} ms", ms(start.elapsed()));
        pool.shutdown_blocking();
        return;
    }
    match &ssh {
        Some(config) => measure("ssh", ssh_launcher(config), config),
        None => println!("ssh: skipped (OFFLOAD_TEST_SSH_CONFIG is not set)"),
    }
    match &slurm {
        Some(_) => measure("srun", Launcher::srun(), ""),
        None => println!("srun: skipped (OFFLOAD_TEST_SLURM_CONF is not set)"),
    }
}
