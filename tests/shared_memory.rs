//! Large frames between the parent and a local worker go through shared memory (two memfds
//! per worker, one each way): the bytes arrive identical both ways, not through the pipes;
//! a region that is still being read sends the next large frame through the pipe; a worker
//! that dies holding one is replaced by one that has its own; and what a task does to the
//! memory (shrink it, grow it, punch it out, write over it) harms neither the parent nor the
//! tasks after it.

mod common;

use common::{echo, Runtime, RUNTIMES};
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

/// `count` items of `len` bytes, item `i` all `i`: made at the speed of memory, so that the
/// next is ready while the parent still copies the one before.
fn blocks(count: u8, len: usize) -> impl Iterator<Item = ByteBuf> {
    (0..count).map(move |i| ByteBuf::from(vec![i; len]))
}

fn exit_holding(bytes: ByteBuf) -> usize {
    std::process::exit(bytes.len() as i32 % 7 + 1)
}

/// The regions this worker holds, opened anew for writing.
fn regions() -> Vec<std::fs::File> {
    common::region_fds()
        .into_iter()
        .map(|path| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .unwrap()
        })
        .collect()
}

/// Does to every region of this worker what buggy or hostile code could: tries to shrink it
/// (one `Err` each: the seal), then grows it to 64 TiB, punches every page out and writes
/// garbage over its header and the start of its frames.
fn vandalise_the_regions() -> Vec<Result<(), String>> {
    use std::os::unix::fs::FileExt;
    regions()
        .into_iter()
        .map(|region| {
            let shrunk = region.set_len(0).map_err(|e| e.to_string());
            region.set_len(1 << 46).unwrap();
            rustix::fs::fallocate(
                &region,
                rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                0,
                1 << 46,
            )
            .unwrap();
            region.write_all_at(&[0xA5; 8192], 0).unwrap();
            shrunk
        })
        .collect()
}

/// The parent's address space, in KiB.
fn vm_size() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmSize:"))
        .and_then(|size| size.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Whether each region of this worker has `needle` in its first 1 MiB and a page, which it
/// keeps when it gives memory back: the start of the last frame that went through it.
fn regions_hold(needle: Vec<u8>) -> Vec<bool> {
    use std::os::unix::fs::FileExt;
    regions()
        .into_iter()
        .map(|region| {
            let mut start = vec![0; (1 << 20) + 4096];
            let n = region.read_at(&mut start, 0).unwrap();
            start[..n].windows(needle.len()).any(|w| w == needle)
        })
        .collect()
}

/// The inode numbers of this worker's regions.
fn region_inodes() -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    regions()
        .iter()
        .map(|region| region.metadata().unwrap().ino())
        .collect()
}

/// The memory the regions with inode numbers `inodes` hold, in bytes, seen from the parent
/// (which holds every region's memfd) without a word to their worker.
fn memory_in(inodes: &[u64]) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|fd| std::fs::metadata(fd.ok()?.path()).ok())
        .filter(|memfd| inodes.contains(&memfd.ino()))
        .map(|memfd| memfd.blocks() * 512)
        .sum()
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
    // Each large echo leaves its bytes in both regions (the job's and the reply's); one
    // through the pipe leaves them in neither.
    for (seed, len) in [(7, 1 << 20), (8, 16 << 20), (9, 80 << 10)] {
        let data = bytes(seed, len);
        let (back, worker) = echo_of(&pool, &data).await;
        assert!(back == data, "{len} bytes came back identical");
        let needle = data[len / 2..len / 2 + 64].to_vec();
        let mut checked = pool.spawn(regions_hold, needle.clone());
        let held = (&mut checked).await.unwrap();
        assert_eq!(checked.pid(), worker, "the same worker");
        match len <= 1 << 20 {
            true => assert_eq!(held, [true, true], "{len} bytes went both ways in memory"),
            // Only the first 1 MiB is certain to be kept: look for the start instead.
            false => {
                let start = pool.spawn(regions_hold, data[..64].to_vec()).await.unwrap();
                assert_eq!(start, [true, true], "{len} bytes went both ways in memory");
            }
        }
    }
}

async fn an_idle_worker_gives_back_what_large_frames_grew() {
    let pool = ProcessPool::new(1).unwrap();
    let inodes = pool.spawn(region_inodes, ()).await.unwrap();
    assert_eq!(inodes.len(), 2);
    let data = bytes(1, 16 << 20);
    assert!(echo_of(&pool, &data).await.0 == data);
    let grown = memory_in(&inodes);
    assert!(
        grown >= 2 * data.len() as u64,
        "{grown} bytes for 16 MiB each way"
    );
    // Each region keeps 1 MiB and its header page.
    common::eventually("the idle worker's regions give their memory back", || {
        memory_in(&inodes) <= 2 * ((1 << 20) + 4096)
    })
    .await;
    assert!(echo_of(&pool, &data).await.0 == data, "and still serve");
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

async fn what_a_task_does_to_the_shared_memory_harms_no_one_else() {
    let pool = ProcessPool::new(1).unwrap();
    let (_, pid) = echo_of(&pool, &bytes(1, 4 << 20)).await;
    let vm_before = vm_size();
    let tries = pool.spawn(vandalise_the_regions, ()).await.unwrap();
    assert_eq!(tries.len(), 2, "one region each way: {tries:?}");
    assert!(tries.iter().all(Result::is_err), "none shrinks: {tries:?}");
    for seed in 2..5 {
        let data = bytes(seed, 4 << 20);
        let (back, same) = echo_of(&pool, &data).await;
        assert!(back == data, "4 MiB came back identical");
        assert_eq!(same, pid, "the worker still serves");
    }
    let grown = vm_size().saturating_sub(vm_before);
    assert!(
        grown < 1 << 20,
        "the parent's address space grew by {grown} KiB"
    );
}

fn main() {
    let both_ways = scenarios![
        large_payloads_cross_both_ways_without_the_pipe,
        an_idle_worker_gives_back_what_large_frames_grew,
    ];
    let scenarios = scenarios![
        a_stream_of_large_items_arrives_whole_and_in_order,
        a_worker_that_dies_holding_a_large_frame_is_replaced,
        what_a_task_does_to_the_shared_memory_harms_no_one_else,
    ];
    let mut trials = common::trials_under(&RUNTIMES, &both_ways);
    trials.extend(common::trials_under(
        &[Runtime::Smol, Runtime::TokioMultiThread],
        &scenarios,
    ));
    common::main_with(trials);
}
