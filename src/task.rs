//! The task handle: [`ProcessTask`], its [`TaskStatus`] and [`TaskInfo`] snapshot.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::entry::TaskFn;
use crate::error::TaskError;
#[cfg(doc)]
use crate::executor::Executor;
use crate::pool::{call_of, encode_args, submit, ProcessPool};
use crate::state::{report_end, Completion, EndNotices, Shared, TaskOptions};

/// Where a task is in its life.
///
/// `Pending` (queued in the parent, no worker) → `Running` (sent to a worker; pid known) →
/// one of `Done`, `Failed`, `Cancelled`. It compares equal to its lowercase name.
///
/// # Examples
///
/// ```
/// use offload::TaskStatus;
///
/// assert_eq!(TaskStatus::Done, "done");
/// assert_eq!(TaskStatus::Pending.to_string(), "pending");
/// assert!(TaskStatus::Cancelled.is_finished());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskStatus {
    /// Queued in the parent; no worker has it yet.
    Pending,
    /// Sent to a worker, which is running it.
    Running,
    /// Finished with a value.
    Done,
    /// Finished without a value (panic, worker death, timeout, codec or protocol error).
    Failed,
    /// Cancelled before it finished.
    Cancelled,
}

impl TaskStatus {
    /// The lowercase name: `"pending"`, `"running"`, `"done"`, `"failed"` or `"cancelled"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Running => "running",
            TaskStatus::Done => "done",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    /// Whether the task has ended (`Done`, `Failed` or `Cancelled`).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            TaskStatus::Done | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for TaskStatus {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for TaskStatus {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A snapshot of everything known about a task, taken at one moment.
///
/// [`ProcessTask::info`] returns one; it has the same accessors as [`ProcessTask`] plus
/// [`id`](TaskInfo::id) and [`error`](TaskInfo::error), and stays valid after the task is gone.
///
/// # Examples
///
/// ```no_run
/// # offload::init();
/// fn fib(n: u64) -> u64 { if n < 2 { n } else { fib(n - 1) + fib(n - 2) } }
///
/// # futures_lite::future::block_on(async {
/// let pool = offload::ProcessPool::new(1)?;
/// let mut task = pool.spawn(fib, 25);
/// (&mut task).await?;
/// let info = task.info();
/// assert_eq!(info.status(), "done");
/// assert!(info.pid().is_some() && info.duration().is_some() && info.error().is_none());
/// # Ok::<(), offload::Error>(()) }).unwrap();
/// ```
#[derive(Clone)]
pub struct TaskInfo {
    id: u64,
    func_name: &'static str,
    submitted_at: Instant,
    meta: Meta,
}

/// The part of a task's metadata that changes over its life.
#[derive(Clone)]
pub(crate) struct Meta {
    pub(crate) status: TaskStatus,
    pub(crate) pid: Option<u32>,
    pub(crate) started_at: Option<Instant>,
    pub(crate) ended_at: Option<Instant>,
    pub(crate) error: Option<TaskError>,
}

impl Default for Meta {
    fn default() -> Self {
        Meta {
            status: TaskStatus::Pending,
            pid: None,
            started_at: None,
            ended_at: None,
            error: None,
        }
    }
}

impl Meta {
    fn duration(&self) -> Option<Duration> {
        Some(self.ended_at? - self.started_at?)
    }

    fn queued(&self, submitted_at: Instant) -> Option<Duration> {
        let left_queue = self.started_at.or(self.ended_at)?;
        Some(left_queue - submitted_at)
    }
}

impl TaskInfo {
    pub(crate) fn new(id: u64, func_name: &'static str, submitted_at: Instant, meta: Meta) -> Self {
        TaskInfo {
            id,
            func_name,
            submitted_at,
            meta,
        }
    }

    /// The task's id, unique within this process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The function's name (`fib`, `main::{{closure}}`).
    pub fn func_name(&self) -> &'static str {
        self.func_name
    }

