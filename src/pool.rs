//! The pool handle, [`ProcessPool`], and its [`PoolBuilder`].

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_channel::Sender;

use crate::driver::{self, Job, PoolState};
use crate::entry::{entry_of, func_name, TaskFn};
use crate::error::{Error, TaskError};
use crate::state::{report_end, Completion, Shared, TaskOptions};
use crate::task::{notify_end, ProcessTask, TaskBuilder};
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

pub(crate) fn next_task_id() -> u64 {
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
        submit::<F, M>(Ok(self), &args, TaskOptions::default())
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
        TaskBuilder::new(self.clone())
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

    /// Whether the pool has stopped taking tasks.
    pub fn is_closed(&self) -> bool {
        self.inner.jobs.is_closed()
    }
}

/// Queues `F(args)` on `pool`, or returns the task already failed if that is impossible.
pub(crate) fn submit<F: TaskFn<M>, M>(
    pool: Result<&ProcessPool, TaskError>,
    args: &F::Args,
    options: TaskOptions,
) -> ProcessTask<F::Output> {
    let id = next_task_id();
    let shared = Arc::new(Shared::<F::Output>::new(id, func_name::<F>(), options));
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
    let frame = match run_frame::<F, M>(id, args) {
        Ok(frame) => frame,
        Err(msg) => {
            shared.finish(Err(TaskError::Encode(format!("arguments: {msg}"))));
            notify_end(&completion, state.notices());
            return task;
        }
    };
    state.register(completion.clone());
    let job = Job {
        id,
        frame,
        task: completion.clone(),
    };
    if jobs.try_send(job).is_err() {
        state.unregister(id);
        shared.finish(Err(TaskError::PoolClosed));
        report_end(&*completion);
    }
    task
}

/// The complete `Run` frame for `F(args)`.
fn run_frame<F: TaskFn<M>, M>(id: u64, args: &F::Args) -> Result<Vec<u8>, String> {
    let mut frame = Vec::with_capacity(64);
    let entry = entry_of::<F, M>();
    wire::begin(&mut frame, &ToWorker::Run { id, entry })?;
    wire::push(&mut frame, args)?;
    wire::finish(&mut frame)?;
    Ok(frame)
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

    /// Starts the pool's driver thread and its worker processes.
    ///
    /// Returns once every worker process has been started; their start-up handshakes finish
    /// in the background, and tasks spawned meanwhile wait for them.
    ///
    /// # Errors
    ///
    /// - [`Error::Config`] for zero workers;
    /// - [`Error::Spawn`] if the driver thread or a worker process cannot be started;
    /// - [`Error::NotInitialized`] in a process that was started as a worker but did not call
    ///   [`init`](crate::init) first in `main` (it would otherwise start workers without end).
    pub fn build(&self) -> Result<ProcessPool, Error> {
        if crate::worker::is_stray_worker() {
            return Err(Error::NotInitialized);
        }
        let workers = match self.workers {
            Some(0) => return Err(Error::Config("a pool needs at least one worker".into())),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let (jobs, state) = driver::start(workers)?;
        Ok(ProcessPool {
            inner: Arc::new(Inner {
                jobs,
                state,
                workers,
            }),
        })
    }
}
