//! The process-wide default pool and [`to_process`].

use std::sync::{Mutex, PoisonError};

use crate::entry::TaskFn;
use crate::error::Error;
use crate::pool::{submit, ProcessPool};
use crate::state::TaskOptions;
use crate::task::ProcessTask;

static DEFAULT_POOL: Mutex<Option<ProcessPool>> = Mutex::new(None);

/// The process-wide default pool, created on first use with one worker per available CPU.
///
/// # Errors
///
/// As [`PoolBuilder::build`](crate::PoolBuilder::build), when the pool has to be created.
///
/// # Examples
///
/// ```no_run
/// # offload::init();
/// let pool = offload::default_pool()?;
/// assert!(pool.workers() >= 1);
/// # Ok::<(), offload::Error>(())
/// ```
pub fn default_pool() -> Result<ProcessPool, Error> {
    let mut slot = DEFAULT_POOL.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(pool) = &*slot {
        return Ok(pool.clone());
    }
    let pool = ProcessPool::builder().build()?;
    *slot = Some(pool.clone());
    Ok(pool)
}

/// Makes `pool` the default pool; returns the previous one, if any.
///
/// # Examples
///
/// ```no_run
/// # offload::init();
/// let previous = offload::set_default_pool(offload::ProcessPool::new(2)?);
/// assert!(previous.is_none());
/// assert_eq!(offload::default_pool()?.workers(), 2);
/// # Ok::<(), offload::Error>(())
/// ```
pub fn set_default_pool(pool: ProcessPool) -> Option<ProcessPool> {
    DEFAULT_POOL
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .replace(pool)
}

/// Runs `f(args)` on the default pool, like Python's `asyncio.to_process`.
///
/// If the default pool cannot be created, the task is returned already failed with
/// [`TaskError::Spawn`](crate::TaskError::Spawn).
///
/// # Examples
///
/// ```no_run
/// fn fib(n: u64) -> u64 { if n < 2 { n } else { fib(n - 1) + fib(n - 2) } }
///
/// # offload::init();
/// # futures_lite::future::block_on(async {
/// assert_eq!(offload::to_process(fib, 20).await?, 6765);
/// # Ok::<(), offload::Error>(()) }).unwrap();
/// ```
pub fn to_process<F, M>(f: F, args: F::Args) -> ProcessTask<F::Output>
where
    F: TaskFn<M>,
{
    let _ = f;
    match default_pool() {
        Ok(pool) => submit::<F, M>(Ok(&pool), &args, TaskOptions::default()),
        Err(err) => submit::<F, M>(Err(err.into_task_error()), &args, TaskOptions::default()),
    }
}
