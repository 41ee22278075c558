//! The pool: its handle [`ProcessPool`], its [`PoolBuilder`] and [`TaskBuilder`], how a task
//! is submitted, and the driver thread that runs its workers.

mod backlog;
mod breaker;
mod builder;
mod driver;
mod pipeline;
mod slot;
mod state;
pub(crate) mod submit;
mod task_builder;

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_channel::Sender;

pub use builder::{PoolBuilder, DEFAULT_IDLE_TIMEOUT, DEFAULT_INIT_TIMEOUT};
pub(crate) use state::PoolState;
use submit::{call_of, encode_args, submit, Job};
pub use task_builder::TaskBuilder;

use crate::error::Error;
use crate::func::{AsyncStreamFn, AsyncTaskFn, StreamFn, TaskFn};
use crate::task::blocking::block_on;
use crate::task::options::TaskOptions;
use crate::task::{hand_end_to_driver, ProcessStream, ProcessTask, TaskInfo, TaskStatus};

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
    /// The queue's sending side; closing it stops the pool taking tasks.
    jobs: Sender<Job>,
    /// What the handles share with the driver.
    state: Arc<PoolState>,
    /// The most worker processes the pool runs.
    workers: usize,
    /// The workers it keeps at all times.
    min_workers: usize,
}