    /// The status when the snapshot was taken.
    pub fn status(&self) -> TaskStatus {
        self.meta.status
    }

    /// The worker's pid, once the task was sent to a worker.
    pub fn pid(&self) -> Option<u32> {
        self.meta.pid
    }

    /// When the task was spawned.
    pub fn submitted_at(&self) -> Instant {
        self.submitted_at
    }

    /// When the task was sent to a worker.
    pub fn started_at(&self) -> Option<Instant> {
        self.meta.started_at
    }

    /// When the task ended.
    pub fn ended_at(&self) -> Option<Instant> {
        self.meta.ended_at
    }

    /// Run time: from `started_at` to `ended_at`, once both are known.
    pub fn duration(&self) -> Option<Duration> {
        self.meta.duration()
    }

    /// Wait time in the queue: from `submitted_at` until the task was sent to a worker (or
    /// ended without ever being sent). `None` while still queued.
    pub fn queued(&self) -> Option<Duration> {
        self.meta.queued(self.submitted_at)
    }

    /// Why the task failed, once it has.
    pub fn error(&self) -> Option<&TaskError> {
        self.meta.error.as_ref()
    }

    /// Writes `<{kind} func='..' status='..' pid=.. duration=..s>`.
    fn describe(&self, kind: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "<{kind} func='{}' status='{}' ",
            self.func_name, self.meta.status
        )?;
        match self.meta.pid {
            Some(pid) => write!(f, "pid={pid} ")?,
            None => f.write_str("pid='n/a' ")?,
        }
        match self.duration() {
            Some(d) => write!(f, "duration={:.4}s>", d.as_secs_f64()),
            None => f.write_str("duration='n/a'>"),
        }
    }
}

impl fmt::Debug for TaskInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.describe("TaskInfo", f)
    }
}

/// A task running (or queued to run) in a worker process: a future of its result that also
/// tells everything about the work.
///
/// Await it (directly, or as `(&mut task).await` to keep the metadata readable afterwards), or
/// call [`wait`](ProcessTask::wait) from synchronous code. The work starts when the task is
/// spawned, whether or not the handle is ever polled.
///
/// `ProcessTask` is `Unpin`, and `Send + Sync` when `T` is `Send`: it holds no reference to any
/// runtime. Its `Debug` output reads
/// `<ProcessTask func='fib' status='done' pid=84312 duration=0.0231s>`.
///
/// # Dropping and cancellation
///
/// **Dropping a `ProcessTask` cancels the task**, as [`cancel`](ProcessTask::cancel) does:
///
/// - a queued task is taken out of the queue: its function never runs;
/// - a running task's worker process receives `SIGTERM`, then `SIGKILL` if it is still alive
///   after the task's cancel timeout (5 s unless set with
///   [`TaskBuilder::cancel_timeout`]); it is reaped, and the pool starts a replacement at once.
///   No other task is disturbed;
/// - a finished task is left alone, and so is the worker that ran it.
///
/// To let a task run to the end without keeping its handle, call
/// [`detach`](ProcessTask::detach): the result is then discarded.
///
/// # Panics
///
/// Polling the future again after it returned `Ready` panics, as does [`wait`] after the
/// result was taken.
///
/// [`wait`]: ProcessTask::wait
///
/// # Examples
///
/// ```no_run
/// # offload::init();
/// fn fib(n: u64) -> u64 { if n < 2 { n } else { fib(n - 1) + fib(n - 2) } }
///
/// # futures_lite::future::block_on(async {
/// let pool = offload::ProcessPool::new(2)?;
/// let mut task = pool.spawn(fib, 30);
/// let v = (&mut task).await?;
/// assert_eq!(v, 832040);
/// println!("{task:?}"); // <ProcessTask func='fib' status='done' pid=84312 duration=0.0231s>
/// # Ok::<(), offload::Error>(()) }).unwrap();
/// ```
#[must_use = "dropping a ProcessTask cancels it; use `.detach()` to let it run"]
pub struct ProcessTask<T> {
    shared: Arc<Shared<T>>,
    /// The same task as the driver sees it, and where to report an end the handle causes.
    /// `None` for a task that never reached a pool.
    driver: Option<(Arc<dyn Completion>, EndNotices)>,
    detached: bool,
}

