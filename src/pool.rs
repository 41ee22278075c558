//! The pool handle, [`ProcessPool`], and its [`PoolBuilder`].

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_channel::Sender;
use serde::Serialize;

use crate::driver::{self, Job, PoolState};
use crate::entry::{entry_of, entry_of_async, func_name, AsyncTaskFn, TaskFn};
use crate::error::{Error, TaskError};
use crate::map::{Map, MapUnordered};
use crate::state::{decode_value, report_end, Completion, Decoder, Shared, TaskOptions};
use crate::task::{notify_end, ProcessTask, TaskBuilder, TaskInfo, TaskStatus};
use crate::wire::{self, ToWorker};

/// A pool of worker processes that run functions for async (or synchronous) code.
///
/// `ProcessPool` is a cheap handle: clone it freely and share it between threads. The pool
/// lives while any handle does; when the last one is dropped, queued and running tasks still
/// finish, then the workers exit and are reaped in the background (dropping never blocks).
/// [`shutdown`](ProcessPool::shutdown) and [`shutdown_now`](ProcessPool::shutdown_now) stop
/// it explicitly and wait until every worker is reaped.
///
/// Each pool has one thread, named `offload-driver`, that owns its worker processes and their
/// pipes. A task starts as soon as it is spawned, whether or not its [`ProcessTask`] is polled.
///
/// # Examples
///
/// ```no_run
/// fn fib(n: u64) -> u64 { if n < 2 { n } else { fib(n - 1) + fib(n - 2) } }
/// fn add(a: i64, b: i64) -> i64 { a + b }
///
/// fn main() -> Result<(), offload::Error> {
///     offload::init(); // first: a worker process serves here and never returns
///     futures_lite::future::block_on(async {
///         let pool = offload::ProcessPool::builder().workers(4).build()?;
///         let fib30 = pool.spawn(fib, 30);          // one argument: as is
///         let sum = pool.spawn(add, (1, 2)).await?; // several: a tuple
///         assert_eq!((fib30.await?, sum), (832040, 3));
///         Ok(())
///     })
/// }
/// ```
#[derive(Clone)]
pub struct ProcessPool {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: Sender<Job>,
    state: Arc<PoolState>,
    workers: usize,
}

/// Task ids, unique across all pools of the process.
static NEXT_TASK_ID: AtomicU64 = AtomicU64::new(1);

fn next_task_id() -> u64 {
    NEXT_TASK_ID.fetch_add(1, Ordering::Relaxed)
}

impl ProcessPool {
    /// A builder for a pool with non-default options.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # offload::init();
    /// let pool = offload::ProcessPool::builder().workers(2).build()?;
    /// # Ok::<(), offload::Error>(())
    /// ```
    pub fn builder() -> PoolBuilder {
        PoolBuilder::new()
    }

    /// A pool of `workers` worker processes.
    ///
    /// # Errors
    ///
    /// As [`PoolBuilder::build`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # offload::init();
    /// let pool = offload::ProcessPool::new(4)?;
    /// assert_eq!(pool.workers(), 4);
    /// # Ok::<(), offload::Error>(())
    /// ```
    pub fn new(workers: usize) -> Result<ProcessPool, Error> {
        PoolBuilder::new().workers(workers).build()
    }

    /// The number of worker processes the pool keeps.
    pub fn workers(&self) -> usize {
        self.inner.workers
    }

    /// Runs `f(args)` in a worker process.
    ///
    /// `args` is the argument itself for a function of one parameter, a tuple for several and
    /// `()` for none (see [`TaskFn`]). The task is queued at once and sent to the first idle
    /// worker; the returned [`ProcessTask`] resolves to the function's return value.
    ///
    /// Arguments are encoded here, on the caller's thread; if that fails, the task is returned
    /// already failed with [`TaskError::Encode`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # offload::init();
    /// fn parse(text: String) -> Result<u32, String> { text.parse().map_err(|_| text) }
    ///
    /// # futures_lite::future::block_on(async {
    /// let pool = offload::ProcessPool::new(1)?;
    /// let parsed: Result<u32, String> = pool.spawn(parse, "12".to_string()).await?;
    /// assert_eq!(parsed, Ok(12));
    /// # Ok::<(), offload::Error>(()) }).unwrap();
    /// ```
    pub fn spawn<F, M>(&self, f: F, args: F::Args) -> ProcessTask<F::Output>
    where
        F: TaskFn<M>,
    {
        let _ = f; // a task function carries no data; its type says everything
        submit(
            Ok(self),
            call_of::<F, M>(TaskOptions::default()),
            encode_args(&args),
        )
    }

