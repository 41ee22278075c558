//! The process-wide default pool, [`to_process`], scoped pools and [`process_fn`].

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::pin;
use std::sync::{Mutex, PoisonError};

use futures_lite::future;

use crate::error::Error;
use crate::func::{func_name, TaskFn};
use crate::pool::submit::{call_of, encode_args, submit};
use crate::pool::ProcessPool;
use crate::task::options::TaskOptions;
use crate::task::ProcessTask;

static DEFAULT_POOL: Mutex<Option<ProcessPool>> = Mutex::new(None);

/// The process-wide default pool, created on first use with one worker per available CPU.
///
/// Inside [`with_pool`], the scope's pool.
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
    if let Some(pool) = scoped_pool() {
        return Ok(pool);
    }
    let mut slot = DEFAULT_POOL.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(pool) = &*slot {
        return Ok(pool.clone());
    }
    let pool = ProcessPool::builder().build()?;
    *slot = Some(pool.clone());
    Ok(pool)
}

/// Makes `pool` the default pool, or with `None` clears it, so that the next use creates a
/// fresh one; returns the previous default, if any.
///
/// Clearing drops this module's handle only: the previous pool lives while other handles do,
/// and it is returned so that the caller can [`shutdown`](ProcessPool::shutdown) it.
///
/// # Examples
///
/// ```no_run
/// # offload::init();
/// let previous = offload::set_default_pool(offload::ProcessPool::new(2)?);
/// assert!(previous.is_none());
/// assert_eq!(offload::default_pool()?.workers(), 2);
/// let mine = offload::set_default_pool(None).expect("the pool set above");
/// mine.shutdown_blocking();
/// # Ok::<(), offload::Error>(())
/// ```
pub fn set_default_pool(pool: impl Into<Option<ProcessPool>>) -> Option<ProcessPool> {
    let mut slot = DEFAULT_POOL.lock().unwrap_or_else(PoisonError::into_inner);
    std::mem::replace(&mut *slot, pool.into())
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
    match default_pool() {
        Ok(pool) => pool.spawn(f, args),
        Err(err) => submit(
            Err(err.into_task_error()),
            call_of::<F, M>(TaskOptions::default()),
            encode_args(&args),
        ),
    }
}

thread_local! {
    /// Pools made the default by `with_pool` for the future being polled on this thread.
    static SCOPED: RefCell<Vec<ProcessPool>> = const { RefCell::new(Vec::new()) };
}

/// Makes `pool` this thread's default while it lives.
struct ScopeGuard;

impl ScopeGuard {
    fn enter(pool: &ProcessPool) -> ScopeGuard {
        SCOPED.with(|scoped| scoped.borrow_mut().push(pool.clone()));
        ScopeGuard
    }
}

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        SCOPED.with(|scoped| scoped.borrow_mut().pop());
    }
}

fn scoped_pool() -> Option<ProcessPool> {
    SCOPED.with(|scoped| scoped.borrow().last().cloned())
}

/// Runs `body` with `pool` as the default pool, then shuts `pool` down: like Python's
/// `async with process_pool(max_workers=4):`.
///
/// While `body` is polled, [`to_process`], [`default_pool`] and [`ProcessFn`] without a pool
/// use `pool`; other code keeps seeing the previous default, which comes back afterwards.
/// When `body` is done, `pool` finishes its queued and running tasks and every worker is
/// reaped (as [`ProcessPool::shutdown`]) before `with_pool` returns `body`'s output.
///
/// # Caveats
///
/// The scope follows `body`'s own polls: work that `body` hands to another task of its
/// executor (`tokio::spawn`, `smol::spawn`) does not see `pool`. If the `with_pool` future is
/// dropped early, `pool` is dropped with it: tasks whose handles were dropped are cancelled,
/// and the workers exit in the background.
///
/// # Examples
///
/// ```no_run
/// fn fib(n: u64) -> u64 { if n < 2 { n } else { fib(n - 1) + fib(n - 2) } }
///
/// # offload::init();
/// # futures_lite::future::block_on(async {
/// let pool = offload::ProcessPool::new(4)?;
/// let sum = offload::with_pool(pool, async {
///     let a = offload::to_process(fib, 30); // on the scoped pool
///     let b = offload::to_process(fib, 31);
///     Ok::<_, offload::Error>(a.await? + b.await?)
/// })
/// .await?; // the pool is shut down, every worker reaped
/// assert_eq!(sum, 2178309);
/// # Ok::<(), offload::Error>(()) }).unwrap();
/// ```
pub async fn with_pool<Fut: Future>(pool: ProcessPool, body: Fut) -> Fut::Output {
    let mut body = pin!(body);
    let output = future::poll_fn(|cx| {
        let _scope = ScopeGuard::enter(&pool);
        body.as_mut().poll(cx)
    })
    .await;
    pool.shutdown().await;
    output
}

/// Turns a function into a value whose calls run in a worker process: the equivalent of
/// Python's `@run_in_process` decorator.
///
/// `process_fn(fib).call(30)` is `to_process(fib, 30)`; bind it to a pool with
/// [`ProcessFn::on`]. Each call returns a [`ProcessTask`].
///
/// # Examples
///
/// ```no_run
/// fn fib(n: u64) -> u64 { if n < 2 { n } else { fib(n - 1) + fib(n - 2) } }
///
/// # offload::init();
/// # futures_lite::future::block_on(async {
/// let fib_in_process = offload::process_fn(fib);
/// assert_eq!(fib_in_process.call(20).await?, 6765); // on the default pool
///
/// let pool = offload::ProcessPool::new(2)?;
/// let on_pool = fib_in_process.on(&pool);
/// assert_eq!(on_pool.call(21).await?, 10946);
/// # Ok::<(), offload::Error>(()) }).unwrap();
/// ```
pub fn process_fn<F: TaskFn<M>, M>(f: F) -> ProcessFn<F, M> {
    ProcessFn {
        f,
        pool: None,
        marker: PhantomData,
    }
}

/// A function whose calls run in a worker process; made by [`process_fn`].
pub struct ProcessFn<F, M> {
    f: F,
    /// The pool to run on; the default pool when `None`.
    pool: Option<ProcessPool>,
    marker: PhantomData<fn() -> M>,
}

impl<F: TaskFn<M>, M> ProcessFn<F, M> {
    /// Runs the function on `args` in a worker of its pool (the default pool unless bound
    /// with [`on`](ProcessFn::on)).
    pub fn call(&self, args: F::Args) -> ProcessTask<F::Output> {
        match &self.pool {
            Some(pool) => pool.spawn(self.f, args),
            None => to_process(self.f, args),
        }
    }

    /// The same function, bound to `pool`.
    pub fn on(&self, pool: &ProcessPool) -> ProcessFn<F, M> {
        ProcessFn {
            f: self.f,
            pool: Some(pool.clone()),
            marker: PhantomData,
        }
    }
}

impl<F: Copy, M> Clone for ProcessFn<F, M> {
    fn clone(&self) -> Self {
        ProcessFn {
            f: self.f,
            pool: self.pool.clone(),
            marker: PhantomData,
        }
    }
}

impl<F, M> fmt::Debug for ProcessFn<F, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessFn")
            .field("func", &func_name::<F>())
            .field("pool", &self.pool)
            .finish()
    }
}
