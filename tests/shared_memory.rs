//! Large frames between the parent and a local worker go through shared memory (two memfds
//! per worker, one each way): the bytes arrive identical both ways, not through the pipes;
//! a region that is still being read sends the next large frame through the pipe; a worker
//! that dies holding one is replaced by one that has its own; and a task cannot shrink the
//! memory under the parent.

mod common;

use common::{Runtime, RUNTIMES};
use futures_lite::StreamExt;
use offload::{ProcessPool, TaskError};
use serde_bytes::ByteBuf;

/// `len` bytes that are not a repeating pattern, different for every `seed`.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ seed.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn echo(bytes: ByteBuf) -> ByteBuf {
    bytes
}

/// `count` items of `len` bytes, item `i` all `i`: made at the speed of memory, so that the
/// next is ready while the parent still copies the one before.
fn blocks(count: u8, len: usize) -> impl Iterator<Item = ByteBuf> {
    (0..count).map(move |i| ByteBuf::from(vec![i; len]))
}

fn exit_holding(bytes: ByteBuf) -> usize {
    std::process::exit(bytes.len() as i32 % 7 + 1)
}

/// Tries to shrink every region this worker holds to nothing: one `Err` per region.
fn shrink_the_regions() -> Vec<Result<(), String>> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|fd| {
            let path = fd.ok()?.path();
            let link = std::fs::read_link(&path).ok()?;
            link.to_string_lossy()
                .starts_with("/memfd:offload-frames")
                .then_some(path)
        })
        .map(|path| {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| e.to_string())?;
            file.set_len(0).map_err(|e| e.to_string())
        })
        .collect()
}

/// What process `pid` read and wrote through system calls so far, in bytes.
fn io_of(pid: u32) -> (u64, u64) {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    let field = |name: &str| {
        io.lines()
            .find_map(|line| line.strip_prefix(name))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    (field("rchar:"), field("wchar:"))
}

async fn echo_of(pool: &ProcessPool, data: &[u8]) -> (Vec<u8>, Option<u32>) {
    let mut task = pool.spawn(echo, ByteBuf::from(data.to_vec()));
    let back = (&mut task).await.unwrap().into_vec();
    (back, task.pid())
}

async fn large_payloads_cross_both_ways_without_the_pipe() {
    let pool = ProcessPool::new(1).unwrap();
    // Sizes around the threshold, and past what a region keeps between large frames.
    for (seed, len) in [1, 60 << 10, 70 << 10, 3 << 20, 20 << 20, 10, 20 << 20]
        .into_iter()
        .enumerate()
    {
        let data = bytes(seed as u64, len);
        let (back, _) = echo_of(&pool, &data).await;
        assert!(back == data, "{len} bytes came back identical");
    }
    let (_, pid) = echo_of(&pool, b"warm").await;
    let pid = pid.unwrap();
    let (read_before, written_before) = io_of(pid);
    let mut sent = 0;
    for (seed, len) in [(7, 1 << 20), (8, 16 << 20), (9, 5 << 20)] {
        let data = bytes(seed, len);
        let (back, worker) = echo_of(&pool, &data).await;
        assert_eq!(worker, Some(pid));
        assert!(back == data, "{len} bytes came back identical");
        sent += len as u64;
    }
    let (read, written) = io_of(pid);
    let (read, written) = (read - read_before, written - written_before);
    assert!(
        read < sent / 100 && written < sent / 100,
        "the worker read {read} and wrote {written} bytes through system calls for {sent} \
         bytes each way"
    );
}

async fn a_stream_of_large_items_arrives_whole_and_in_order() {
    let pool = ProcessPool::new(1).unwrap();
    let mut items = pool.spawn_stream(blocks, (64, 1 << 20));
    let mut i = 0;
    while let Some(item) = items.next().await {
        assert!(item.unwrap().into_vec() == vec![i; 1 << 20], "item {i}");
        i += 1;
    }
    assert_eq!(i, 64);
}

async fn a_worker_that_dies_holding_a_large_frame_is_replaced() {
    let pool = ProcessPool::new(1).unwrap();
    let (_, first) = echo_of(&pool, &bytes(1, 4 << 20)).await;
    let died = pool
        .spawn(exit_holding, ByteBuf::from(bytes(2, 8 << 20)))
        .await;
    assert!(
        matches!(died, Err(TaskError::WorkerDied { .. })),
        "{died:?}"
    );
    let data = bytes(3, 8 << 20);
    let (back, second) = echo_of(&pool, &data).await;
    assert!(back == data, "the replacement echoed 8 MiB");
    assert_ne!(second, first);
    assert_eq!(pool.stats().replaced, 1);
}

async fn a_task_cannot_shrink_the_shared_memory() {
    let pool = ProcessPool::new(1).unwrap();
    let (_, pid) = echo_of(&pool, &bytes(1, 4 << 20)).await;
    let tries = pool.spawn(shrink_the_regions, ()).await.unwrap();
    assert_eq!(tries.len(), 2, "one region each way: {tries:?}");
    assert!(tries.iter().all(Result::is_err), "{tries:?}");
    let data = bytes(2, 4 << 20);
    let (back, same) = echo_of(&pool, &data).await;
    assert!(back == data);
    assert_eq!(same, pid, "the worker still serves");
}

fn main() {
    let both_ways = scenarios![large_payloads_cross_both_ways_without_the_pipe];
    let scenarios = scenarios![
        a_stream_of_large_items_arrives_whole_and_in_order,
        a_worker_that_dies_holding_a_large_frame_is_replaced,
        a_task_cannot_shrink_the_shared_memory,
    ];
    let mut trials = common::trials_under(&RUNTIMES, &both_ways);
    trials.extend(common::trials_under(
        &[Runtime::Smol, Runtime::TokioMultiThread],
        &scenarios,
    ));
    common::main_with(trials);
}