    /// Runs the async function `f(args)` in a worker process, on `async_io::block_on` there.
    ///
    /// Everything else is as for [`spawn`](ProcessPool::spawn); see [`AsyncTaskFn`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # offload::init();
    /// async fn sum_after(a: u64, b: u64, ms: u64) -> u64 {
    ///     async_io::Timer::after(std::time::Duration::from_millis(ms)).await;
    ///     a + b
    /// }
    ///
    /// # futures_lite::future::block_on(async {
    /// let pool = offload::ProcessPool::new(1)?;
    /// assert_eq!(pool.spawn_async(sum_after, (40, 2, 10)).await?, 42);
    /// # Ok::<(), offload::Error>(()) }).unwrap();
    /// ```
    pub fn spawn_async<F, M>(&self, f: F, args: F::Args) -> ProcessTask<F::Output>
    where
        F: AsyncTaskFn<M>,
    {
        let _ = f;
        submit(
            Ok(self),
            async_call_of::<F, M>(TaskOptions::default()),
            encode_args(&args),
        )
    }

    /// Runs `f` on every item, in worker processes; resolves to one result per item, in input
    /// order.
    ///
    /// A failing item (panic, codec error, the death of its worker) fails alone: every other
    /// item still gets its result. Items are sent in chunks whose size adapts to how long an
    /// item takes, so tiny items are not dominated by the cost of a message each; chunking is
    /// invisible in the results. At most two chunks per worker are in flight, so a long input
    /// is read as the work progresses. Dropping the future cancels what is left.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # offload::init();
    /// fn fib(n: u64) -> u64 { if n < 2 { n } else { fib(n - 1) + fib(n - 2) } }
    ///
    /// # futures_lite::future::block_on(async {
    /// let pool = offload::ProcessPool::new(2)?;
    /// let results = pool.map(fib, 0..30).await;
    /// assert_eq!(results[10].as_ref().ok(), Some(&55));
    /// # Ok::<(), offload::Error>(()) }).unwrap();
    /// ```
    pub fn map<F, M, I>(&self, f: F, items: I) -> Map<I::IntoIter, F::Output>
    where
        F: TaskFn<M>,
        I: IntoIterator<Item = F::Args>,
    {
        Map::new(self.map_unordered(f, items))
    }

    /// Like [`map`](ProcessPool::map), as a [`Stream`](futures_lite::Stream) of
    /// `(index, result)` pairs in the order the items finish.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # offload::init();
    /// use futures_lite::StreamExt;
    ///
    /// fn square(x: u64) -> u64 { x * x }
    ///
    /// # futures_lite::future::block_on(async {
    /// let pool = offload::ProcessPool::new(2)?;
    /// let mut results = pool.map_unordered(square, 0..100);
    /// while let Some((index, result)) = results.next().await {
    ///     assert_eq!(result?, (index * index) as u64);
    /// }
    /// # Ok::<(), offload::Error>(()) }).unwrap();
    /// ```
    pub fn map_unordered<F, M, I>(&self, f: F, items: I) -> MapUnordered<I::IntoIter, F::Output>
    where
        F: TaskFn<M>,
        I: IntoIterator<Item = F::Args>,
    {
        let _ = f;
        MapUnordered::new::<F, M>(self, items.into_iter())
    }

    /// [`map`](ProcessPool::map) for synchronous code: blocks the current thread until every
    /// item has its result. Needs no runtime and does not deadlock.
    ///
    /// # Panics
    ///
    /// When called from a task callback, which runs on the pool's own thread and would wait
    /// for itself.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # offload::init();
    /// fn square(x: u64) -> u64 { x * x }
    ///
    /// let pool = offload::ProcessPool::new(2)?;
    /// let squares: Result<Vec<u64>, _> = pool.map_blocking(square, 1..=3).into_iter().collect();
    /// assert_eq!(squares?, [1, 4, 9]);
    /// # Ok::<(), offload::Error>(())
    /// ```
    pub fn map_blocking<F, M, I>(&self, f: F, items: I) -> Vec<Result<F::Output, TaskError>>
    where
        F: TaskFn<M>,
        I: IntoIterator<Item = F::Args>,
        I::IntoIter: Unpin,
    {
        crate::driver::block_on("ProcessPool::map_blocking", self.map(f, items))
    }