impl<T> ProcessTask<T> {
    pub(crate) fn new(
        shared: Arc<Shared<T>>,
        driver: Option<(Arc<dyn Completion>, EndNotices)>,
    ) -> Self {
        ProcessTask {
            shared,
            driver,
            detached: false,
        }
    }

    /// The task's id, unique within this process.
    pub fn id(&self) -> u64 {
        self.shared.id()
    }

    /// The function's name, from its type: `fib`, or `main::{{closure}}` for a closure.
    pub fn func_name(&self) -> &'static str {
        self.shared.func_name()
    }

    /// The current status.
    pub fn status(&self) -> TaskStatus {
        self.shared.with_meta(|meta| meta.status)
    }

    /// The pid of the worker process running the task: `Some` from the moment it is sent to a
    /// worker, `None` while queued (and for a task that ended without ever running).
    pub fn pid(&self) -> Option<u32> {
        self.shared.with_meta(|meta| meta.pid)
    }

    /// When the task was spawned.
    pub fn submitted_at(&self) -> Instant {
        self.shared.submitted_at()
    }

    /// When the task was sent to a worker.
    pub fn started_at(&self) -> Option<Instant> {
        self.shared.with_meta(|meta| meta.started_at)
    }

    /// When the task ended.
    pub fn ended_at(&self) -> Option<Instant> {
        self.shared.with_meta(|meta| meta.ended_at)
    }

    /// Run time, without time spent queued: `ended_at - started_at`, once the task has ended.
    pub fn duration(&self) -> Option<Duration> {
        self.shared.with_meta(Meta::duration)
    }

    /// Time spent queued before a worker took the task; `None` while still queued.
    pub fn queued(&self) -> Option<Duration> {
        let submitted_at = self.shared.submitted_at();
        self.shared.with_meta(|meta| meta.queued(submitted_at))
    }

    /// A snapshot of all the metadata at once.
    pub fn info(&self) -> TaskInfo {
        self.shared.snapshot()
    }

    /// Cancels the task; returns whether it did anything. Never blocks.
    ///
    /// - A queued task is taken out of the queue: its function never runs.
    /// - A running task's worker receives `SIGTERM` through a pidfd, and `SIGKILL` after the
    ///   task's cancel timeout if it is still alive; it is reaped and replaced. That happens
    ///   on the pool's thread: this call only starts it (see
    ///   [`cancel_and_wait`](ProcessTask::cancel_and_wait) to wait for it).
    /// - A finished task is left alone: `cancel` returns `false` and never touches the worker
    ///   that ran it.
    ///
    /// A cancelled task's status is `cancelled` at once, with its end time set, and awaiting
    /// it gives [`TaskError::Cancelled`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # offload::init();
    /// fn spin() -> u64 { loop { std::hint::spin_loop() } }
    ///
    /// # futures_lite::future::block_on(async {
    /// let pool = offload::ProcessPool::new(1)?;
    /// let mut task = pool.spawn(spin, ());
    /// assert!(task.cancel());
    /// assert_eq!(task.status(), "cancelled");
    /// assert!((&mut task).await.unwrap_err().is_cancelled());
    /// assert!(!task.cancel(), "already over");
    /// # Ok::<(), offload::Error>(()) }).unwrap();
    /// ```
    pub fn cancel(&self) -> bool {
        let Some((task, notices)) = &self.driver else {
            return false;
        };
        if !task.cancel() {
            return false;
        }
        notify_end(task, notices);
        true
    }

    /// Cancels the task and returns once no process works on it any more: for a running
    /// task, once its worker has exited and was reaped (after at most the cancel timeout).
    /// Returns whether it cancelled anything, like [`cancel`](ProcessTask::cancel).
    ///
    /// # Cancel safety
    ///
    /// Dropping the returned future does not undo the cancellation; it only stops waiting.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # offload::init();
    /// fn spin() -> u64 { loop { std::hint::spin_loop() } }
    ///
    /// # futures_lite::future::block_on(async {
    /// let pool = offload::ProcessPool::new(1)?;
    /// let task = pool.spawn(spin, ());
    /// assert!(task.cancel_and_wait().await);
    /// // the worker that was spinning is gone; the CPU is free
    /// # Ok::<(), offload::Error>(()) }).unwrap();
    /// ```
    pub async fn cancel_and_wait(&self) -> bool {
        let acted = self.cancel();
        loop {
            if self.shared.is_settled() {
                return acted;
            }
            let listener = self.shared.changed_event().listen();
            if self.shared.is_settled() {
                return acted;
            }
            listener.await;
        }
    }

    /// Lets the task run to the end without its handle; the result is discarded.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # offload::init();
    /// fn write_report(day: u32) { /* … */ }
    ///
    /// let pool = offload::ProcessPool::new(1)?;
    /// pool.spawn(write_report, 7).detach(); // runs on; dropping it would cancel it
    /// # Ok::<(), offload::Error>(())
    /// ```
    pub fn detach(mut self) {
        self.detached = true;
    }

    /// Blocks the current thread until the task ends and returns its result.
    ///
    /// For synchronous code: it needs no runtime, and it does not deadlock, since the pool's
    /// own thread does the work of driving the task.
    ///
    /// # Errors
    ///
    /// The task's [`TaskError`], as when awaiting.
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
    /// let pool = offload::ProcessPool::new(1)?;
    /// assert_eq!(pool.spawn(square, 12).wait()?, 144);
    /// # Ok::<(), offload::Error>(())
    /// ```
    pub fn wait(mut self) -> Result<T, TaskError> {
        crate::driver::block_on("ProcessTask::wait", &mut self)
    }

    /// The result if the task has ended, without blocking; `None` while it is queued or
    /// running. Once it returned `Some`, the result is taken: later calls return `None`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # offload::init();
    /// fn square(x: u64) -> u64 { x * x }
    ///
    /// let pool = offload::ProcessPool::new(1)?;
    /// let mut task = pool.spawn(square, 7);
    /// let result = loop {
    ///     if let Some(result) = task.try_wait() {
    ///         break result;
    ///     }
    ///     // ... other work of a synchronous loop ...
    /// };
    /// assert_eq!(result?, 49);
    /// # Ok::<(), offload::Error>(())
    /// ```
    pub fn try_wait(&mut self) -> Option<Result<T, TaskError>> {
        self.shared.try_take()
    }

    /// [`cancel_and_wait`](ProcessTask::cancel_and_wait) for synchronous code: cancels the
    /// task and blocks until no process works on it any more.
    ///
    /// # Panics
    ///
    /// When called from a task callback, which runs on a pool's own thread.
    pub fn cancel_and_wait_blocking(&self) -> bool {
        crate::driver::block_on(
            "ProcessTask::cancel_and_wait_blocking",
            self.cancel_and_wait(),
        )
    }
}

