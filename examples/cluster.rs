//! Run with: `cargo run --release --example cluster -- [local | ssh HOST [SSH OPTIONS..] | ssh-hosts HOST,HOST.. [SSH OPTIONS..] | srun [SRUN OPTIONS..] | command PROGRAM [ARGS..]]`
//!
//! The quickstart's work (naive Fibonacci numbers, several at once) on a pool whose launcher
//! comes from the command line, or from `OFFLOAD_LAUNCHER` (the same words, split at
//! spaces): workers on this machine, on a host over ssh, as Slurm job steps, or through any
//! command that forwards stdin and stdout. Prints where each task ran: its pid on its host.
//!
//! ```text
//! cargo run --release --example cluster -- ssh node1
//! cargo run --release --example cluster -- ssh-hosts node1,node2
//! cargo run --release --example cluster -- srun --partition=cpu
//! ```

use std::time::Instant;

use offload::{Launcher, ProcessPool};

fn fib(n: u64) -> u64 {
    if n < 2 {
        n
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

/// The launcher named by `words`: `local`, `ssh HOST [OPTIONS..]`, `ssh-hosts HOST,HOST..
/// [OPTIONS..]` (workers spread over the hosts in turn), `srun [OPTIONS..]` or `command
/// PROGRAM [ARGS..]`.
fn launcher(words: &[String]) -> Result<Launcher, String> {
    let usage = "expected: local | ssh HOST [OPTIONS..] | ssh-hosts HOST,HOST.. [OPTIONS..] \
                 | srun [OPTIONS..] | command PROGRAM [ARGS..]";
    match words.split_first() {
        None => Ok(Launcher::local()),
        Some((kind, rest)) => match (kind.as_str(), rest) {
            ("local", []) => Ok(Launcher::local()),
            // ssh options come before the host on ssh's command line.
            ("ssh", [host, options @ ..]) => Ok(Launcher::ssh(host.clone()).args(options)),
            ("ssh-hosts", [hosts, options @ ..]) => {
                Ok(Launcher::ssh_hosts(hosts.split(',').map(str::to_owned)).args(options))
            }
            ("srun", options) => Ok(Launcher::srun().args(options)),
            ("command", [program, args @ ..]) => Ok(Launcher::command(program).args(args)),
            _ => Err(usage.to_string()),
        },
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    offload::init(); // in a worker process, wherever it runs, this serves and never returns

    let mut words: Vec<String> = std::env::args().skip(1).collect();
    if words.is_empty() {
        if let Ok(from_env) = std::env::var("OFFLOAD_LAUNCHER") {
            words = from_env.split_whitespace().map(str::to_owned).collect();
        }
    }
    let launcher = launcher(&words)?;
    println!("launcher: {launcher:?}");

    let started = Instant::now();
    let pool = ProcessPool::builder()
        .workers(2)
        .launcher(launcher)
        .build()?;
    pool.ready_blocking()?; // both workers started (over ssh: a connection each)
    println!("pool of 2 started in {:.1?}", started.elapsed());

    let mut tasks: Vec<_> = (30..36).map(|n| (n, pool.spawn(fib, n))).collect();
    for (n, task) in &mut tasks {
        let value = futures_lite::future::block_on(&mut *task)?;
        let host = task.host().unwrap_or_else(|| "this machine".to_string());
        println!(
            "fib({n}) = {value} on {host}, pid {:?}: {task:?}",
            task.pid()
        );
    }
    println!("{:?}", pool.stats());
    pool.shutdown_blocking();
    Ok(())
}
