//! `spawn_async`: async functions run inside the worker on `async_io::block_on`, so timers and
//! sockets work there, on a pool and on `Isolated`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Runtime;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use offload::{Executor, Isolated, ProcessPool, TaskInfo};

async fn sleep_then_add(a: u64, b: u64, ms: u64) -> (u64, u32) {
    let started = Instant::now();
    async_io::Timer::after(Duration::from_millis(ms)).await;
    assert!(started.elapsed() >= Duration::from_millis(ms));
    (a + b, std::process::id())
}

/// Echoes one message over a loopback TCP connection, entirely inside the worker.
async fn loopback_echo(message: String) -> String {
    let listener = async_net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = vec![0; 1024];
        let n = stream.read(&mut buf).await.unwrap();
        stream.write_all(&buf[..n]).await.unwrap();
    };
    let client = async move {
        let mut stream = async_net::TcpStream::connect(address).await.unwrap();
        stream.write_all(message.as_bytes()).await.unwrap();
        let mut back = String::new();
        stream.read_to_string(&mut back).await.unwrap();
        back
    };
    futures_lite::future::zip(server, client).await.1
}

async fn async_panic() -> u32 {
    async_io::Timer::after(Duration::from_millis(1)).await;
    panic!("async boom")
}

async fn async_functions_run_in_the_worker() {
    let pool = ProcessPool::new(1).unwrap();
    let mut task = pool.spawn_async(sleep_then_add, (40, 2, 50));
    let (sum, pid) = (&mut task).await.unwrap();
    assert_eq!(sum, 42);
    assert_eq!(task.pid(), Some(pid));
    assert_ne!(pid, std::process::id());
    assert_eq!(task.func_name(), "sleep_then_add");
    assert!(task.duration().unwrap() >= Duration::from_millis(50));

    let echoed = pool
        .spawn_async(loopback_echo, "hello over loopback".to_string())
        .await
        .unwrap();
    assert_eq!(echoed, "hello over loopback");

    let err = pool.spawn_async(async_panic, ()).await.unwrap_err();
    assert!(
        matches!(err, offload::TaskError::Panicked { ref message, .. } if message == "async boom")
    );
    assert_eq!(
        pool.spawn_async(sleep_then_add, (1, 1, 0)).await.unwrap().1,
        pid
    );
}

async fn async_functions_run_on_isolated_processes() {
    let isolated = Isolated::with_max_procs(2);
    let (a, b) = futures_lite::future::zip(
        isolated.spawn_async(sleep_then_add, (1, 2, 20)),
        isolated.spawn_async(sleep_then_add, (3, 4, 20)),
    )
    .await;
    let ((three, pid_a), (seven, pid_b)) = (a.unwrap(), b.unwrap());
    assert_eq!((three, seven), (3, 7));
    assert_ne!(pid_a, pid_b);
}

/// `spawn_async` takes the per-task options of `TaskBuilder`: a timeout stops the worker
/// (the task fails with `TimedOut`), callbacks run, and the metadata shows the options.
async fn async_functions_take_per_task_options() {
    let pool = ProcessPool::new(1).unwrap();
    let started = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let (on_start, on_error) = (started.clone(), errors.clone());
    let mut task = pool
        .task(sleep_then_add)
        .timeout(Duration::from_millis(50))
        .cancel_timeout(Duration::ZERO)
        .on_start(move |_: &TaskInfo| {
            on_start.fetch_add(1, Ordering::SeqCst);
        })
        .on_error(move |_: &TaskInfo| {
            on_error.fetch_add(1, Ordering::SeqCst);
        })
        .spawn_async((1, 2, 60_000));
    assert_eq!(task.timeout(), Some(Duration::from_millis(50)));
    assert_eq!(task.args().as_deref(), Some("[1, 2, 60000]"));
    let err = (&mut task).await.unwrap_err();
    assert!(err.is_timed_out(), "{err}");
    assert_eq!(
        (
            started.load(Ordering::SeqCst),
            errors.load(Ordering::SeqCst)
        ),
        (1, 1)
    );
    let pid = task.pid().unwrap();
    common::eventually("the timed-out worker is gone", || {
        !common::is_our_child(pid)
    })
    .await;
    let (sum, _) = pool
        .task(sleep_then_add)
        .spawn_async((2, 3, 0))
        .await
        .unwrap();
    assert_eq!(sum, 5, "a replacement serves");
}

fn main() {
    let scenarios = scenarios![
        async_functions_run_in_the_worker,
        async_functions_run_on_isolated_processes,
        async_functions_take_per_task_options,
    ];
    common::main_with(common::trials_under(
        &[Runtime::Smol, Runtime::TokioMultiThread],
        &scenarios,
    ));
}