/// Tells the driver that `task` ended away from its thread, so that it runs the callbacks;
/// runs them here when there is no driver any more.
pub(crate) fn notify_end(task: &Arc<dyn Completion>, notices: &EndNotices) {
    if notices.try_send(task.clone()).is_err() {
        report_end(&**task);
    }
}

impl<T> Drop for ProcessTask<T> {
    fn drop(&mut self) {
        if !self.detached {
            self.cancel();
        }
    }
}

impl<T> Future for ProcessTask<T> {
    type Output = Result<T, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.shared.poll_outcome(cx.waker()) {
            Some(outcome) => Poll::Ready(outcome),
            None => Poll::Pending,
        }
    }
}

impl<T> fmt::Debug for ProcessTask<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.info().describe("ProcessTask", f)
    }
}

/// Per-task options: build one with [`ProcessPool::task`] (or [`Executor::task`]), set options, then
/// [`spawn`](TaskBuilder::spawn) (as many tasks as wanted, all with the same options).
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
    pool: Result<ProcessPool, TaskError>,
    options: TaskOptions,
    marker: PhantomData<fn(F) -> M>,
}

impl<F: TaskFn<M>, M> TaskBuilder<F, M> {
    pub(crate) fn new(pool: Result<ProcessPool, TaskError>) -> Self {
        TaskBuilder {
            pool,
            options: TaskOptions::default(),
            marker: PhantomData,
        }
    }

