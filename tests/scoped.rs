//! Scoped pools (`with_pool`) and functions turned into process calls (`process_fn`).

mod common;

use common::{is_our_child, Runtime};
use offload::ProcessPool;

fn whoami() -> u32 {
    std::process::id()
}

fn fib(n: u64) -> u64 {
    if n < 2 {
        n
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

async fn with_pool_is_the_default_inside_and_shut_down_after() {
    // Scopes nest: the outer scope's pool stands for "the previous default" here, which keeps
    // the test away from the process-wide default that other tests use at the same time.
    let outer = ProcessPool::new(1).unwrap();
    let outer_handle = outer.clone();
    offload::with_pool(outer, async {
        let outer_pid = offload::to_process(whoami, ()).await.unwrap();

        let scoped = ProcessPool::new(1).unwrap();
        let handle = scoped.clone();
        let inner_pid = offload::with_pool(scoped, async {
            let pid = offload::to_process(whoami, ()).await.unwrap();
            // Still the scope's pool after the future was suspended and resumed.
            async_io::Timer::after(std::time::Duration::from_millis(5)).await;
            assert_eq!(offload::process_fn(whoami).call(()).await.unwrap(), pid);
            pid
        })
        .await;
        assert_ne!(inner_pid, outer_pid, "the scoped pool ran the work");
        assert!(handle.is_closed(), "the scoped pool is shut down");
        assert!(!is_our_child(inner_pid), "and its worker reaped");
        assert_eq!(
            offload::to_process(whoami, ()).await.unwrap(),
            outer_pid,
            "the previous default is back"
        );
    })
    .await;
    assert!(outer_handle.is_closed());
}

async fn process_fn_calls_on_the_default_or_a_given_pool() {
    let fib_in_process = offload::process_fn(fib);
    assert_eq!(fib_in_process.call(20).await.unwrap(), 6765);

    let pool = ProcessPool::new(1).unwrap();
    let pool_pid = pool.spawn(whoami, ()).await.unwrap();
    let bound = offload::process_fn(whoami).on(&pool);
    assert_eq!(bound.call(()).await.unwrap(), pool_pid);
    let task = fib_in_process.on(&pool).call(10);
    assert_eq!(task.func_name(), "fib");
    assert_eq!(task.await.unwrap(), 55);
}

fn main() {
    let scenarios = scenarios![
        with_pool_is_the_default_inside_and_shut_down_after,
        process_fn_calls_on_the_default_or_a_given_pool,
    ];
    common::main_with(common::trials_under(
        &[Runtime::Smol, Runtime::TokioMultiThread],
        &scenarios,
    ));
}