impl Inner {
    /// Stops taking tasks; elastic slots waiting for demand see it.
    fn close(&self) {
        self.jobs.close();
        self.state.demand.notify(usize::MAX);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.close();
    }
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
    /// already failed with [`TaskError::Encode`](crate::TaskError::Encode).
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
        self.task(f).spawn_async(args)
    }

    /// Runs the stream function `f(args)` in a worker process and yields its items as the
    /// worker produces them, in order: see [`ProcessStream`] and [`StreamFn`].
    ///
    /// The worker runs at most the stream's window of items (1024; see
    /// [`TaskBuilder::stream_window`]) ahead of what was taken from the stream. A failure
    /// (panic, the worker's death, timeout, cancel) is the last item. Dropping the stream
    /// cancels the task.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # offload::init();
    /// use futures_lite::StreamExt;
    ///
    /// fn words(text: String) -> Vec<String> {
    ///     text.split_whitespace().map(str::to_owned).collect()
    /// }
    ///
    /// # futures_lite::future::block_on(async {
    /// let pool = offload::ProcessPool::new(1)?;
    /// let mut words = pool.spawn_stream(words, "to be or not".to_string());
    /// while let Some(word) = words.next().await {
    ///     println!("{}", word?);
    /// }
    /// # Ok::<(), offload::Error>(()) }).unwrap();
    /// ```
    pub fn spawn_stream<F, M>(&self, f: F, args: F::Args) -> ProcessStream<F::Item>
    where
        F: StreamFn<M>,
    {
        self.task(f).spawn_stream(args)
    }

    /// Runs the async stream function `f(args)` in a worker process, on `async_io::block_on`
    /// there, and yields its items as they come; everything else is as for
    /// [`spawn_stream`](ProcessPool::spawn_stream). See [`AsyncStreamFn`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # offload::init();
    /// use futures_lite::{stream, Stream, StreamExt};
    ///
    /// fn evens(n: u64) -> impl Stream<Item = u64> {
    ///     stream::iter(0..n).filter(|i| i % 2 == 0)
    /// }
    ///
    /// # futures_lite::future::block_on(async {
    /// let pool = offload::ProcessPool::new(1)?;
    /// let evens: Vec<u64> = pool.spawn_stream_async(evens, 7).map(Result::unwrap).collect().await;
    /// assert_eq!(evens, [0, 2, 4, 6]);
    /// # Ok::<(), offload::Error>(()) }).unwrap();
    /// ```
    pub fn spawn_stream_async<F, M>(&self, f: F, args: F::Args) -> ProcessStream<F::Item>
    where
        F: AsyncStreamFn<M>,
    {
        self.task(f).spawn_stream_async(args)
    }

    /// A [`TaskBuilder`] for `f`: set per-task options (timeout, cancel timeout, callbacks),
    /// then spawn, spawn an async function, or map.
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
        F: Copy + Send + Sync + 'static,
    {
        let _ = f;
        TaskBuilder::new(Ok(self.clone()))
    }

    /// Stops taking tasks, lets the queued and running ones finish, then stops the workers;
    /// returns once every worker has exited and was reaped.
    ///
    /// Tasks spawned afterwards, through any handle of this pool, fail with
    /// [`TaskError::PoolClosed`](crate::TaskError::PoolClosed).
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
        self.inner.close();
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
        self.inner.close();
        for task in self.inner.state.live() {
            if task.cancel() {
                hand_end_to_driver(&task, self.inner.state.notices());
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
        block_on("ProcessPool::shutdown_blocking", self.shutdown());
    }

    /// [`shutdown_now`](ProcessPool::shutdown_now) for synchronous code: blocks the current
    /// thread until every worker is reaped.
    ///
    /// # Panics
    ///
    /// When called from a task callback, which runs on a pool's own thread.
    pub fn shutdown_now_blocking(&self) {
        block_on("ProcessPool::shutdown_now_blocking", self.shutdown_now());
    }

    /// Waits until the pool's first workers have started and run
    /// [`init`](PoolBuilder::init): all of them for a fixed pool,
    /// [`min_workers`](PoolBuilder::min_workers) of them for an elastic one (at once for
    /// `min_workers(0)`).
    ///
    /// Tasks need not wait for this (they queue until a worker takes them); it is for
    /// programs that want start-up errors before they take work, or start-up costs out of
    /// their first measurements.
    ///
    /// # Errors
    ///
    /// [`Error::Task`] with the error the queued tasks failed with when start-ups failed 3
    /// times in a row ([`TaskError::InitFailed`](crate::TaskError::InitFailed), or
    /// [`TaskError::Spawn`](crate::TaskError::Spawn) for a launch or handshake error; see
    /// [`PoolBuilder::init`]), or with [`TaskError::PoolClosed`](crate::TaskError::PoolClosed)
    /// if the pool was closed first.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # offload::init();
    /// fn check() -> Result<(), String> {
    ///     std::env::var("MODEL_PATH").map(drop).map_err(|_| "MODEL_PATH is not set".into())
    /// }
    ///
    /// # futures_lite::future::block_on(async {
    /// let pool = offload::ProcessPool::builder().workers(2).init(check).build()?;
    /// if let Err(e) = pool.ready().await {
    ///     eprintln!("the workers cannot start: {e}");
    /// }
    /// # Ok::<(), offload::Error>(()) }).unwrap();
    /// ```
    pub async fn ready(&self) -> Result<(), Error> {
        let state = &self.inner.state;
        loop {
            let changed = state.startup.listen();
            if let Some(outcome) = self.readiness() {
                return outcome;
            }
            changed.await;
        }
    }

    /// [`ready`](ProcessPool::ready) for synchronous code: blocks the current thread.
    ///
    /// # Errors
    ///
    /// As [`ready`](ProcessPool::ready).
    ///
    /// # Panics
    ///
    /// When called from a task callback, which runs on a pool's own thread.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # offload::init();
    /// let pool = offload::ProcessPool::new(2)?;
    /// pool.ready_blocking()?;
    /// assert_eq!(pool.stats().workers, 2);
    /// # Ok::<(), offload::Error>(())
    /// ```
    pub fn ready_blocking(&self) -> Result<(), Error> {
        block_on("ProcessPool::ready_blocking", self.ready())
    }

    /// What [`ready`](ProcessPool::ready) returns now, if it is known.
    fn readiness(&self) -> Option<Result<(), Error>> {
        let state = &self.inner.state;
        if state.counters.workers.load(Ordering::Relaxed) >= self.inner.min_workers {
            return Some(Ok(()));
        }
        if let Some(error) = state.startup_error() {
            return Some(Err(Error::Task(error)));
        }
        if self.is_closed() || state.is_stopped() {
            return Some(Err(Error::Task(crate::TaskError::PoolClosed)));
        }
        None
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
            queued: state.count_live(|task| task.status() == TaskStatus::Pending),
            sent_ahead: counters.sent_ahead.load(Ordering::Relaxed),
            completed: state.tally.completed.load(Ordering::Relaxed),
            failed: state.tally.failed.load(Ordering::Relaxed),
            cancelled: state.tally.cancelled.load(Ordering::Relaxed),
            replaced: counters.replaced.load(Ordering::Relaxed),
            starting: counters.starting.load(Ordering::Relaxed),
            start_failures: counters.start_failures.load(Ordering::Relaxed),
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
    /// Of the queued tasks, those already sent ahead to a busy worker, to start the moment
    /// its task ends (see the crate docs on pipelined dispatch); still withdrawn if
    /// cancelled, and given to another worker if that one dies first.
    pub sent_ahead: usize,
    /// Tasks that returned a value.
    pub completed: u64,
    /// Tasks that failed (panic, worker death, timeout, codec, protocol, spawn).
    pub failed: u64,
    /// Tasks that were cancelled.
    pub cancelled: u64,
    /// Workers started in place of one that exited, died, was stopped or retired.
    pub replaced: u64,
    /// Workers being started: launched, in their handshake, or running
    /// [`init`](PoolBuilder::init).
    pub starting: usize,
    /// Start-ups that failed: a launch, a handshake or an [`init`](PoolBuilder::init).
    pub start_failures: u64,
}

impl fmt::Debug for ProcessPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessPool")
            .field("workers", &self.inner.workers)
            .finish()
    }
}