    /// A [`TaskBuilder`] for `f`: set per-task options (timeout, cancel timeout, callbacks),
    /// then spawn.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # offload::init();
    /// use std::time::Duration;
    ///
    /// fn spin() -> u64 { loop { std::hint::spin_loop() } }
    ///
    /// # futures_lite::future::block_on(async {
    /// let pool = offload::ProcessPool::new(1)?;
    /// let err = pool.task(spin).timeout(Duration::from_millis(100)).spawn(()).await.unwrap_err();
    /// assert!(err.is_timed_out());
    /// # Ok::<(), offload::Error>(()) }).unwrap();
    /// ```
    pub fn task<F, M>(&self, f: F) -> TaskBuilder<F, M>
    where
        F: TaskFn<M>,
    {
        let _ = f;
        TaskBuilder::new(Ok(self.clone()))
    }

    /// Stops taking tasks, lets the queued and running ones finish, then stops the workers;
    /// returns once every worker has exited and was reaped.
    ///
    /// Tasks spawned afterwards, through any handle of this pool, fail with
    /// [`TaskError::PoolClosed`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # offload::init();
    /// fn fib(n: u64) -> u64 { if n < 2 { n } else { fib(n - 1) + fib(n - 2) } }
    ///
    /// # futures_lite::future::block_on(async {
    /// let pool = offload::ProcessPool::new(2)?;
    /// let task = pool.spawn(fib, 30);
    /// pool.shutdown().await;
    /// assert_eq!(task.await?, 832040); // finished before the workers stopped
    /// assert!(pool.spawn(fib, 1).await.unwrap_err().is_pool_closed());
    /// # Ok::<(), offload::Error>(()) }).unwrap();
    /// ```
    pub async fn shutdown(&self) {
        self.inner.jobs.close();
        self.inner.state.stopped().await;
    }

    /// Stops taking tasks, cancels every queued and running task (their workers are stopped
    /// as by [`ProcessTask::cancel`]), and returns once every worker has exited and was reaped.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # offload::init();
    /// fn spin() -> u64 { loop { std::hint::spin_loop() } }
    ///
    /// # futures_lite::future::block_on(async {
    /// let pool = offload::ProcessPool::new(2)?;
    /// let task = pool.spawn(spin, ());
    /// pool.shutdown_now().await;
    /// assert!(task.await.unwrap_err().is_cancelled());
    /// # Ok::<(), offload::Error>(()) }).unwrap();
    /// ```
    pub async fn shutdown_now(&self) {
        self.inner.jobs.close();
        for task in self.inner.state.live() {
            if task.cancel() {
                notify_end(&task, self.inner.state.notices());
            }
        }
        self.inner.state.stopped().await;
    }

    /// [`shutdown`](ProcessPool::shutdown) for synchronous code: blocks the current thread
    /// until every worker is reaped.
    ///
    /// # Panics
    ///
    /// When called from a task callback, which runs on a pool's own thread.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # offload::init();
    /// fn square(x: u64) -> u64 { x * x }
    ///
    /// let pool = offload::ProcessPool::new(2)?;
    /// let task = pool.spawn(square, 3);
    /// pool.shutdown_blocking();
    /// assert_eq!(task.wait()?, 9);
    /// # Ok::<(), offload::Error>(())
    /// ```
    pub fn shutdown_blocking(&self) {
        crate::driver::block_on("ProcessPool::shutdown_blocking", self.shutdown());
    }

    /// [`shutdown_now`](ProcessPool::shutdown_now) for synchronous code: blocks the current
    /// thread until every worker is reaped.
    ///
    /// # Panics
    ///
    /// When called from a task callback, which runs on a pool's own thread.
    pub fn shutdown_now_blocking(&self) {
        crate::driver::block_on("ProcessPool::shutdown_now_blocking", self.shutdown_now());
    }

    /// Whether the pool has stopped taking tasks.
    pub fn is_closed(&self) -> bool {
        self.inner.jobs.is_closed()
    }

    /// What the pool is doing right now, and has done.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # offload::init();
    /// fn square(x: u64) -> u64 { x * x }
    ///
    /// let pool = offload::ProcessPool::new(2)?;
    /// pool.spawn(square, 3).wait()?;
    /// let stats = pool.stats();
    /// assert_eq!(stats.completed, 1);
    /// println!("{stats:?}");
    /// # Ok::<(), offload::Error>(())
    /// ```
    pub fn stats(&self) -> PoolStats {
        let state = &self.inner.state;
        let counters = &state.counters;
        let workers = counters.workers.load(Ordering::Relaxed);
        let busy = counters.busy.load(Ordering::Relaxed).min(workers);
        PoolStats {
            workers,
            busy,
            idle: workers - busy,
            queued: state
                .live()
                .iter()
                .filter(|task| task.status() == TaskStatus::Pending)
                .count(),
            completed: state.tally.completed.load(Ordering::Relaxed),
            failed: state.tally.failed.load(Ordering::Relaxed),
            cancelled: state.tally.cancelled.load(Ordering::Relaxed),
            replaced: counters.replaced.load(Ordering::Relaxed),
        }
    }

