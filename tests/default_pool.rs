//! The process-wide default pool and `to_process`.

mod common;

use common::{trial, Runtime};

fn fib(n: u64) -> u64 {
    if n < 2 {
        n
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

fn whoami() -> u32 {
    std::process::id()
}

fn to_process_runs_on_a_lazily_created_default_pool() {
    Runtime::Smol.block_on(async {
        let mut task = offload::to_process(fib, 20);
        assert_eq!((&mut task).await.unwrap(), 6765);
        assert_ne!(task.pid(), Some(std::process::id()));
        let pool = offload::default_pool().unwrap();
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(pool.workers(), cpus);

        // A pool set as the default serves `to_process` from then on.
        let mine = offload::ProcessPool::new(1).unwrap();
        let mine_pid = mine.spawn(whoami, ()).await.unwrap();
        let previous = offload::set_default_pool(mine).expect("the lazy pool");
        assert_eq!(previous.workers(), cpus);
        assert_eq!(offload::to_process(whoami, ()).await.unwrap(), mine_pid);
        assert_eq!(offload::default_pool().unwrap().workers(), 1);

        // Cleared, the default is created afresh on next use; the old one is handed back.
        let cleared = offload::set_default_pool(None).expect("the pool set above");
        assert_eq!(cleared.workers(), 1);
        assert!(offload::set_default_pool(None).is_none(), "nothing is left");
        cleared.shutdown().await;
        let fresh = offload::default_pool().unwrap();
        assert_eq!(fresh.workers(), cpus);
        assert!(!fresh.is_closed());
        assert_ne!(offload::to_process(whoami, ()).await.unwrap(), mine_pid);
    });
}

fn main() {
    common::main_with(vec![trial(
        "to_process_runs_on_a_lazily_created_default_pool",
        to_process_runs_on_a_lazily_created_default_pool,
    )]);
}
