//! The [`Executor`] trait, and [`Isolated`]: a fresh process for every call.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::TaskError;
use crate::func::{AsyncTaskFn, TaskFn};
use crate::launch::Launcher;
use crate::pool::{PoolBuilder, ProcessPool, TaskBuilder};
use crate::task::ProcessTask;

/// The environment variable that caps how many processes [`Isolated::new`] runs at once.
///
/// Its value is parsed as a whole number and clamped to `1..=`[`MAX_PROCS_LIMIT`]; anything
/// unreadable is ignored in favour of the default, the number of available CPUs.
///
/// # Examples
///
/// ```
/// assert_eq!(offload::MAX_PROCS_ENV, "OFFLOAD_MAX_PROCS");
/// ```
pub const MAX_PROCS_ENV: &str = "OFFLOAD_MAX_PROCS";

/// The largest value [`MAX_PROCS_ENV`] is taken up to.
///
/// # Examples
///
/// ```
/// assert_eq!(offload::MAX_PROCS_LIMIT, 1024);
/// ```
pub const MAX_PROCS_LIMIT: usize = 1024;

mod sealed {
    use crate::error::TaskError;
    use crate::pool::ProcessPool;

    pub trait Sealed {
        /// The pool that runs this executor's tasks.
        fn pool(&self) -> Result<ProcessPool, TaskError>;
    }
}

/// Where work runs: the trait a library accepts so that its caller picks between a
/// [`ProcessPool`] and fresh [`Isolated`] processes.
///
/// Its methods have the shape of [`ProcessPool`]'s. The trait is sealed: those two types are
/// its implementations.
///
/// # Examples
///
/// ```no_run
/// use offload::{Executor, TaskError};
///
/// fn checksum(data: Vec<u8>) -> u32 { data.iter().map(|&b| u32::from(b)).sum() }
///
/// /// A library function that lets its caller decide where the work runs.
/// async fn checksums<E: Executor>(executor: &E, files: Vec<Vec<u8>>) -> Result<Vec<u32>, TaskError> {
///     let tasks: Vec<_> = files.into_iter().map(|f| executor.spawn(checksum, f)).collect();
///     let mut sums = Vec::new();
///     for task in tasks {
///         sums.push(task.await?);
///     }
///     Ok(sums)
/// }
///
/// # offload::init();
/// # futures_lite::future::block_on(async {
/// let files = vec![vec![1, 2], vec![3]];
/// let pooled = checksums(&offload::ProcessPool::new(2)?, files.clone()).await?;
/// let isolated = checksums(&offload::Isolated::new(), files).await?;
/// assert_eq!(pooled, isolated);
/// # Ok::<(), offload::Error>(()) }).unwrap();
/// ```
pub trait Executor: sealed::Sealed + Send + Sync {
    /// Runs `f(args)` in a worker process, as [`ProcessPool::spawn`].
    fn spawn<F, M>(&self, f: F, args: F::Args) -> ProcessTask<F::Output>
    where
        F: TaskFn<M>,
    {
        self.task(f).spawn(args)
    }

    /// Runs the async `f(args)` in a worker process, as [`ProcessPool::spawn_async`].
    fn spawn_async<F, M>(&self, f: F, args: F::Args) -> ProcessTask<F::Output>
    where
        F: AsyncTaskFn<M>,
    {
        self.task(f).spawn_async(args)
    }

    /// A [`TaskBuilder`] for per-task options, as [`ProcessPool::task`].
    fn task<F, M>(&self, f: F) -> TaskBuilder<F, M>
    where
        F: Copy + Send + Sync + 'static,
    {
        let _ = f;
        TaskBuilder::new(self.pool())
    }
}

impl sealed::Sealed for ProcessPool {
    fn pool(&self) -> Result<ProcessPool, TaskError> {
        Ok(self.clone())
    }
}

impl Executor for ProcessPool {}

/// A fresh process for every call, like asyncio-run-in-process's `run_in_process`.
///
/// Each task gets a new worker process, which exits when the task ends: nothing a task does
/// to its process (global state, leaks, signal handlers, a poisoned library) can reach another
/// task. Tasks have the same [`ProcessTask`] metadata, cancellation and timeouts as on a pool.
///
/// At most [`max_procs`](Isolated::max_procs) such processes run at once; further calls wait
/// their turn, queued. `Isolated` is a cheap handle: clones share the cap and the queue. Its
/// thread and queue are created on first use.
///
/// # Examples
///
/// ```no_run
/// use offload::Executor;
///
/// fn risky(n: u32) -> u32 { n * 2 }
///
/// # offload::init();
/// # futures_lite::future::block_on(async {
/// let isolated = offload::Isolated::new();
/// let mut task = isolated.spawn(risky, 21);
/// assert_eq!((&mut task).await?, 42);
/// let again = isolated.spawn(risky, 1);
/// let first_pid = task.pid();
/// again.await?; // ran in another process than `first_pid`
/// # Ok::<(), offload::Error>(()) }).unwrap();
/// ```
#[derive(Clone)]
pub struct Isolated {
    inner: Arc<IsolatedInner>,
}

