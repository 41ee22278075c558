//! Inside a running task: progress reports, streamed results with backpressure, captured
//! output, forwarded `log` records, and the stderr a dead worker leaves with its error.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{alive, eventually, Runtime};
use futures_lite::StreamExt;
use offload::{ProcessPool, Progress, TaskError, TaskInfo};

// ---- task functions, run in the workers ----

fn hundred_steps() -> u64 {
    for i in 1..=100 {
        offload::progress(i, 100);
        std::thread::sleep(Duration::from_micros(200));
    }
    100
}

fn square(x: u64) -> u64 {
    x * x
}

fn numbers(n: u64) -> std::ops::Range<u64> {
    0..n
}

/// Items `0..n`, reporting as progress how many it produced.
fn counted(n: u64) -> impl Iterator<Item = u64> {
    (0..n).inspect(move |i| offload::progress(i + 1, n))
}

/// An async stream of `0..n`, a timer between items, that panics at `fail_at`.
fn ticking(n: u64, fail_at: u64) -> impl futures_lite::Stream<Item = u64> {
    futures_lite::stream::iter(0..n).then(move |i| async move {
        async_io::Timer::after(Duration::from_micros(100)).await;
        assert_ne!(i, fail_at, "tick {i} failed");
        i
    })
}

fn naturals() -> std::ops::RangeFrom<u64> {
    0..
}

fn panics_at(at: u64) -> impl Iterator<Item = u64> {
    (0..).inspect(move |&i| {
        if i == at {
            panic!("item {i} is cursed");
        }
    })
}

/// Serializes fine, except the value 13, whose `Serialize` panics; 7 decodes with a panic.
#[derive(Debug, PartialEq)]
struct Touchy(u64);

impl serde::Serialize for Touchy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        assert_ne!(self.0, 13, "13 does not serialize");
        s.serialize_u64(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Touchy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = <u64 as serde::Deserialize>::deserialize(d)?;
        assert_ne!(n, 7, "7 does not deserialize");
        Ok(Touchy(n))
    }
}

fn touchy(from: u64) -> impl Iterator<Item = Touchy> {
    (from..from + 100).map(Touchy)
}

fn warns(n: u32) -> u32 {
    log::warn!(target: "offload_test", "warning number {n}");
    log::trace!("below the parent's level");
    n
}

/// Prints `n` distinct lines tagged `tag` through three writers: Rust's `println!`, a raw
/// `write(1, ..)`, and a child `sh -c 'echo ..'`; returns its pid.
fn noisy(tag: String, n: u32) -> u32 {
    for i in 0..n {
        match i % 3 {
            0 => println!("{tag} println {i}"),
            1 => {
                let line = format!("{tag} write {i}\n");
                rustix::io::write(rustix::stdio::stdout(), line.as_bytes()).unwrap();
            }
            _ => {
                let status = std::process::Command::new("sh")
                    .args([
                        "-c",
                        &format!("echo '{tag} echo {i}'; echo '{tag} stderr {i}' >&2"),
                    ])
                    .status()
                    .unwrap();
                assert!(status.success());
            }
        }
    }
    std::process::id()
}

fn loud(bytes: usize) -> usize {
    use std::io::Write;
    let line = [b'x'; 1023];
    let mut out = std::io::stdout().lock();
    let mut written = 0;
    while written < bytes {
        out.write_all(&line).unwrap();
        out.write_all(b"\n").unwrap();
        written += 1024;
    }
    written
}

/// Starts a shell that writes to fd 1 without end and leaves it behind; returns its pid.
fn leaves_a_writer_behind() -> u32 {
    println!("mine before");
    let mut writer = std::process::Command::new("sh")
        .args(["-c", "while :; do echo spam; done"])
        .spawn()
        .unwrap();
    let pid = writer.id();
    // Reaped by this worker once it goes, so that it does not linger as a zombie.
    std::thread::spawn(move || writer.wait());
    std::thread::sleep(Duration::from_millis(20));
    println!("mine after");
    pid
}

/// Writes through C's stdio, which buffers fully when fd 1 is a pipe.
fn c_printf(n: i32) -> i32 {
    // SAFETY: a NUL-terminated format string with one `%d` and one `int` argument.
    unsafe { libc::printf(c"from C %d\n".as_ptr(), n) }
}

/// Reports 1 and 2 of 10 at once (the second is held back), then waits for `gate`.
fn reports_then_waits(gate: std::path::PathBuf) -> u32 {
    offload::progress(1, 10);
    offload::progress(2, 10);
    common::wait_for_file(gate)
}

