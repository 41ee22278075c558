//! What a `ProcessTask` says about itself is true: pid, status, times, name, `Debug`.

mod common;

use std::time::Duration;

use common::{is_our_child, sleep_ms, trial, wait_until, Runtime};
use offload::{ProcessPool, TaskStatus};

fn pid_is_a_live_child_while_a_task_runs() {
    let pool = ProcessPool::new(1).unwrap();
    let task = pool.spawn(sleep_ms, 300);
    wait_until("the task runs", || task.status() == TaskStatus::Running);
    let pid = task.pid().expect("a running task has a pid");
    assert_ne!(pid, std::process::id());
    assert!(is_our_child(pid), "worker {pid} is alive and our child");
    assert!(task.started_at().is_some() && task.ended_at().is_none());
    assert_eq!(task.duration(), None);
    let ran_in = task.wait().unwrap();
    assert_eq!(ran_in, pid, "the task ran in the process its pid names");
}

fn second_task_waits_pending_without_pid_then_runs() {
    let pool = ProcessPool::new(1).unwrap();
    let mut first = pool.spawn(sleep_ms, 300);
    wait_until("the first task runs", || first.status() == "running");
    let mut second = pool.spawn(sleep_ms, 100);
    assert_eq!(second.status(), TaskStatus::Pending);
    assert_eq!(second.pid(), None);
    assert_eq!(second.started_at(), None);
    assert_eq!(second.queued(), None, "still queued");
    assert!(format!("{second:?}").contains("status='pending' pid='n/a' duration='n/a'"));

    Runtime::Smol.block_on(async move {
        let first_pid = (&mut first).await.unwrap();
        let second_pid = (&mut second).await.unwrap();
        assert_eq!(first_pid, second_pid, "one worker ran both");
        assert_eq!(second.pid(), Some(second_pid));

        // The second task left the queue only when the first had ended ...
        let (first_end, second_start) = (first.ended_at().unwrap(), second.started_at().unwrap());
        assert!(second_start >= first_end);
        let queued = second.queued().unwrap();
        assert_eq!(queued, second_start - second.submitted_at());
        assert!(queued >= first_end - second.submitted_at());
        // ... and its duration counts its own run only.
        let duration = second.duration().unwrap();
        assert!(duration >= Duration::from_millis(100), "{duration:?}");
        let total = second.ended_at().unwrap() - second.submitted_at();
        assert_eq!(queued + duration, total);
        assert!(duration < total);
    });
}

fn debug_format_and_info_snapshot() {
    let pool = ProcessPool::new(1).unwrap();
    let mut task = pool.spawn(sleep_ms, 1);
    Runtime::Smol.block_on(async move {
        let pid = (&mut task).await.unwrap();
        let text = format!("{task:?}");
        let prefix = format!("<ProcessTask func='sleep_ms' status='done' pid={pid} duration=");
        assert!(text.starts_with(&prefix), "{text}");
        let secs = text[prefix.len()..].strip_suffix("s>").expect(&text);
        let (whole, decimals) = secs.split_once('.').expect(&text);
        assert!(
            whole.parse::<u64>().is_ok() && decimals.len() == 4,
            "{text}"
        );
        let shown: f64 = secs.parse().unwrap();
        let real = task.duration().unwrap().as_secs_f64();
        assert!((shown - real).abs() <= 0.00005, "{shown} vs {real}");

        let info = task.info();
        assert_eq!(info.id(), task.id());
        assert_eq!(info.func_name(), "sleep_ms");
        assert_eq!(info.status(), "done");
        assert_eq!(info.pid(), Some(pid));
        assert_eq!(info.duration(), task.duration());
        assert!(info.error().is_none());
        assert!(format!("{info:?}").starts_with("<TaskInfo func='sleep_ms' status='done'"));
    });
}

fn ids_are_unique_and_times_ordered() {
    let pool = ProcessPool::new(2).unwrap();
    let mut tasks: Vec<_> = (0..4).map(|_| pool.spawn(sleep_ms, 5)).collect();
    let mut ids: Vec<u64> = tasks.iter().map(|t| t.id()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 4);
    Runtime::Smol.block_on(async move {
        for task in &mut tasks {
            (&mut *task).await.unwrap();
            let info = task.info();
            assert!(info.submitted_at() <= info.started_at().unwrap());
            assert!(info.started_at().unwrap() <= info.ended_at().unwrap());
        }
    });
}

fn add(a: i64, b: i64) -> i64 {
    a + b
}

fn label(name: String, tags: Vec<u8>) -> usize {
    name.len() + tags.len()
}

/// A task gives back what it was started with: its timeout, its cancel timeout and its
/// arguments, on the handle, in snapshots and in callbacks, also after it ended.
fn metadata_gives_back_what_the_task_was_started_with() {
    let pool = ProcessPool::new(1).unwrap();
    let mut plain = pool.spawn(add, (40, 2));
    assert_eq!(plain.timeout(), None);
    assert_eq!(
        plain.cancel_timeout(),
        Duration::from_secs(5),
        "the default"
    );
    assert_eq!(plain.args().as_deref(), Some("[40, 2]"));
    Runtime::Smol.block_on(async move {
        assert_eq!((&mut plain).await.unwrap(), 42);
        assert_eq!(
            plain.info().args().as_deref(),
            Some("[40, 2]"),
            "kept after the end"
        );
    });

    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let record = seen.clone();
    let task = pool
        .task(label)
        .timeout(Duration::from_secs(7))
        .cancel_timeout(Duration::from_millis(250))
        .on_start(move |info: &offload::TaskInfo| {
            *record.lock().unwrap() = Some((info.timeout(), info.cancel_timeout(), info.args()));
        })
        .spawn(("tiff".to_string(), vec![1, 2, 3]));
    assert_eq!(task.timeout(), Some(Duration::from_secs(7)));
    assert_eq!(task.cancel_timeout(), Duration::from_millis(250));
    let info = task.info();
    assert_eq!(task.wait().unwrap(), 7);
    assert_eq!(info.args().as_deref(), Some(r#"["tiff", [1, 2, 3]]"#));
    assert_eq!(
        seen.lock().unwrap().clone(),
        Some((
            Some(Duration::from_secs(7)),
            Duration::from_millis(250),
            Some(r#"["tiff", [1, 2, 3]]"#.to_string())
        ))
    );
    assert_eq!(pool.spawn(sleep_ms, 1).args().as_deref(), Some("1"));
}

fn main() {
    common::main_with(vec![
        trial(
            "pid_is_a_live_child_while_a_task_runs",
            pid_is_a_live_child_while_a_task_runs,
        ),
        trial(
            "second_task_waits_pending_without_pid_then_runs",
            second_task_waits_pending_without_pid_then_runs,
        ),
        trial(
            "debug_format_and_info_snapshot",
            debug_format_and_info_snapshot,
        ),
        trial(
            "ids_are_unique_and_times_ordered",
            ids_are_unique_and_times_ordered,
        ),
        trial(
            "metadata_gives_back_what_the_task_was_started_with",
            metadata_gives_back_what_the_task_was_started_with,
        ),
    ]);
}
