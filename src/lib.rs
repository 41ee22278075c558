//! Run CPU-bound, crash-prone or must-be-killable functions in a pool of worker processes,
//! from any async runtime or from plain synchronous code.
//!
//! [`ProcessPool::spawn`] hands a function and its arguments to a worker process and returns a
//! [`ProcessTask`]: a future of the result that also knows which process runs the work, its
//! status and its timing. A panic in the task, or the death of its worker, fails that task
//! alone; the pool replaces the worker and keeps its size.
//!
//! ```no_run
//! fn fib(n: u64) -> u64 { if n < 2 { n } else { fib(n - 1) + fib(n - 2) } }
//!
//! fn main() -> Result<(), offload::Error> {
//!     offload::init(); // must come first: in a worker process, this serves and exits
//!
//!     futures_lite::future::block_on(async {
//!         let pool = offload::ProcessPool::new(2)?;
//!         let mut task = pool.spawn(fib, 30);
//!         println!("running in process {:?}", task.pid());
//!         let value = (&mut task).await?;
//!         println!("{value} {task:?}"); // <ProcessTask func='fib' status='done' pid=.. duration=..s>
//!         Ok(())
//!     })
//! }
//! ```
//!
//! # What is here
//!
//! - [`ProcessPool`] ([`PoolBuilder`]): `spawn`, `spawn_async`, per-task options with
//!   [`task`](ProcessPool::task) ([`TaskBuilder`]: timeout, cancel timeout, callbacks, for
//!   `spawn`, `spawn_async` and `map`), `map`,
//!   `map_unordered`, `map_blocking`, `shutdown`, `shutdown_now` (and their `_blocking`
//!   twins), `stats`, `tasks`.
//! - [`ProcessTask`]: the future and its metadata ([`TaskStatus`], [`TaskInfo`]), `cancel`,
//!   `cancel_and_wait`, `detach`, `is_finished`, what it was started with (`timeout`,
//!   `cancel_timeout`, `args`), and for synchronous code `wait`, `try_take`,
//!   `cancel_and_wait_blocking`. Dropping a task cancels it.
//! - [`to_process`], [`default_pool`], [`set_default_pool`], [`with_pool`] (a scoped default)
//!   and [`process_fn`]: the process-wide default pool, like Python's `asyncio.to_process`.
//! - [`Executor`]: what a library accepts so its caller picks between a [`ProcessPool`] and
//!   [`Isolated`], a fresh process per call.
//! - [`TaskScope`]: a group of tasks that all end with it.
//! - [`TaskError`] for one task, [`Error`] for the pool.
//!
//! # Task functions
//!
//! A task function is a function item or a closure that captures nothing, whose arguments and
//! result implement `serde`'s `Serialize` and `DeserializeOwned` (see [`TaskFn`]). Nothing is
//! registered: the worker is this same executable, started again with `--worker`, and the
//! parent sends the position of the function's code, which the worker trusts only after a
//! handshake proved it runs the very same file.
//!
//! # Implementation
//!
//! - Each pool starts one thread, named `offload-driver`, which blocks on a poller of its own
//!   over all of the pool's pipes, queue and worker supervision. A [`ProcessTask`] is only
//!   shared state and a waker, so it works under smol, async-std, Tokio or none.
//! - Between the parent and a local worker, frames of 64 KiB or more (large arguments and
//!   results) go through shared memory, a memfd each way that the parent creates and the
//!   worker opens through `/proc`; the pipe carries only a marker. Remote workers, and a
//!   worker that cannot open them, use the pipe for everything.
//! - Workers are started as `/proc/self/exe --worker` (the current executable elsewhere), in a
//!   process group of their own, with the parent's environment and stderr. They exit when their
//!   stdin closes, and on Linux they are killed when the parent dies (`PR_SET_PDEATHSIG`).
//! - Every worker's stderr is piped through the parent (and copied to its stderr, on a thread
//!   of its own): to keep the last words of a worker that dies ([`TaskError::WorkerDied`]), and
//!   to tell an allocation failure under [`PoolBuilder::memory_limit`] from other aborts.
//! - Pipelined dispatch: while a quick task runs and no worker is idle, a worker is sent more
//!   small jobs ahead, so that it goes from one to the next without waiting for the parent. A
//!   job sent ahead stays queued ([`PoolStats::sent_ahead`] counts them) until its worker says
//!   it starts it; it is withdrawn if it is cancelled, or if the task in front of it runs
//!   long while another worker is free, and given to another worker if that one dies first.
//!   docs/architecture.md has the protocol and the argument.
//! - [`Isolated`] starts its driver thread on its first call.
//! - async-process starts its own reaper thread, named `async-process`, on first use.
//! - The driver never runs user code unguarded: results are decoded, and callbacks run, under
//!   `catch_unwind`, so a panicking `Deserialize` or callback fails (or is logged for) one task.
//!   A task's result is handed out once its `on_done` / `on_error` callback has returned.
//! - The source is cut into layers that import only the layers above them: `error`, `sys`
//!   (OS primitives), `protocol` (what crosses the pipes), `func` (task functions and their
//!   trampolines), `child` (the worker process), `launch` (how a worker starts and is
//!   killed), `supervise` (one worker seen from the parent), `task`, `pool`, and what is built
//!   on the pool (`map`, `executor`, `default`, `scope`); docs/architecture.md has the table.
//!
//! # Features
//!
//! - `before-main` (default): a worker is recognised before `main` runs, by a constructor
//!   keyed on the `OFFLOAD_WORKER` environment marker, so that no program needs [`init`]:
//!   `#[tokio::main]`, argument parsers and plain `#[test]` files work as they are. Without
//!   it, [`init`] first in `main` does the same (a process started as a worker that reaches
//!   `main` without it refuses to build pools, with [`Error::NotInitialized`]).
//! - `tracing`: a `tracing` span per task (`offload_task`, with `id`, `func`, and `pid` and
//!   `host` once it starts) and events for spawn, start, finish, worker stops and worker
//!   replacements.
//!
//! Nothing public depends on a feature: the API is the same with and without either.
//!
//! # The guide
//!
//! `docs/guide/` in the repository: coming from Python (`asyncio.to_process`,
//! `ProcessPoolExecutor`, pebble, loky), coming from procspawn or `spawn_blocking`, a cookbook
//! of programs CI runs, and how to operate a pool (sizing, what to watch, what each
//! [`TaskError`] means, cancel and shutdown).
//!
//! # Caveats
//!
//! - Without `before-main`, [`init`] must be the first call in `main`: everything before it
//!   also runs in every worker.
//! - offload must be linked into the executable (as Rust does by default), not built as a
//!   `dylib`: a worker finds a function by its offset in the executable's code.
//! - `--worker`, as the only argument, is reserved for offload.
//! - Unix only for now; shared memory for large frames on Linux (elsewhere they take the pipe).
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![warn(clippy::undocumented_unsafe_blocks)]