/// Writes its last words to its (captured) stderr, waits for `gate`, then aborts.
fn captured_last_words(gate: std::path::PathBuf) -> u32 {
    eprintln!("captured: the disk is full");
    common::wait_for_file(gate);
    std::process::abort()
}

fn last_words() -> u32 {
    eprintln!("the disk is full, giving up");
    std::process::abort()
}

// ---- progress ----

async fn the_last_progress_is_the_final_report_and_callbacks_never_go_back() {
    let pool = ProcessPool::new(1).unwrap();
    let seen = Arc::new(Mutex::new(Vec::<Progress>::new()));
    let record = seen.clone();
    let mut task = pool
        .task(hundred_steps)
        .on_progress(move |i: &TaskInfo| record.lock().unwrap().push(i.progress().unwrap()))
        .spawn(());
    assert_eq!((&mut task).await.unwrap(), 100);
    assert_eq!(
        task.progress(),
        Some(Progress {
            done: 100,
            total: 100
        })
    );
    assert_eq!(task.info().progress(), task.progress());
    let seen = seen.lock().unwrap();
    assert!(
        !seen.is_empty() && seen.len() <= 100,
        "{} reports",
        seen.len()
    );
    assert!(
        seen.windows(2).all(|w| w[0].done <= w[1].done),
        "went back: {seen:?}"
    );
    assert_eq!(
        seen.last(),
        Some(&Progress {
            done: 100,
            total: 100
        })
    );
}

async fn a_progress_bar_over_a_map_sees_every_item_done() {
    let pool = ProcessPool::new(2).unwrap();
    let seen = Arc::new(Mutex::new(Vec::<Progress>::new()));
    let record = seen.clone();
    let squares = pool
        .task(square)
        .on_progress(move |i: &TaskInfo| record.lock().unwrap().push(i.progress().unwrap()))
        .map(0..20_000u64)
        .await;
    assert!(squares
        .iter()
        .enumerate()
        .all(|(i, r)| *r.as_ref().unwrap() == (i * i) as u64));
    let seen = seen.lock().unwrap();
    assert!(seen.windows(2).all(|w| w[0].done <= w[1].done), "went back");
    assert!(seen.iter().all(|p| p.total == 20_000 && p.done <= 20_000));
    assert_eq!(
        seen.last(),
        Some(&Progress {
            done: 20_000,
            total: 20_000
        })
    );
}

async fn a_report_held_back_arrives_while_the_task_computes() {
    let dir = common::temp_dir("held-progress");
    let gate = dir.join("gate");
    let pool = ProcessPool::new(1).unwrap();
    let mut task = pool.spawn(reports_then_waits, gate.clone());
    eventually("the second report arrives", || {
        task.progress() == Some(Progress { done: 2, total: 10 })
    })
    .await;
    assert_eq!(task.status(), "running", "it arrived before the task ended");
    std::fs::write(&gate, b"").unwrap();
    (&mut task).await.unwrap();
}

async fn progress_outside_a_worker_does_nothing() {
    offload::progress(1, 2); // in the parent: no channel, no effect, no panic
    let pool = ProcessPool::new(1).unwrap();
    let mut task = pool.spawn(square, 3);
    (&mut task).await.unwrap();
    assert_eq!(
        task.progress(),
        None,
        "a task that reports nothing has no progress"
    );
}

// ---- streams ----

async fn a_stream_of_ten_thousand_items_arrives_complete_and_in_order() {
    let pool = ProcessPool::new(1).unwrap();
    let mut stream = pool.spawn_stream(numbers, 10_000);
    let mut expected = 0;
    while let Some(item) = stream.next().await {
        assert_eq!(item.unwrap(), expected);
        expected += 1;
    }
    assert_eq!(expected, 10_000);
    assert_eq!(stream.status(), "done");
    assert!(stream.pid().is_some() && stream.duration().is_some());
}

