//! Tasks return the right values, under every runtime and from plain synchronous code.

mod common;

use common::{trial, Runtime, RUNTIMES};
use libtest_mimic::Trial;
use offload::ProcessPool;

fn fib(n: u64) -> u64 {
    if n < 2 {
        n
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

fn add(a: i64, b: i64) -> i64 {
    a + b
}

fn six(a: u8, b: u16, c: u32, d: u64, e: i8, f: String) -> String {
    format!("{a}-{b}-{c}-{d}-{e}-{f}")
}

fn answer() -> u32 {
    42
}

fn checked_div(a: i32, b: i32) -> Result<i32, String> {
    a.checked_div(b).ok_or_else(|| format!("{a} / {b}"))
}

fn square(x: u64) -> u64 {
    x * x
}

/// Every argument shape and return shape, on one runtime.
async fn scenario(pool: ProcessPool) {
    assert_eq!(pool.spawn(fib, 20).await.unwrap(), 6765);
    assert_eq!(pool.spawn(add, (40, 2)).await.unwrap(), 42);
    assert_eq!(
        pool.spawn(six, (1, 2, 3, 4, -5, "six".to_string()))
            .await
            .unwrap(),
        "1-2-3-4--5-six"
    );
    assert_eq!(pool.spawn(answer, ()).await.unwrap(), 42);
    assert_eq!(pool.spawn(checked_div, (7, 2)).await.unwrap(), Ok(3));
    assert_eq!(
        pool.spawn(checked_div, (7, 0)).await.unwrap(),
        Err("7 / 0".to_string())
    );
    let closure = pool.spawn(|v: Vec<u32>| v.iter().sum::<u32>(), vec![1, 2, 3]);
    let name = closure.func_name();
    assert!(name.starts_with("scenario::{{closure}}"), "{name}");
    assert_eq!(closure.await.unwrap(), 6);

    // Several at once, awaited in reverse order of spawning.
    let tasks: Vec<_> = (0..8).map(|n| pool.spawn(fib, n)).collect();
    for (n, task) in tasks.into_iter().enumerate().rev() {
        assert_eq!(task.await.unwrap(), fib(n as u64));
    }
}

fn under(runtime: Runtime) -> Trial {
    Trial::test(format!("results_under_{}", runtime.name()), move || {
        let pool = ProcessPool::new(2).unwrap();
        runtime.block_on(scenario(pool));
        Ok(())
    })
}

fn wait_from_plain_code() {
    let pool = ProcessPool::new(2).unwrap();
    assert_eq!(pool.spawn(fib, 25).wait().unwrap(), 75025);
    let tasks: Vec<_> = (1..=4).map(|x| pool.spawn(square, x)).collect();
    let squares: Vec<u64> = tasks.into_iter().map(|t| t.wait().unwrap()).collect();
    assert_eq!(squares, [1, 4, 9, 16]);
}

fn wait_from_plain_threads() {
    let pool = ProcessPool::new(2).unwrap();
    let threads: Vec<_> = (0..4u64)
        .map(|i| {
            let pool = pool.clone();
            std::thread::spawn(move || pool.spawn(square, i).wait().unwrap())
        })
        .collect();
    let squares: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(squares, [0, 1, 4, 9]);
}

fn sync_twins_from_plain_code() {
    let pool = ProcessPool::new(2).unwrap();
    let mut task = pool.spawn(square, 9);
    let result = loop {
        if let Some(result) = task.try_take() {
            break result;
        }
        std::thread::yield_now();
    };
    assert_eq!(result.unwrap(), 81);
    assert!(task.try_take().is_none(), "the result was taken");
    assert!(task.is_finished(), "and stays finished");

    // A task that cannot have ended yet (it sleeps 300 ms) is not finished, then is.
    let mut slow = pool.spawn(common::sleep_ms, 300);
    assert!(!slow.is_finished() && slow.try_take().is_none());
    common::wait_until("it ends", || slow.is_finished());
    assert_eq!(slow.try_take().unwrap().unwrap(), slow.pid().unwrap());
    assert!(slow.is_finished() && slow.try_take().is_none());

    let spinning = pool.spawn(common::spin, ());
    common::wait_until("it spins", || spinning.status() == "running");
    let pid = spinning.pid().unwrap();
    assert!(spinning.cancel_and_wait_blocking());
    assert!(!common::is_our_child(pid), "reaped when it returns");

    let queued = pool.spawn(square, 4);
    pool.shutdown_blocking();
    assert_eq!(
        queued.wait().unwrap(),
        16,
        "drained before the workers stopped"
    );
    assert!(pool.spawn(square, 1).wait().unwrap_err().is_pool_closed());

    let other = ProcessPool::new(1).unwrap();
    let running = other.spawn(common::spin, ());
    common::wait_until("it spins", || running.status() == "running");
    other.shutdown_now_blocking();
    assert!(running.wait().unwrap_err().is_cancelled());
}

fn thousand_concurrent_tasks() {
    let pool = ProcessPool::new(2).unwrap();
    Runtime::Smol.block_on(async move {
        let tasks: Vec<_> = (0..1000u64).map(|i| pool.spawn(square, i)).collect();
        let mut results = Vec::with_capacity(tasks.len());
        for task in tasks {
            results.push(task.await.unwrap());
        }
        let expected: Vec<u64> = (0..1000u64).map(square).collect();
        assert_eq!(results, expected);
    });
}

fn workers_start_at_build_and_default_to_the_cpu_count() {
    let pool = ProcessPool::builder().build().unwrap();
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(pool.workers(), cpus);
    assert!(ProcessPool::new(0).is_err(), "zero workers is refused");
}

/// The command line the worker was started with.
fn worker_command_line() -> Vec<String> {
    std::env::args().collect()
}

fn workers_get_no_arguments_of_the_parent() {
    let pool = ProcessPool::new(1).unwrap();
    let args = pool.spawn(worker_command_line, ()).wait().unwrap();
    assert_eq!(args.len(), 2, "{args:?}");
    assert_eq!(args[1], "--worker");
    assert!(
        args[0].ends_with("self/exe") || args[0].contains("results"),
        "{args:?}"
    );
}

fn main() {
    let mut trials: Vec<Trial> = RUNTIMES.iter().map(|&rt| under(rt)).collect();
    trials.extend([
        trial("wait_from_plain_code", wait_from_plain_code),
        trial(
            "workers_get_no_arguments_of_the_parent",
            workers_get_no_arguments_of_the_parent,
        ),
        trial("wait_from_plain_threads", wait_from_plain_threads),
        trial("sync_twins_from_plain_code", sync_twins_from_plain_code),
        trial("thousand_concurrent_tasks", thousand_concurrent_tasks),
        trial(
            "workers_start_at_build_and_default_to_the_cpu_count",
            workers_start_at_build_and_default_to_the_cpu_count,
        ),
    ]);
    common::main_with(trials);
}
