//! A failure fails its own task only: panics, worker deaths and codec errors leave the pool
//! serving at full size.

mod common;

use common::{eventually, rendezvous, sleep_ms, temp_dir, Runtime};
use offload::{ProcessPool, TaskError, TaskStatus};
use serde::{de, ser, Deserialize, Deserializer, Serialize, Serializer};

fn boom(n: u32) -> u32 {
    panic!("boom {n}")
}

fn abort_now() -> u32 {
    std::process::abort()
}

fn exit_3() -> u32 {
    std::process::exit(3)
}

/// Refuses to be encoded.
#[derive(Debug)]
struct Unencodable;

impl Serialize for Unencodable {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(ser::Error::custom("refuses to encode"))
    }
}

impl<'de> Deserialize<'de> for Unencodable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <()>::deserialize(d).map(|()| Unencodable)
    }
}

/// Encodes fine, refuses to be decoded.
#[derive(Debug)]
struct Undecodable;

impl Serialize for Undecodable {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}

impl<'de> Deserialize<'de> for Undecodable {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(de::Error::custom("refuses to decode"))
    }
}

fn take_unencodable(_: Unencodable) -> u32 {
    std::process::id()
}

fn take_undecodable(_: Undecodable) -> u32 {
    std::process::id()
}

fn make_unencodable() -> Unencodable {
    Unencodable
}

fn make_undecodable() -> Undecodable {
    Undecodable
}

fn whoami() -> u32 {
    std::process::id()
}

/// Both workers of a two-worker pool serve, at the same time, and none of them is `dead`.
async fn both_workers_serve(pool: &ProcessPool, dead: &[u32], name: &str) {
    let dir = temp_dir(name);
    let a = pool.spawn(rendezvous, (dir.clone(), 2));
    let b = pool.spawn(rendezvous, (dir.clone(), 2));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert_ne!(a, b, "two workers served");
    assert!(!dead.contains(&a) && !dead.contains(&b));
    std::fs::remove_dir_all(dir).unwrap();
}

async fn panic_fails_its_task_and_the_worker_serves_on() {
    let pool = ProcessPool::new(1).unwrap();
    let mut task = pool.spawn(boom, 7);
    match (&mut task).await {
        Err(TaskError::Panicked { message, location }) => {
            assert_eq!(message, "boom 7");
            let location = location.expect("the location is reported");
            assert!(location.contains("failures.rs"), "{location}");
        }
        other => panic!("expected a panic, got {other:?}"),
    }
    assert_eq!(task.status(), TaskStatus::Failed);
    assert!(task.info().error().unwrap().is_panicked());
    let next = pool.spawn(whoami, ()).await.unwrap();
    assert_eq!(
        Some(next),
        task.pid(),
        "the same worker serves the next task"
    );
}

async fn abort_fails_its_task_with_sigabrt_and_is_replaced() {
    let pool = ProcessPool::new(2).unwrap();
    let mut task = pool.spawn(abort_now, ());
    let err = (&mut task).await.unwrap_err();
    let pid = task.pid().unwrap();
    match err {
        TaskError::WorkerDied {
            pid: died,
            code: None,
            signal: Some(6),
            ..
        } => assert_eq!(died, pid),
        other => panic!("expected death by SIGABRT, got {other:?}"),
    }
    assert_eq!(task.status(), TaskStatus::Failed);
    both_workers_serve(&pool, &[pid], "abort").await;
}

async fn exit_code_is_reported() {
    let pool = ProcessPool::new(1).unwrap();
    let mut task = pool.spawn(exit_3, ());
    let err = (&mut task).await.unwrap_err();
    assert!(
        matches!(
            err,
            TaskError::WorkerDied {
                code: Some(3),
                signal: None,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "worker process {} died: exited with code 3",
            task.pid().unwrap()
        )
    );
    let next = pool.spawn(whoami, ()).await.unwrap();
    assert_ne!(Some(next), task.pid(), "a new worker serves");
}

async fn sigkill_from_outside_fails_only_that_task() {
    let pool = ProcessPool::new(2).unwrap();
    let victim = pool.spawn(sleep_ms, 60_000);
    let bystander = pool.spawn(sleep_ms, 200);
    eventually("the victim runs", || victim.status() == "running").await;
    let pid = victim.pid().unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let err = victim.await.unwrap_err();
    assert!(
        matches!(
            err,
            TaskError::WorkerDied {
                signal: Some(9),
                ..
            }
        ),
        "{err:?}"
    );
    assert_ne!(
        bystander.await.unwrap(),
        pid,
        "the other task is undisturbed"
    );
    both_workers_serve(&pool, &[pid], "sigkill").await;
}

async fn codec_errors_fail_the_task_and_keep_the_worker() {
    let pool = ProcessPool::new(1).unwrap();
    let worker = pool.spawn(whoami, ()).await.unwrap();

    let mut task = pool.spawn(take_unencodable, Unencodable);
    let err = (&mut task).await.unwrap_err();
    assert!(
        matches!(&err, TaskError::Encode(m) if m.contains("refuses to encode")),
        "{err:?}"
    );
    assert_eq!(
        (task.status(), task.pid()),
        (TaskStatus::Failed, None),
        "never sent"
    );

    let err = pool.spawn(take_undecodable, Undecodable).await.unwrap_err();
    assert!(
        matches!(&err, TaskError::Decode(m) if m.contains("refuses to decode")),
        "{err:?}"
    );

    let err = pool.spawn(make_unencodable, ()).await.unwrap_err();
    assert!(
        matches!(&err, TaskError::Encode(m) if m.contains("refuses to encode")),
        "{err:?}"
    );

    let err = pool.spawn(make_undecodable, ()).await.unwrap_err();
    assert!(
        matches!(&err, TaskError::Decode(m) if m.contains("refuses to decode")),
        "{err:?}"
    );

    assert_eq!(
        pool.spawn(whoami, ()).await.unwrap(),
        worker,
        "the worker lives on"
    );
}

fn main() {
    let scenarios = scenarios![
        panic_fails_its_task_and_the_worker_serves_on,
        abort_fails_its_task_with_sigabrt_and_is_replaced,
        exit_code_is_reported,
        sigkill_from_outside_fails_only_that_task,
        codec_errors_fail_the_task_and_keep_the_worker,
    ];
    let runtimes = [Runtime::Smol, Runtime::TokioMultiThread];
    common::main_with(common::trials_under(&runtimes, &scenarios));
}