async fn a_slow_consumer_keeps_the_worker_at_most_a_window_ahead() {
    const N: u64 = 10_000_000;
    let pool = ProcessPool::new(1).unwrap();
    let mut stream = pool.task(counted).stream_window(1000).spawn_stream(N);
    let window = stream.window();
    let mut taken = 0u64;
    for pause_at in [0, 1, 5_000, 3_000_000, N - 10] {
        while taken < pause_at {
            assert_eq!(stream.next().await.unwrap().unwrap(), taken);
            taken += 1;
        }
        // The worker reports what it produced before it waits for credit.
        let mut last = None;
        let mut stable_since = Instant::now();
        eventually("the worker waits for credit", || {
            let now = stream.progress().map(|p| p.done);
            if now != last {
                last = now;
                stable_since = Instant::now();
            }
            now.is_some() && stable_since.elapsed() > Duration::from_millis(100)
        })
        .await;
        let produced = last.unwrap();
        assert!(
            produced <= taken + window + 1,
            "the worker produced {produced} items with {taken} taken and a window of {window}"
        );
        if pause_at < N - 10 {
            assert!(
                produced >= taken + window / 2,
                "it ran ahead: {produced}, {taken}"
            );
        }
    }
    let rest = stream.count().await;
    assert_eq!(taken + rest as u64, N);
}

async fn dropping_a_stream_stops_its_worker_within_a_second() {
    let pool = ProcessPool::new(1).unwrap();
    let mut stream = pool.spawn_stream(naturals, ());
    for expected in 0..1000 {
        assert_eq!(stream.next().await.unwrap().unwrap(), expected);
    }
    let pid = stream.pid().unwrap();
    let dropped = Instant::now();
    drop(stream);
    eventually("the stream's worker is gone", || !alive(pid)).await;
    assert!(
        dropped.elapsed() < Duration::from_secs(1),
        "{:?}",
        dropped.elapsed()
    );
}

