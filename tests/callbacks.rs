//! Callbacks run on the pool's thread, in order, once each, with the metadata set; a
//! panicking callback changes nothing else.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, sleep_ms, spin, Runtime};
use offload::{ProcessPool, TaskError, TaskInfo, TaskStatus};

fn boom() -> u32 {
    panic!("boom")
}

/// What the callbacks saw: (callback, thread name, snapshot).
type Log = Arc<Mutex<Vec<(&'static str, String, TaskInfo)>>>;

fn recorder(log: &Log, name: &'static str) -> impl Fn(&TaskInfo) + Send + Sync + 'static {
    let log = log.clone();
    move |info: &TaskInfo| {
        let thread = std::thread::current().name().unwrap_or("").to_string();
        log.lock().unwrap().push((name, thread, info.clone()));
    }
}

fn names(log: &Log) -> Vec<&'static str> {
    log.lock().unwrap().iter().map(|(name, ..)| *name).collect()
}

async fn success_runs_on_start_then_on_done_on_the_driver_thread() {
    let pool = ProcessPool::new(1).unwrap();
    let log = Log::default();
    let mut task = pool
        .task(sleep_ms)
        .on_start(recorder(&log, "start"))
        .on_done(recorder(&log, "done"))
        .on_error(recorder(&log, "error"))
        .spawn(20);
    let pid = (&mut task).await.unwrap();
    eventually("on_done ran", || names(&log).len() == 2).await;
    let entries = log.lock().unwrap().clone();
    assert_eq!(names(&log), ["start", "done"]);
    let (_, thread, started) = &entries[0];
    assert_eq!(thread, "offload-driver");
    assert_eq!(started.status(), TaskStatus::Running);
    assert_eq!(started.pid(), Some(pid));
    assert!(started.duration().is_none());
    let (_, thread, done) = &entries[1];
    assert_eq!(thread, "offload-driver");
    assert_eq!(done.status(), TaskStatus::Done);
    assert!(done.duration().unwrap() >= Duration::from_millis(20));
    assert_eq!(done.id(), task.id());
}

async fn on_error_fires_once_for_panic_timeout_and_cancellations() {
    let pool = ProcessPool::new(1).unwrap();
    let log = Log::default();

    let panicked = pool.task(boom).on_error(recorder(&log, "panic")).spawn(());
    assert!(panicked.await.unwrap_err().is_panicked());

    let timed_out = pool
        .task(spin)
        .timeout(Duration::from_millis(50))
        .on_error(recorder(&log, "timeout"))
        .spawn(());
    assert!(timed_out.await.unwrap_err().is_timed_out());

    let running = pool
        .task(spin)
        .on_start(recorder(&log, "running-start"))
        .on_error(recorder(&log, "running"))
        .spawn(());
    eventually("the task runs", || running.status() == "running").await;
    let queued = pool
        .task(spin)
        .on_start(recorder(&log, "queued-start"))
        .on_error(recorder(&log, "queued"))
        .spawn(());
    assert!(queued.cancel());
    assert!(running.cancel_and_wait().await);
    drop((running, queued));

    let expected = ["panic", "timeout", "running-start", "queued", "running"];
    eventually("every on_error ran", || names(&log).len() >= expected.len()).await;
    let mut seen = names(&log);
    // The two cancellations are reported in whichever order the driver learns of them, but
    // each after its own start.
    let tail = seen.split_off(3);
    assert_eq!(seen, ["panic", "timeout", "running-start"]);
    let mut tail_sorted = tail.clone();
    tail_sorted.sort();
    assert_eq!(tail_sorted, ["queued", "running"], "{tail:?}");
    for (name, thread, info) in log.lock().unwrap().iter() {
        assert_eq!(thread, "offload-driver", "{name}");
        if !name.ends_with("start") {
            assert!(info.error().is_some(), "{name}: the error is set");
        }
    }
    let entries = log.lock().unwrap().clone();
    let error_of = |n: &str| {
        entries
            .iter()
            .find(|e| e.0 == n)
            .unwrap()
            .2
            .error()
            .cloned()
    };
    assert!(matches!(error_of("queued"), Some(TaskError::Cancelled)));
    assert!(matches!(error_of("running"), Some(TaskError::Cancelled)));
    // Nothing fires twice, even later.
    pool.shutdown().await;
    assert_eq!(names(&log).len(), expected.len());
}

async fn panicking_callback_changes_nothing_else() {
    let pool = ProcessPool::new(1).unwrap();
    let log = Log::default();
    let mut task = pool
        .task(sleep_ms)
        .on_start(|_: &TaskInfo| panic!("a broken on_start"))
        .on_done(recorder(&log, "done"))
        .spawn(1);
    let pid = (&mut task).await.unwrap();
    assert_eq!(task.status(), TaskStatus::Done);
    eventually("on_done still ran", || names(&log) == ["done"]).await;
    assert_eq!(
        pool.spawn(sleep_ms, 1).await.unwrap(),
        pid,
        "the pool is intact"
    );
}

async fn blocking_on_a_pool_in_a_callback_panics_instead_of_hanging() {
    let pool = ProcessPool::new(1).unwrap();
    let other = ProcessPool::new(1).unwrap();
    let log = Log::default();
    let tried = log.clone();
    let mut task = pool
        .task(sleep_ms)
        .on_done(move |info: &TaskInfo| {
            tried
                .lock()
                .unwrap()
                .push(("tried", String::new(), info.clone()));
            // On the driver thread this would wait for itself (or another pool's driver
            // would, for all it knows): it panics, and the panic is caught.
            let _ = other.spawn(sleep_ms, 1).wait();
            tried
                .lock()
                .unwrap()
                .push(("waited", String::new(), info.clone()));
        })
        .spawn(1);
    let pid = (&mut task).await.unwrap();
    eventually("the callback ran", || names(&log) == ["tried"]).await;
    assert_eq!(
        pool.spawn(sleep_ms, 1).await.unwrap(),
        pid,
        "the pool serves on"
    );
    assert_eq!(names(&log), ["tried"], "the blocking call did not return");
}

/// A callback that takes a while, then records its name.
fn slow_recorder(log: &Log, name: &'static str) -> impl Fn(&TaskInfo) + Send + Sync + 'static {
    let record = recorder(log, name);
    move |info: &TaskInfo| {
        std::thread::sleep(Duration::from_millis(30));
        record(info)
    }
}

/// "Log in a callback, read the log after `await`": the result is handed out only once the
/// task's `on_done` or `on_error` has returned, however long it takes.
async fn end_callbacks_have_run_when_await_returns() {
    let pool = ProcessPool::new(1).unwrap();
    let log = Log::default();
    let done = pool
        .task(sleep_ms)
        .on_done(slow_recorder(&log, "done"))
        .spawn(1);
    done.await.unwrap();
    assert_eq!(names(&log), ["done"]);

    let failed = pool
        .task(boom)
        .on_error(slow_recorder(&log, "panic"))
        .spawn(());
    assert!(failed.await.unwrap_err().is_panicked());
    assert_eq!(names(&log), ["done", "panic"]);

    let timed_out = pool
        .task(spin)
        .timeout(Duration::from_millis(20))
        .on_error(slow_recorder(&log, "timeout"))
        .spawn(());
    assert!(timed_out.await.unwrap_err().is_timed_out());
    assert_eq!(names(&log), ["done", "panic", "timeout"]);

    let mut running = pool
        .task(spin)
        .on_error(slow_recorder(&log, "cancel"))
        .spawn(());
    eventually("the task runs", || running.status() == "running").await;
    assert!(running.cancel());
    assert!((&mut running).await.unwrap_err().is_cancelled());
    assert_eq!(names(&log), ["done", "panic", "timeout", "cancel"]);

    let task = pool
        .task(sleep_ms)
        .on_done(slow_recorder(&log, "wait"))
        .spawn(1);
    std::thread::spawn(move || task.wait().map(|_| ()))
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(names(&log), ["done", "panic", "timeout", "cancel", "wait"]);
}

fn main() {
    let scenarios = scenarios![
        success_runs_on_start_then_on_done_on_the_driver_thread,
        on_error_fires_once_for_panic_timeout_and_cancellations,
        panicking_callback_changes_nothing_else,
        blocking_on_a_pool_in_a_callback_panics_instead_of_hanging,
        end_callbacks_have_run_when_await_returns,
    ];
    let runtimes = [Runtime::Smol, Runtime::TokioMultiThread];
    common::main_with(common::trials_under(&runtimes, &scenarios));
}