    /// Limits the task's run time: once it has run for `timeout` (counted from the moment a
    /// worker takes it, not from spawning), its worker is stopped as for a cancel and the task
    /// fails with [`TaskError::TimedOut`] (status `failed`).
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
    /// panics is logged (through the `log` crate) and changes nothing else.
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

    /// Spawns `f(args)` with these options; see [`ProcessPool::spawn`].
    pub fn spawn(&self, args: F::Args) -> ProcessTask<F::Output> {
        submit(
            self.pool.as_ref().map_err(Clone::clone),
            call_of::<F, M>(self.options.clone()),
            encode_args(&args),
        )
    }
}

impl<F, M> fmt::Debug for TaskBuilder<F, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskBuilder")
            .field("func", &crate::entry::func_name::<F>())
            .field("timeout", &self.options.timeout)
            .field("cancel_timeout", &self.options.cancel_timeout)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Completion;

    fn task() -> (Arc<Shared<u64>>, ProcessTask<u64>) {
        let shared = Arc::new(Shared::new(
            1,
            "fib",
            crate::state::decode_value,
            TaskOptions::default(),
            None,
        ));
        (shared.clone(), ProcessTask::new(shared, None))
    }

    #[test]
    fn debug_shows_na_until_known() {
        let (_shared, task) = task();
        assert_eq!(
            format!("{task:?}"),
            "<ProcessTask func='fib' status='pending' pid='n/a' duration='n/a'>"
        );
    }

    #[test]
    fn debug_after_completion_has_pid_and_four_decimals() {
        let (shared, task) = task();
        assert!(shared.start(4242));
        shared.replied(Ok(&rmp_serde::to_vec(&5u64).unwrap()), Instant::now());
        let text = format!("{task:?}");
        assert!(
            text.starts_with("<ProcessTask func='fib' status='done' pid=4242 duration=0.0"),
            "{text}"
        );
        let secs = text.rsplit("duration=").next().unwrap();
        assert_eq!(secs.len(), "0.0000s>".len(), "{text}");
        assert_eq!(task.wait().unwrap(), 5);
    }

    #[test]
    fn finish_happens_once_and_start_after_end_is_refused() {
        let (shared, task) = task();
        assert!(shared.fail(TaskError::Cancelled));
        shared.replied(Ok(&rmp_serde::to_vec(&5u64).unwrap()), Instant::now());
        assert!(!shared.start(1));
        assert_eq!(task.status(), "cancelled");
        assert_eq!(task.pid(), None);
        assert!(task.queued().is_some() && task.duration().is_none());
        assert!(shared.is_settled(), "it never reached a worker");
        assert!(task.wait().unwrap_err().is_cancelled());
    }

    #[test]
    fn undecodable_result_fails_with_decode() {
        let (shared, task) = task();
        assert!(shared.start(7));
        shared.replied(Ok(b"\xc1"), Instant::now());
        assert_eq!(task.status(), TaskStatus::Failed);
        assert!(!shared.is_settled(), "its worker is the driver's to settle");
        assert!(matches!(task.wait(), Err(TaskError::Decode(_))));
    }
}
