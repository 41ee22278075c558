//! Large and noisy payloads: what a task prints never reaches the protocol, and big byte
//! buffers arrive intact.
//!
//! The pool of the first test sends its workers' stdout and stderr (which their stdout goes
//! to) to a file named after the parent's pid, in its `init`, so that the test can check where
//! a task's `println!` went without flooding the test output.

mod common;

use std::path::PathBuf;

use common::{echo, trial, Runtime};
use offload::ProcessPool;
use serde_bytes::ByteBuf;

const LINE: &str = "printed by a task, bound for stderr, never for the protocol pipe";

/// Where the workers of parent `parent` write their stderr.
fn worker_stderr(parent: u32) -> PathBuf {
    std::env::temp_dir().join(format!("offload-payloads-{parent}.stderr"))
}

/// Prints about `bytes` bytes to stdout, then returns `n`.
fn chatty(bytes: usize, n: u64) -> u64 {
    let lines = bytes / (LINE.len() + 1) + 1;
    for _ in 0..lines {
        println!("{LINE}");
    }
    n * 2
}

/// A worker's `init`: its stdout and stderr go to [`worker_stderr`].
fn output_to_file() {
    let path = worker_stderr(std::os::unix::process::parent_id());
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    rustix::stdio::dup2_stderr(&file).unwrap();
    rustix::stdio::dup2_stdout(&file).unwrap();
}

fn printing_a_megabyte_to_stdout_does_not_corrupt_the_result() {
    let pool = ProcessPool::builder()
        .workers(1)
        .init(output_to_file)
        .build()
        .unwrap();
    let value = pool.spawn(chatty, (1 << 20, 21)).wait().unwrap();
    assert_eq!(value, 42);
    let stderr = std::fs::read_to_string(worker_stderr(std::process::id())).unwrap();
    let lines = stderr.lines().filter(|l| *l == LINE).count();
    assert!(
        lines * (LINE.len() + 1) >= 1 << 20,
        "the megabyte went to the worker's stderr ({lines} lines)"
    );
}

fn sixteen_mib_round_trip_byte_identical() {
    let pool = ProcessPool::new(2).unwrap();
    // Deterministic bytes that are not a repeating pattern.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let data: Vec<u8> = (0..16 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let back = Runtime::Smol.block_on({
        let data = data.clone();
        async move { pool.spawn(echo, ByteBuf::from(data)).await.unwrap() }
    });
    assert_eq!(back.len(), data.len());
    assert!(back.into_vec() == data, "the bytes came back identical");
}

fn main() {
    offload::init();
    let trials = vec![
        trial(
            "printing_a_megabyte_to_stdout_does_not_corrupt_the_result",
            printing_a_megabyte_to_stdout_does_not_corrupt_the_result,
        ),
        trial(
            "sixteen_mib_round_trip_byte_identical",
            sixteen_mib_round_trip_byte_identical,
        ),
    ];
    let conclusion = libtest_mimic::run(&libtest_mimic::Arguments::from_args(), trials);
    let _ = std::fs::remove_file(worker_stderr(std::process::id()));
    conclusion.exit();
}
