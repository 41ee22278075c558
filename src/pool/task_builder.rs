//! [`TaskBuilder`]: per-task options, then spawn.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use super::submit::{async_call_of, call_of, encode_args, submit, submit_stream};
use super::ProcessPool;
use crate::error::TaskError;
use crate::func::trampoline::{async_stream_entry_of, stream_entry_of};
use crate::func::{func_name, AsyncStreamFn, AsyncTaskFn, StreamFn, TaskFn};
use crate::task::options::TaskOptions;
use crate::task::{ProcessStream, ProcessTask, TaskInfo};

/// Per-task options: build one with [`ProcessPool::task`] (or
/// [`Executor::task`](crate::Executor::task)), set options, then
/// [`spawn`](TaskBuilder::spawn), [`spawn_async`](TaskBuilder::spawn_async) or
/// [`map`](TaskBuilder::map) (as many times as wanted, all with the same options).
///
/// # Examples
///
/// ```no_run
/// # offload::init();
/// use std::time::Duration;
/// use offload::TaskInfo;
///
/// fn fib(n: u64) -> u64 { if n < 2 { n } else { fib(n - 1) + fib(n - 2) } }
///
/// # futures_lite::future::block_on(async {
/// let pool = offload::ProcessPool::new(2)?;
/// let task = pool
///     .task(fib)
///     .timeout(Duration::from_secs(10))        // kill + TaskError::TimedOut
///     .cancel_timeout(Duration::from_secs(2))  // SIGTERM → 2 s → SIGKILL
///     .on_start(|i: &TaskInfo| println!("started in {:?}", i.pid()))
///     .on_done(|i: &TaskInfo| println!("done in {:?}", i.duration()))
///     .on_error(|i: &TaskInfo| eprintln!("failed: {:?}", i.error()))
///     .spawn(30);
/// assert_eq!(task.await?, 832040);
/// # Ok::<(), offload::Error>(()) }).unwrap();
/// ```
pub struct TaskBuilder<F, M> {
    /// Where tasks go; the error tasks fail with if there is nowhere to go.
    pub(crate) pool: Result<ProcessPool, TaskError>,
    pub(crate) options: TaskOptions,
    marker: PhantomData<fn(F) -> M>,
}

impl<F, M> TaskBuilder<F, M> {
    pub(crate) fn new(pool: Result<ProcessPool, TaskError>) -> Self {
        TaskBuilder {
            pool,
            options: TaskOptions::default(),
            marker: PhantomData,
        }
    }

    /// Limits the task's run time: once it has run for `timeout` (counted from the moment a
    /// worker takes it, not from spawning), its worker is stopped as for a cancel and the task
    /// fails with [`TaskError::TimedOut`] (status `failed`). For [`map`](TaskBuilder::map), the
    /// limit is per item.
    ///
    /// Time spent queued does not count. To bound the total time instead, race the task
    /// against your runtime's timer: dropping the task cancels it.
    ///
    /// The default value of this option is no timeout.
    pub fn timeout(&mut self, timeout: Duration) -> &mut Self {
        self.options.timeout = Some(timeout);
        self
    }

    /// How long a worker stopped for this task (cancel, drop, timeout) gets between `SIGTERM`
    /// and `SIGKILL`. A zero duration sends `SIGKILL` at once.
    ///
    /// The default value of this option is 5 seconds.
    pub fn cancel_timeout(&mut self, grace: Duration) -> &mut Self {
        self.options.cancel_timeout = grace;
        self
    }

    /// Runs `callback` when the task is sent to a worker (status `running`, pid set).
    ///
    /// Callbacks run on the pool's thread, in the order `on_start` → `on_done` or
    /// `on_error`, each at most once; they should be quick, and must not block on a pool
    /// (`wait` and `map_blocking` panic there rather than wait forever). A callback that
    /// panics is logged (through the `log` crate) and changes nothing else. A task's result is
    /// handed out only after its `on_done` or `on_error` has returned, so what a callback
    /// records is there when `await` (or `wait`) returns. For [`map`](TaskBuilder::map),
    /// callbacks run once per chunk of items (a chunk is one task).
    ///
    /// The default value of this option is no callback.
    pub fn on_start(&mut self, callback: impl Fn(&TaskInfo) + Send + Sync + 'static) -> &mut Self {
        self.options.on_start = Some(Arc::new(callback));
        self
    }

    /// Runs `callback` when the task has returned its value (status `done`, end time and
    /// duration set). See [`on_start`](TaskBuilder::on_start) for how callbacks run.
    ///
    /// The default value of this option is no callback.
    pub fn on_done(&mut self, callback: impl Fn(&TaskInfo) + Send + Sync + 'static) -> &mut Self {
        self.options.on_done = Some(Arc::new(callback));
        self
    }

    /// Runs `callback` when the task failed, timed out or was cancelled (error set). See
    /// [`on_start`](TaskBuilder::on_start) for how callbacks run; for a task that the pool
    /// refused because it was shut down, `on_error` runs on the thread that spawned it.
    ///
    /// The default value of this option is no callback.
    pub fn on_error(&mut self, callback: impl Fn(&TaskInfo) + Send + Sync + 'static) -> &mut Self {
        self.options.on_error = Some(Arc::new(callback));
        self
    }