struct IsolatedInner {
    max_procs: usize,
    /// How its processes are started.
    launcher: Launcher,
    /// Created on first use.
    pool: Mutex<Option<ProcessPool>>,
}

impl Isolated {
    /// An executor that runs at most [`MAX_PROCS_ENV`] processes at once (by default, the
    /// number of available CPUs).
    pub fn new() -> Isolated {
        Isolated::with_max_procs(max_procs_from(std::env::var(MAX_PROCS_ENV).ok().as_deref()))
    }

    /// An executor that runs at most `max_procs` processes at once (at most
    /// [`MAX_PROCS_LIMIT`]).
    ///
    /// Zero is refused as [`ProcessPool::new(0)`](ProcessPool::new) is: every task spawned on
    /// such an executor fails with [`TaskError::Spawn`] saying that a pool needs at least one
    /// worker.
    pub fn with_max_procs(max_procs: usize) -> Isolated {
        Isolated {
            inner: Arc::new(IsolatedInner {
                max_procs: max_procs.min(MAX_PROCS_LIMIT),
                launcher: Launcher::local(),
                pool: Mutex::new(None),
            }),
        }
    }

    /// The same executor with its processes started by `launcher` (see [`Launcher`]): a fresh
    /// process per call on another machine, or through a wrapper. Takes effect for an executor
    /// that has not run a task yet; one that has keeps its processes and launcher.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use offload::{Executor, Isolated, Launcher};
    ///
    /// fn risky(n: u32) -> u32 { n * 2 }
    ///
    /// # offload::init();
    /// let isolated = Isolated::with_max_procs(4).launcher(Launcher::ssh("node1"));
    /// assert_eq!(isolated.spawn(risky, 21).wait()?, 42);
    /// # Ok::<(), offload::Error>(())
    /// ```
    pub fn launcher(self, launcher: Launcher) -> Isolated {
        if self.lock().is_some() {
            return self;
        }
        Isolated {
            inner: Arc::new(IsolatedInner {
                max_procs: self.inner.max_procs,
                launcher,
                pool: Mutex::new(None),
            }),
        }
    }

    /// How many processes may run at once.
    pub fn max_procs(&self) -> usize {
        self.inner.max_procs
    }

    /// Waits for queued and running tasks to finish and for every process to be reaped; later
    /// calls fail with [`TaskError::PoolClosed`].
    pub async fn shutdown(&self) {
        let pool = self.lock().clone();
        if let Some(pool) = pool {
            pool.shutdown().await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<ProcessPool>> {
        self.inner
            .pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The cap from the value of [`MAX_PROCS_ENV`]: parsed, clamped, never trusted.
fn max_procs_from(value: Option<&str>) -> usize {
    let default = std::thread::available_parallelism().map_or(1, |n| n.get());
    value
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(default, |n| n.clamp(1, MAX_PROCS_LIMIT as u64) as usize)
}

impl Default for Isolated {
    fn default() -> Self {
        Isolated::new()
    }
}

impl sealed::Sealed for Isolated {
    fn pool(&self) -> Result<ProcessPool, TaskError> {
        let mut slot = self.lock();
        if let Some(pool) = &*slot {
            return Ok(pool.clone());
        }
        let pool = PoolBuilder::new()
            .workers(self.inner.max_procs)
            .max_tasks_per_worker(1)
            .on_demand()
            .launcher(self.inner.launcher.clone())
            .build()
            .map_err(crate::error::Error::into_task_error)?;
        *slot = Some(pool.clone());
        Ok(pool)
    }
}

impl Executor for Isolated {}

impl fmt::Debug for Isolated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Isolated")
            .field("max_procs", &self.inner.max_procs)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_procs_is_parsed_and_clamped() {
        let default = std::thread::available_parallelism().unwrap().get();
        assert_eq!(max_procs_from(None), default);
        assert_eq!(max_procs_from(Some("3")), 3);
        assert_eq!(max_procs_from(Some(" 7\n")), 7);
        assert_eq!(max_procs_from(Some("0")), 1);
        assert_eq!(max_procs_from(Some("99999999999")), MAX_PROCS_LIMIT);
        assert_eq!(max_procs_from(Some("-2")), default);
        assert_eq!(max_procs_from(Some("many")), default);
        assert_eq!(Isolated::with_max_procs(0).max_procs(), 0);
        assert_eq!(Isolated::with_max_procs(5000).max_procs(), MAX_PROCS_LIMIT);
    }
}