    /// A snapshot of every task of this pool that is queued or running (or has just ended
    /// and is being reported), in spawning order.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # offload::init();
    /// fn spin() -> u64 { loop { std::hint::spin_loop() } }
    ///
    /// let pool = offload::ProcessPool::new(1)?;
    /// let task = pool.spawn(spin, ());
    /// for info in pool.tasks() {
    ///     println!("{info:?}"); // <TaskInfo func='spin' status='running' pid=.. duration='n/a'>
    /// }
    /// # Ok::<(), offload::Error>(())
    /// ```
    pub fn tasks(&self) -> Vec<TaskInfo> {
        let mut tasks: Vec<TaskInfo> = self
            .inner
            .state
            .live()
            .iter()
            .map(|task| task.info())
            .collect();
        tasks.sort_by_key(TaskInfo::id);
        tasks
    }
}

/// A call on its way to a pool: what to run in the worker, and how to read its result.
pub(crate) struct Call<T> {
    pub(crate) entry: u64,
    pub(crate) func_name: &'static str,
    pub(crate) decode: Decoder<T>,
    pub(crate) options: TaskOptions,
}

/// A call of the task function `F`.
pub(crate) fn call_of<F: TaskFn<M>, M>(options: TaskOptions) -> Call<F::Output> {
    Call {
        entry: entry_of::<F, M>(),
        func_name: func_name::<F>(),
        decode: decode_value::<F::Output>,
        options,
    }
}

/// A call of the async task function `F`.
pub(crate) fn async_call_of<F: AsyncTaskFn<M>, M>(options: TaskOptions) -> Call<F::Output> {
    Call {
        entry: entry_of_async::<F, M>(),
        func_name: func_name::<F>(),
        decode: decode_value::<F::Output>,
        options,
    }
}

/// Writes `args` as the payload of a `Run` frame.
pub(crate) fn encode_args<A: Serialize>(
    args: &A,
) -> impl FnOnce(&mut Vec<u8>) -> Result<(), String> + '_ {
    move |frame| wire::push(frame, args)
}

/// Queues `call` on `pool`, with the payload `write_payload` appends to the frame, or returns
/// the task already failed if that is impossible.
pub(crate) fn submit<T: Send + 'static>(
    pool: Result<&ProcessPool, TaskError>,
    call: Call<T>,
    write_payload: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
) -> ProcessTask<T> {
    let id = next_task_id();
    let tally = pool
        .as_ref()
        .ok()
        .map(|pool| pool.inner.state.tally.clone());
    let shared = Arc::new(Shared::new(
        id,
        call.func_name,
        call.decode,
        call.options,
        tally,
    ));
    let completion: Arc<dyn Completion> = shared.clone();
    let pool = match pool {
        Ok(pool) => pool,
        Err(err) => {
            shared.finish(Err(err));
            report_end(&*completion);
            return ProcessTask::new(shared, None);
        }
    };
    let Inner { jobs, state, .. } = &*pool.inner;
    let task = ProcessTask::new(
        shared.clone(),
        Some((completion.clone(), state.notices().clone())),
    );
    let mut frame = Vec::with_capacity(64);
    let encoded = wire::begin(
        &mut frame,
        &ToWorker::Run {
            id,
            entry: call.entry,
        },
    )
    .and_then(|()| write_payload(&mut frame))
    .and_then(|()| wire::finish(&mut frame));
    if let Err(msg) = encoded {
        shared.finish(Err(TaskError::Encode(format!("arguments: {msg}"))));
        notify_end(&completion, state.notices());
        return task;
    }
    state.register(completion.clone());
    let job = Job {
        id,
        frame,
        task: completion.clone(),
    };
    if jobs.try_send(job).is_err() {
        shared.finish(Err(TaskError::PoolClosed));
        state.ended(&*completion);
    }
    task
}

/// A snapshot of a pool's activity, from [`ProcessPool::stats`].
///
/// # Examples
///
/// ```
/// let stats = offload::PoolStats::default();
/// assert_eq!(stats.workers, stats.busy + stats.idle);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Worker processes ready to serve (not counting ones starting up or being stopped).
    pub workers: usize,
    /// Workers running a task.
    pub busy: usize,
    /// Workers waiting for a task.
    pub idle: usize,
    /// Tasks waiting for a worker.
    pub queued: usize,
    /// Tasks that returned a value.
    pub completed: u64,
    /// Tasks that failed (panic, worker death, timeout, codec, protocol, spawn).
    pub failed: u64,
    /// Tasks that were cancelled.
    pub cancelled: u64,
    /// Workers started in place of one that exited, died, was stopped or retired.
    pub replaced: u64,
}