#[cfg(not(unix))]
compile_error!("offload supports Unix platforms only for now");

// Layers, each importing only the ones above it (docs/architecture.md).
mod child;
mod default;
mod error;
mod executor;
mod func;
mod inside;
mod launch;
mod map;
mod pool;
mod protocol;
mod scope;
mod supervise;
mod sys;
mod task;
mod trace;

#[cfg(doctest)]
mod guide;

pub use crate::default::{
    default_pool, process_fn, set_default_pool, to_process, with_pool, ProcessFn,
};
pub use crate::error::{Error, TaskError};
pub use crate::executor::{Executor, Isolated, MAX_PROCS_ENV, MAX_PROCS_LIMIT};
pub use crate::func::{AsyncStreamFn, AsyncTaskFn, InitFn, InitOutput, StreamFn, TaskFn};
pub use crate::launch::Launcher;
pub use crate::map::{Map, MapUnordered};
pub use crate::pool::{
    PoolBuilder, PoolStats, ProcessPool, TaskBuilder, DEFAULT_IDLE_TIMEOUT, DEFAULT_INIT_TIMEOUT,
};
pub use crate::protocol::MAX_FRAME_LEN;
pub use crate::scope::TaskScope;
pub use crate::task::{ProcessStream, ProcessTask, Progress, TaskInfo, TaskOutput, TaskStatus};

/// Turns this process into a worker if it was started as one; otherwise returns at once.
///
/// With the default `before-main` feature a worker is recognised before `main` runs (by the
/// `OFFLOAD_WORKER` marker every launcher sets), so this call is not needed and does nothing
/// there; it stays valid, and it is what makes a worker serve when the feature is off or a
/// launcher dropped the marker. Call it first in `main`: in a process started by a pool (as
/// `program --worker`) it serves tasks until the pool lets it go, then exits the process; it
/// never returns there. Anywhere else it costs one look at the command line.
///
/// # Examples
///
/// ```no_run
/// fn main() {
///     offload::init();
///     // the application, which may now build pools
/// }
/// ```
// The example is about where the call goes in `main`.
#[allow(clippy::needless_doctest_main)]
pub fn init() {
    child::init();
}

/// Reports, from inside a task, that it has done `done` of `total` (in any unit: items, rows,
/// bytes).
///
/// The parent sees the latest report as [`ProcessTask::progress`] and
/// [`TaskInfo::progress`], and runs the task's
/// [`on_progress`](TaskBuilder::on_progress) callback with it. It is cheap enough to call for
/// every item: reports are coalesced in the worker (the latest wins, and at most one leaves
/// every 5 ms), and the last report of a task always reaches the parent before its result.
/// Outside a worker process it does nothing. Inside the items of a
/// [`map`](ProcessPool::map) whose builder has an
/// [`on_progress`](TaskBuilder::on_progress) callback, it is ignored: the map's progress is
/// its items done.
///
/// # Examples
///
/// ```no_run
/// # offload::init();
/// fn checksum(rows: u64) -> u64 {
///     let mut sum = 0u64;
///     for row in 0..rows {
///         sum = sum.wrapping_mul(31).wrapping_add(row);
///         offload::progress(row + 1, rows);
///     }
///     sum
/// }
///
/// # futures_lite::future::block_on(async {
/// let pool = offload::ProcessPool::new(1)?;
/// let mut task = pool.spawn(checksum, 1_000);
/// (&mut task).await?;
/// let progress = task.progress().unwrap();
/// assert_eq!((progress.done, progress.total), (1_000, 1_000));
/// # Ok::<(), offload::Error>(()) }).unwrap();
/// ```
pub fn progress(done: u64, total: u64) {
    inside::progress::report(done, total);
}

/// The README's example, compiled as a doctest so that it stays true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
