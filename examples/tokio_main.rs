//! Run with: `cargo run --release --example tokio_main`
//!
//! A `#[tokio::main]` program that never calls `offload::init()` and refuses any argument it
//! does not know: its workers are recognised before `main` runs (the default `before-main`
//! feature), so they neither build a Tokio runtime nor meet the argument check.

/// The names of the threads of the process that runs it.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
                .map(|name| name.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::main]
async fn main() -> Result<(), offload::Error> {
    if let Some(arg) = std::env::args().nth(1) {
        eprintln!("unknown argument {arg:?}");
        std::process::exit(2);
    }
    let pool = offload::ProcessPool::new(2)?;
    let mut task = pool.spawn(thread_names, ());
    let worker_threads = (&mut task).await?;
    println!("this process's threads: {:?}", thread_names());
    println!("worker {:?}'s threads: {worker_threads:?}", task.pid());
    assert!(
        !worker_threads.iter().any(|name| name.starts_with("tokio-")),
        "a worker built a Tokio runtime"
    );
    Ok(())
}
