//! A worker that writes anything at all into the protocol — garbage, a truncated frame, a
//! frame over the size cap, a frame in shared memory out of turn or past its end, an unknown
//! message, a reply for another task, output while idle —
//! is killed and replaced; its task fails with `Protocol`; the parent never panics.
//!
//! The tasks here play the adversary from inside the worker: they find the protocol's write
//! end among their own descriptors, as buggy or hostile user code could.

mod common;

use std::fs::File;
use std::io::Write;
use std::time::Duration;

use common::{eventually, is_our_child, Runtime};
use offload::{ProcessPool, TaskError};
use serde::Serialize;

/// The worker's private protocol output: the only write-only pipe above fd 2.
fn protocol_output() -> File {
    for fd in 3..1024 {
        let is_pipe = std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .is_ok_and(|link| link.to_string_lossy().starts_with("pipe:"));
        let write_only = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
            .ok()
            .and_then(|info| {
                let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?;
                u32::from_str_radix(flags.trim(), 8).ok()
            })
            .is_some_and(|flags| flags & 0o3 == 0o1);
        if is_pipe && write_only {
            return std::fs::OpenOptions::new()
                .write(true)
                .open(format!("/proc/self/fd/{fd}"))
                .unwrap();
        }
    }
    panic!("no protocol output found")
}

/// Mirrors the worker's messages, to forge a well-formed one.
#[derive(Serialize)]
#[allow(dead_code)]
enum FromWorker {
    Hello { pid: u32, build: u64 },
    Refused { reason: String },
    Done { id: u64 },
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(body);
    frame
}

/// Writes `bytes` into the protocol, then waits to be killed (or exits, with `exit_after`).
fn forge(bytes: Vec<u8>, exit_after: bool) -> u32 {
    protocol_output().write_all(&bytes).unwrap();
    if exit_after {
        std::process::exit(0);
    }
    std::thread::sleep(Duration::from_secs(60));
    std::process::id()
}

/// Returns at once, then writes garbage from another thread while the worker is idle.
fn garbage_while_idle() -> u32 {
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(50));
        let _ = protocol_output().write_all(b"\x03\x00\x00\x00idle");
    });
    std::process::id()
}

fn whoami() -> u32 {
    std::process::id()
}

/// Runs `forge(bytes)` and checks the task failed with `Protocol` and the worker was replaced.
async fn assert_protocol_failure(bytes: Vec<u8>, exit_after: bool, expect: &str) {
    let pool = ProcessPool::new(1).unwrap();
    let first = pool.spawn(whoami, ()).await.unwrap();
    let mut task = pool.spawn(forge, (bytes, exit_after));
    match (&mut task).await {
        Err(TaskError::Protocol(msg)) => assert!(msg.contains(expect), "{msg}"),
        other => panic!("expected a protocol error about {expect:?}, got {other:?}"),
    }
    assert_eq!(task.pid(), Some(first));
    eventually("the worker is gone", || !is_our_child(first)).await;
    let next = pool.spawn(whoami, ()).await.unwrap();
    assert_ne!(next, first, "a replacement serves");
    assert_eq!(pool.stats().replaced, 1);
}

async fn garbage_fails_the_task_with_protocol() {
    assert_protocol_failure(frame(b"garbage"), false, "undecodable message").await;
}

async fn truncated_frame_fails_the_task_with_protocol() {
    let mut bytes = 100u32.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"only ten b");
    assert_protocol_failure(bytes, true, "in the middle of a frame").await;
}

async fn oversized_frame_fails_the_task_with_protocol() {
    let bytes = ((offload::MAX_FRAME_LEN + 1) as u32).to_le_bytes().to_vec();
    assert_protocol_failure(bytes, false, "over the limit").await;
}

/// A marker of a frame in shared memory: its number there and its length.
fn region_marker(number: u64, len: u64) -> Vec<u8> {
    let mut bytes = u32::MAX.to_le_bytes().to_vec();
    bytes.extend_from_slice(&number.to_le_bytes());
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes
}

async fn a_shared_memory_frame_out_of_turn_fails_the_task_with_protocol() {
    assert_protocol_failure(region_marker(7, 16), false, "7 announced, 1 expected").await;
}

async fn a_shared_memory_frame_past_its_region_fails_the_task_with_protocol() {
    assert_protocol_failure(region_marker(1, 512 << 20), false, "in a region that holds").await;
}

async fn a_shared_memory_frame_over_the_cap_fails_the_task_with_protocol() {
    assert_protocol_failure(region_marker(1, 1 << 40), false, "over the limit").await;
}

async fn unknown_message_fails_the_task_with_protocol() {
    let body = rmp_serde::to_vec(&("an", "unknown", 7, "message")).unwrap();
    assert_protocol_failure(frame(&body), false, "undecodable message").await;
}

async fn reply_for_another_task_fails_the_task_with_protocol() {
    let body = rmp_serde::to_vec(&FromWorker::Done { id: 999_999_999 }).unwrap();
    assert_protocol_failure(frame(&body), false, "unexpected Done message").await;
}

async fn output_while_idle_replaces_the_worker() {
    let pool = ProcessPool::new(1).unwrap();
    let first = pool.spawn(garbage_while_idle, ()).await.unwrap();
    eventually("the idle worker is replaced", || pool.stats().replaced == 1).await;
    assert!(!is_our_child(first));
    assert_ne!(pool.spawn(whoami, ()).await.unwrap(), first);
}

fn main() {
    let scenarios = scenarios![
        garbage_fails_the_task_with_protocol,
        truncated_frame_fails_the_task_with_protocol,
        oversized_frame_fails_the_task_with_protocol,
        a_shared_memory_frame_out_of_turn_fails_the_task_with_protocol,
        a_shared_memory_frame_past_its_region_fails_the_task_with_protocol,
        a_shared_memory_frame_over_the_cap_fails_the_task_with_protocol,
        unknown_message_fails_the_task_with_protocol,
        reply_for_another_task_fails_the_task_with_protocol,
        output_while_idle_replaces_the_worker,
    ];
    common::main_with(common::trials_under(
        &[Runtime::Smol, Runtime::TokioMultiThread],
        &scenarios,
    ));
}
