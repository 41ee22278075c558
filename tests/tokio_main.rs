//! A `#[tokio::main]` program that never calls `offload::init()`, and whose argument parser
//! refuses unknown flags (libtest-mimic's refuses `--worker`): its workers serve before `main`,
//! so they never build a Tokio runtime.

use libtest_mimic::{Arguments, Trial};
use offload::ProcessPool;

/// The names of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .map(|task| {
            let comm = task.unwrap().path().join("comm");
            std::fs::read_to_string(comm).unwrap().trim().to_string()
        })
        .collect()
}

#[tokio::main]
async fn main() {
    let pool = ProcessPool::new(1).unwrap();
    let parent = thread_names();
    assert!(
        parent.iter().any(|name| name.starts_with("tokio-")),
        "the parent runs Tokio: {parent:?}"
    );
    let worker = pool.spawn(thread_names, ()).await.unwrap();
    let trial = Trial::test("workers_of_a_tokio_main_run_no_tokio_threads", move || {
        let tokio: Vec<_> = worker.iter().filter(|n| n.starts_with("tokio-")).collect();
        assert!(tokio.is_empty(), "the worker has Tokio threads: {worker:?}");
        Ok(())
    });
    libtest_mimic::run(&Arguments::from_args(), vec![trial]).exit();
}