    /// Runs `callback` each time the task reports progress with
    /// [`offload::progress`](crate::progress); [`TaskInfo::progress`] is the report. See
    /// [`on_start`](TaskBuilder::on_start) for how callbacks run: on the pool's thread,
    /// between `on_start` and `on_done` or `on_error`, guarded.
    ///
    /// Reports are coalesced in the worker (at most one every 5 ms, the last one always), so
    /// the callback runs at most about 200 times a second per task. For
    /// [`map`](TaskBuilder::map), it is shown the progress of the whole map: the items done of
    /// all items (a progress bar over a `map` is one line), and the task function's own
    /// reports are ignored.
    ///
    /// The default value of this option is no callback.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # offload::init();
    /// use offload::TaskInfo;
    ///
    /// fn square(x: u64) -> u64 { x * x }
    ///
    /// # futures_lite::future::block_on(async {
    /// let pool = offload::ProcessPool::new(2)?;
    /// let squares = pool
    ///     .task(square)
    ///     .on_progress(|i: &TaskInfo| eprintln!("{:?}", i.progress()))
    ///     .map(0..10_000)
    ///     .await;
    /// assert_eq!(squares.len(), 10_000);
    /// # Ok::<(), offload::Error>(()) }).unwrap();
    /// ```
    pub fn on_progress(
        &mut self,
        callback: impl Fn(&TaskInfo) + Send + Sync + 'static,
    ) -> &mut Self {
        self.options.on_progress = Some(Arc::new(callback));
        self
    }

    /// Captures what the task writes to its fds 1 and 2, to read with
    /// [`ProcessTask::output`]: exactly what this task wrote, by Rust's `print!`, by C code
    /// writing to the descriptors and by the processes it started, and nothing another task
    /// wrote (up to [`TaskOutput::LIMIT`](crate::TaskOutput::LIMIT) bytes of each). Without
    /// it, a task's output goes to the parent's stderr.
    ///
    /// Output is ordered with the task's end: whatever was written before the function
    /// returned is in [`output`](ProcessTask::output) when the task is done. A process the
    /// task started and left running loses its descriptors' other end when the task ends.
    ///
    /// The default value of this option is no capture.
    pub fn capture_output(&mut self) -> &mut Self {
        self.options.capture = true;
        self
    }

    /// How many items the worker of a [`spawn_stream`](TaskBuilder::spawn_stream) may run
    /// ahead of the consumer (at least 1): the most items the parent holds for a stream. The
    /// consumer grants more each time it took half of it.
    ///
    /// The default value of this option is 1024 items: for large items (a megabyte each),
    /// set a smaller one, as the parent may hold a window of them.
    pub fn stream_window(&mut self, items: u64) -> &mut Self {
        self.options.window = Some(items.max(1));
        self
    }

    /// Spawns `f(args)` with these options; see [`ProcessPool::spawn`].
    pub fn spawn(&self, args: F::Args) -> ProcessTask<F::Output>
    where
        F: TaskFn<M>,
    {
        submit(
            self.pool.as_ref().map_err(Clone::clone),
            call_of::<F, M>(self.options.clone()),
            encode_args(&args),
        )
    }

    /// Spawns the async function `f(args)` with these options; see
    /// [`ProcessPool::spawn_async`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # offload::init();
    /// use std::time::Duration;
    ///
    /// async fn nap(ms: u64) -> u64 {
    ///     async_io::Timer::after(Duration::from_millis(ms)).await;
    ///     ms
    /// }
    ///
    /// # futures_lite::future::block_on(async {
    /// let pool = offload::ProcessPool::new(1)?;
    /// let late = pool.task(nap).timeout(Duration::from_millis(50)).spawn_async(10_000);
    /// assert!(late.await.unwrap_err().is_timed_out());
    /// # Ok::<(), offload::Error>(()) }).unwrap();
    /// ```
    pub fn spawn_async(&self, args: F::Args) -> ProcessTask<F::Output>
    where
        F: AsyncTaskFn<M>,
    {
        submit(
            self.pool.as_ref().map_err(Clone::clone),
            async_call_of::<F, M>(self.options.clone()),
            encode_args(&args),
        )
    }
}

impl<F, M> TaskBuilder<F, M> {
    /// Spawns the stream function `f(args)` with these options; see
    /// [`ProcessPool::spawn_stream`]. The timeout bounds the whole stream.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # offload::init();
    /// use futures_lite::StreamExt;
    ///
    /// fn naturals() -> std::ops::RangeFrom<u64> { 0.. }
    ///
    /// # futures_lite::future::block_on(async {
    /// let pool = offload::ProcessPool::new(1)?;
    /// let mut stream = pool.task(naturals).stream_window(16).spawn_stream(());
    /// for expected in 0..100 {
    ///     assert_eq!(stream.next().await.unwrap()?, expected);
    /// }
    /// drop(stream); // the endless stream is cancelled, its worker stopped
    /// # Ok::<(), offload::Error>(()) }).unwrap();
    /// ```
    pub fn spawn_stream(&self, args: F::Args) -> ProcessStream<F::Item>
    where
        F: StreamFn<M>,
    {
        submit_stream(
            self.pool.as_ref().map_err(Clone::clone),
            stream_entry_of::<F, M>(),
            func_name::<F>(),
            self.options.clone(),
            encode_args(&args),
        )
    }

    /// Spawns the async stream function `f(args)` with these options; see
    /// [`ProcessPool::spawn_stream_async`].
    pub fn spawn_stream_async(&self, args: F::Args) -> ProcessStream<F::Item>
    where
        F: AsyncStreamFn<M>,
    {
        submit_stream(
            self.pool.as_ref().map_err(Clone::clone),
            async_stream_entry_of::<F, M>(),
            func_name::<F>(),
            self.options.clone(),
            encode_args(&args),
        )
    }
}

impl<F, M> fmt::Debug for TaskBuilder<F, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskBuilder")
            .field("func", &func_name::<F>())
            .field("timeout", &self.options.timeout)
            .field("cancel_timeout", &self.options.cancel_timeout)
            .finish_non_exhaustive()
    }
}
