//! A worker serves only a parent of its own build, and says clearly why it will not.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use common::trial;
use serde::{Deserialize, Serialize};

/// The parent's first message, as the protocol lays it out.
#[derive(Serialize)]
enum ToWorker {
    Hello {
        build: u64,
        parent: u32,
        memory_limit: Option<u64>,
    },
}

/// The worker's answers to it (the fields of `Hello` are only there for the shape).
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
enum FromWorker {
    Hello { pid: u32, build: u64 },
    Refused { reason: String },
}

fn frame(header: &impl Serialize) -> Vec<u8> {
    let body = rmp_serde::to_vec(header).unwrap();
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// Starts this test binary as a worker, by hand.
fn worker() -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .arg("--worker")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn worker_refuses_a_parent_of_another_build() {
    let mut child = worker();
    let hello = ToWorker::Hello {
        build: 0x0123_4567_89ab_cdef,
        parent: std::process::id(),
        memory_limit: None,
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&frame(&hello))
        .unwrap();
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    let len = u32::from_le_bytes(out[..4].try_into().unwrap()) as usize;
    assert_eq!(out.len(), 4 + len, "exactly one frame");
    match rmp_serde::from_slice::<FromWorker>(&out[4..]).unwrap() {
        FromWorker::Refused { reason } => {
            assert!(reason.contains("another build"), "{reason}");
            assert!(reason.contains("0123456789abcdef"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("refusing to serve"), "{stderr}");
}

fn worker_started_by_hand_with_garbage_exits_with_a_message() {
    let mut child = worker();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"\x05\x00\x00\x00hello, worker")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty(), "nothing on the protocol");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("offload worker"), "{stderr}");
    assert!(
        stderr.contains("undecodable message from the parent"),
        "{stderr}"
    );
}

fn worker_with_nothing_on_stdin_exits_quietly() {
    let child = worker();
    let output = child.wait_with_output().unwrap(); // stdin is closed at once
    assert_eq!(output.status.code(), Some(0));
    assert!(output.stdout.is_empty() && output.stderr.is_empty());
}

fn main() {
    common::main_with(vec![
        trial(
            "worker_refuses_a_parent_of_another_build",
            worker_refuses_a_parent_of_another_build,
        ),
        trial(
            "worker_started_by_hand_with_garbage_exits_with_a_message",
            worker_started_by_hand_with_garbage_exits_with_a_message,
        ),
        trial(
            "worker_with_nothing_on_stdin_exits_quietly",
            worker_with_nothing_on_stdin_exits_quietly,
        ),
    ]);
}