impl fmt::Debug for ProcessPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessPool")
            .field("workers", &self.inner.workers)
            .finish()
    }
}

/// Options for a [`ProcessPool`], in the style of `std::process::Command`.
///
/// # Examples
///
/// ```no_run
/// # offload::init();
/// let pool = offload::PoolBuilder::new().workers(2).build()?;
/// # Ok::<(), offload::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct PoolBuilder {
    workers: Option<usize>,
    max_tasks_per_worker: Option<usize>,
    memory_limit: Option<u64>,
    /// Start workers only for waiting tasks (what `Isolated` needs).
    on_demand: bool,
}

impl PoolBuilder {
    /// A builder with every option at its default.
    pub fn new() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// The number of worker processes.
    ///
    /// The default value of this option is the number of CPUs available to this process
    /// (`std::thread::available_parallelism`), or 1 if that is unknown.
    pub fn workers(&mut self, workers: usize) -> &mut PoolBuilder {
        self.workers = Some(workers);
        self
    }

    /// Replaces each worker with a fresh process after it has run `tasks` tasks, so that
    /// leaks and state in user code cannot pile up (pebble's `max_tasks`, Python's
    /// `max_tasks_per_child`). The worker finishes its last task, exits, and a replacement
    /// takes its place.
    ///
    /// The default value of this option is no limit. Zero is refused by
    /// [`build`](PoolBuilder::build).
    pub fn max_tasks_per_worker(&mut self, tasks: usize) -> &mut PoolBuilder {
        self.max_tasks_per_worker = Some(tasks);
        self
    }

    /// Caps each worker's address space at `bytes` (`RLIMIT_AS`), so that one runaway task
    /// cannot take the machine's memory.
    ///
    /// A task whose allocation fails under the cap aborts its worker; it fails with
    /// [`TaskError::MemoryLimit`] (told apart from other aborts by the report Rust's
    /// allocation failure handler writes to stderr, which the pool then reads and passes on
    /// to its own stderr), and the pool replaces the worker. Address space is more than
    /// resident memory: leave room for the program's code, libraries and thread stacks.
    ///
    /// # Caveats
    ///
    /// The pool's thread copies the workers' stderr to this process's stderr; if that stderr
    /// blocks (a full pipe that nobody reads), the pool waits with it.
    ///
    /// The default value of this option is no limit. Zero is refused by
    /// [`build`](PoolBuilder::build).
    pub fn memory_limit(&mut self, bytes: u64) -> &mut PoolBuilder {
        self.memory_limit = Some(bytes);
        self
    }

    /// Starts workers only when tasks wait for them.
    pub(crate) fn on_demand(&mut self) -> &mut PoolBuilder {
        self.on_demand = true;
        self
    }

    /// Starts the pool's driver thread and its worker processes.
    ///
    /// Returns once every worker process has been started; their start-up handshakes finish
    /// in the background, and tasks spawned meanwhile wait for them.
    ///
    /// # Errors
    ///
    /// - [`Error::Config`] for zero workers, zero tasks per worker or a zero memory limit;
    /// - [`Error::Spawn`] if the driver thread or a worker process cannot be started;
    /// - [`Error::NotInitialized`] in a process that was started as a worker but did not call
    ///   [`init`](crate::init) first in `main` (it would otherwise start workers without end).
    pub fn build(&self) -> Result<ProcessPool, Error> {
        if crate::worker::is_stray_worker() {
            return Err(Error::NotInitialized);
        }
        if self.max_tasks_per_worker == Some(0) {
            return Err(Error::Config(
                "a worker must be allowed at least one task".into(),
            ));
        }
        if self.memory_limit == Some(0) {
            return Err(Error::Config("a memory limit of zero bytes".into()));
        }
        let workers = match self.workers {
            Some(0) => return Err(Error::Config("a pool needs at least one worker".into())),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let (jobs, state) = driver::start(driver::Options {
            workers,
            max_tasks_per_worker: self.max_tasks_per_worker,
            on_demand: self.on_demand,
            memory_limit: self.memory_limit,
        })?;
        Ok(ProcessPool {
            inner: Arc::new(Inner {
                jobs,
                state,
                workers,
            }),
        })
    }
}