async fn a_stream_that_panics_yields_its_items_then_the_panic() {
    let pool = ProcessPool::new(1).unwrap();
    let items: Vec<_> = pool.spawn_stream(panics_at, 500).collect().await;
    assert_eq!(items.len(), 501);
    for (i, item) in items[..500].iter().enumerate() {
        assert_eq!(*item.as_ref().unwrap(), i as u64);
    }
    match &items[500] {
        Err(TaskError::Panicked { message, location }) => {
            assert_eq!(message, "item 500 is cursed");
            assert!(
                location.as_deref().unwrap().contains("inside.rs"),
                "{location:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    // The worker lives on and serves the next task.
    assert_eq!(pool.spawn(square, 7).await.unwrap(), 49);
}

async fn a_cancelled_stream_ends_with_cancelled() {
    let pool = ProcessPool::new(1).unwrap();
    let mut stream = pool.spawn_stream(naturals, ());
    assert_eq!(stream.next().await.unwrap().unwrap(), 0);
    assert!(stream.cancel());
    let rest: Vec<_> = stream.collect().await;
    assert!(rest.last().unwrap().as_ref().unwrap_err().is_cancelled());
    assert!(rest[..rest.len() - 1].iter().all(Result::is_ok));
}

async fn an_item_whose_serde_panics_ends_the_stream_with_a_codec_error() {
    let pool = ProcessPool::new(1).unwrap();
    // In the worker: items 10, 11 and 12 arrive, 13's Serialize panics.
    let items: Vec<_> = pool.spawn_stream(touchy, 10).collect().await;
    assert_eq!(items.len(), 4, "{items:?}");
    assert_eq!(
        items[..3]
            .iter()
            .map(|i| i.as_ref().unwrap().0)
            .collect::<Vec<_>>(),
        [10, 11, 12]
    );
    match &items[3] {
        Err(TaskError::Encode(msg)) => assert!(msg.contains("13 does not serialize"), "{msg}"),
        other => panic!("{other:?}"),
    }
    // In the parent: 7's Deserialize panics; 0 to 6 arrive, then the error.
    let items: Vec<_> = pool.spawn_stream(touchy, 0).collect().await;
    assert_eq!(items.len(), 8, "{items:?}");
    match &items[7] {
        Err(TaskError::Decode(msg)) => assert!(msg.contains("7 does not deserialize"), "{msg}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        pool.spawn(square, 5).await.unwrap(),
        25,
        "the pool serves on"
    );
}

async fn an_async_stream_runs_its_timers_in_the_worker_and_is_backpressured() {
    let pool = ProcessPool::new(1).unwrap();
    let items: Vec<u64> = pool
        .task(ticking)
        .stream_window(4)
        .spawn_stream_async((200, u64::MAX))
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(items, (0..200).collect::<Vec<_>>());
    let items: Vec<_> = pool.spawn_stream_async(ticking, (200, 50)).collect().await;
    assert_eq!(items.len(), 51);
    assert!(items[..50].iter().all(Result::is_ok));
    assert!(
        items[50].as_ref().unwrap_err().is_panicked(),
        "{:?}",
        items[50]
    );
}

// ---- captured output ----

async fn two_tasks_each_get_exactly_their_own_output() {
    const LINES: u32 = 10_000;
    let pool = ProcessPool::new(2).unwrap();
    let mut a = pool.task(noisy).capture_output().spawn(("A".into(), LINES));
    let mut b = pool.task(noisy).capture_output().spawn(("B".into(), LINES));
    let (pid_a, pid_b) = ((&mut a).await.unwrap(), (&mut b).await.unwrap());
    assert_ne!(pid_a, pid_b, "one task per worker, at the same time");
    for (task, tag) in [(&a, "A"), (&b, "B")] {
        let output = task.output().unwrap();
        let stdout = String::from_utf8(output.stdout).unwrap();
        let mut expected: Vec<String> = (0..LINES)
            .map(|i| match i % 3 {
                0 => format!("{tag} println {i}"),
                1 => format!("{tag} write {i}"),
                _ => format!("{tag} echo {i}"),
            })
            .collect();
        let mut got: Vec<String> = stdout.lines().map(str::to_owned).collect();
        assert_eq!(got.len(), expected.len(), "{tag}: every line, no other");
        // Each writer's lines are in order; a child's may overtake a buffered `println!`.
        got.sort();
        expected.sort();
        assert_eq!(got, expected);
        let stderr = String::from_utf8(output.stderr).unwrap();
        let errs: Vec<&str> = stderr.lines().collect();
        assert_eq!(errs.len() as u32, LINES / 3, "{tag}");
        assert!(errs
            .iter()
            .all(|l| l.starts_with(&format!("{tag} stderr "))));
        assert_eq!((output.stdout_cut, output.stderr_cut), (0, 0));
    }
}

async fn output_over_the_limit_is_cut_and_counted() {
    let pool = ProcessPool::new(1).unwrap();
    let mut task = pool.task(loud).capture_output().spawn(3 << 20);
    let written = (&mut task).await.unwrap();
    let output = task.output().unwrap();
    assert_eq!(output.stdout.len(), offload::TaskOutput::LIMIT);
    assert_eq!(
        output.stdout.len() as u64 + output.stdout_cut,
        written as u64
    );
    // Nothing of it leaks into the next task's capture.
    let mut next = pool.task(square).capture_output().spawn(2);
    (&mut next).await.unwrap();
    assert_eq!(next.output().unwrap(), offload::TaskOutput::default());
}

async fn a_process_left_behind_neither_hangs_the_task_nor_leaks_into_the_next() {
    let pool = ProcessPool::new(1).unwrap();
    let mut task = pool.task(leaves_a_writer_behind).capture_output().spawn(());
    let writer = (&mut task).await.unwrap();
    let stdout = String::from_utf8(task.output().unwrap().stdout).unwrap();
    assert!(stdout.starts_with("mine before\n"), "{stdout:.100}");
    assert!(stdout.contains("mine after\n"));
    // The writer loses its pipe with the task's end, and goes.
    eventually("the writer left behind is gone", || !alive(writer)).await;
    let mut next = pool.task(square).capture_output().spawn(3);
    (&mut next).await.unwrap();
    assert_eq!(next.output().unwrap().stdout, b"", "nothing of the writer");
}

async fn c_stdio_is_captured_and_flushed_with_the_task() {
    let pool = ProcessPool::new(1).unwrap();
    let mut task = pool.task(c_printf).capture_output().spawn(42);
    (&mut task).await.unwrap();
    assert_eq!(task.output().unwrap().stdout, b"from C 42\n");
}

async fn a_captured_tasks_last_words_are_in_its_error() {
    let dir = common::temp_dir("captured-last-words");
    let gate = dir.join("gate");
    let pool = ProcessPool::new(1).unwrap();
    let mut task = pool
        .task(captured_last_words)
        .capture_output()
        .spawn(gate.clone());
    // What reached the parent before the death is the task's, and its error's (what the
    // worker wrote in the instant before it died may not have: docs/decisions.md).
    let words: &[u8] = b"captured: the disk is full";
    eventually("the words reach the parent", || {
        task.output()
            .unwrap()
            .stderr
            .windows(words.len())
            .any(|w| w == words)
    })
    .await;
    std::fs::write(&gate, b"").unwrap();
    match (&mut task).await.unwrap_err() {
        TaskError::WorkerDied {
            stderr: Some(said), ..
        } => assert!(said.contains("captured: the disk is full"), "{said:?}"),
        other => panic!("{other:?}"),
    }
}

async fn without_capture_there_is_no_output() {
    let pool = ProcessPool::new(1).unwrap();
    let mut task = pool.spawn(square, 2);
    (&mut task).await.unwrap();
    assert_eq!(task.output(), None);
}

async fn a_dead_workers_last_stderr_is_in_its_error() {
    let pool = ProcessPool::new(1).unwrap();
    let error = pool.spawn(last_words, ()).await.unwrap_err();
    match &error {
        TaskError::WorkerDied {
            signal: Some(6),
            stderr: Some(said),
            ..
        } => assert!(said.contains("the disk is full, giving up"), "{said:?}"),
        other => panic!("{other:?}"),
    }
    assert!(error.to_string().contains("the disk is full"), "{error}");
}

// ---- logs ----

/// The records this process's logger received: (level, target, message, task, pid).
type Logged = (log::Level, String, String, Option<u64>, Option<u64>);
static LOGGED: Mutex<Vec<Logged>> = Mutex::new(Vec::new());

struct TestLogger;

impl log::Log for TestLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let kv = record.key_values();
        let get = |key: &str| kv.get(log::kv::Key::from(key)).and_then(|v| v.to_u64());
        LOGGED.lock().unwrap().push((
            record.level(),
            record.target().to_owned(),
            record.args().to_string(),
            get("task"),
            get("pid"),
        ));
    }

    fn flush(&self) {}
}

async fn a_log_record_in_a_task_reaches_the_parents_logger_tagged() {
    let pool = ProcessPool::new(1).unwrap();
    let n = fastrand_like();
    let mut task = pool.spawn(warns, n);
    (&mut task).await.unwrap();
    // In order with the task's end: the record is there when the result is.
    let message = format!("warning number {n}");
    let logged = LOGGED.lock().unwrap();
    let record = logged
        .iter()
        .find(|r| r.2 == message)
        .expect("the record arrived");
    assert_eq!(record.0, log::Level::Warn);
    assert_eq!(record.1, "offload_test");
    assert_eq!(record.3, Some(task.id()));
    assert_eq!(record.4, Some(u64::from(task.pid().unwrap())));
    assert!(
        !logged.iter().any(|r| r.2 == "below the parent's level"),
        "records above the parent's level are not sent"
    );
}

/// A number no other scenario logs.
fn fastrand_like() -> u32 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.unwrap().subsec_nanos()
}

fn main() {
    offload::init(); // before the logger: a worker (without `before-main`) keeps its own
    log::set_logger(&TestLogger).unwrap();
    log::set_max_level(log::LevelFilter::Debug);
    let scenarios = scenarios![
        the_last_progress_is_the_final_report_and_callbacks_never_go_back,
        a_progress_bar_over_a_map_sees_every_item_done,
        progress_outside_a_worker_does_nothing,
        a_report_held_back_arrives_while_the_task_computes,
        a_stream_of_ten_thousand_items_arrives_complete_and_in_order,
        dropping_a_stream_stops_its_worker_within_a_second,
        a_stream_that_panics_yields_its_items_then_the_panic,
        a_cancelled_stream_ends_with_cancelled,
        an_item_whose_serde_panics_ends_the_stream_with_a_codec_error,
        an_async_stream_runs_its_timers_in_the_worker_and_is_backpressured,
        two_tasks_each_get_exactly_their_own_output,
        output_over_the_limit_is_cut_and_counted,
        without_capture_there_is_no_output,
        a_process_left_behind_neither_hangs_the_task_nor_leaks_into_the_next,
        c_stdio_is_captured_and_flushed_with_the_task,
        a_captured_tasks_last_words_are_in_its_error,
        a_dead_workers_last_stderr_is_in_its_error,
        a_log_record_in_a_task_reaches_the_parents_logger_tagged,
    ];
    let runtimes = [Runtime::Smol, Runtime::TokioMultiThread];
    let mut trials = common::trials_under(&runtimes, &scenarios);
    // Ten million items one by one take a while in a debug build on a busy machine.
    let long = scenarios![a_slow_consumer_keeps_the_worker_at_most_a_window_ahead];
    trials.extend(common::trials_within(
        Duration::from_secs(600),
        &runtimes,
        &long,
    ));
    common::main_with(trials);
}
