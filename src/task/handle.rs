//! [`ProcessTask`]: the handle of one task, a future of its result that also tells everything
//! about the work.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::blocking::block_on;
use super::info::{Meta, TaskInfo};
use super::report::{Progress, TaskOutput};
use super::shared::{report_end, AnyTask, EndNotices, Shared};
use super::status::TaskStatus;
use crate::error::TaskError;
use crate::sys::wait;

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
///   [`TaskBuilder::cancel_timeout`](crate::TaskBuilder::cancel_timeout)); it is reaped, and the pool starts a replacement at once.
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
    driver: Option<(Arc<dyn AnyTask>, EndNotices)>,
    detached: bool,
}

impl<T> ProcessTask<T> {
    pub(crate) fn new(
        shared: Arc<Shared<T>>,
        driver: Option<(Arc<dyn AnyTask>, EndNotices)>,
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

    /// The host of the worker running the task: `Some` for a worker started by a
    /// [`Launcher`](crate::Launcher) other than the local one (as the worker reported it),
    /// `None` for a local worker and while queued.
    pub fn host(&self) -> Option<String> {
        self.shared
            .with_meta(|meta| meta.host.as_deref().map(str::to_owned))
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

    /// The latest progress the task reported with [`offload::progress`](crate::progress);
    /// `None` until it reports.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # offload::init();
    /// fn count(n: u64) -> u64 {
    ///     for i in 0..n {
    ///         offload::progress(i + 1, n);
    ///     }
    ///     n
    /// }
    ///
    /// # futures_lite::future::block_on(async {
    /// let pool = offload::ProcessPool::new(1)?;
    /// let mut task = pool.spawn(count, 100);
    /// (&mut task).await?;
    /// assert_eq!(task.progress(), Some(offload::Progress { done: 100, total: 100 }));
    /// # Ok::<(), offload::Error>(()) }).unwrap();
    /// ```
    pub fn progress(&self) -> Option<Progress> {
        self.shared.with_meta(|meta| meta.progress)
    }

    /// What the task wrote to its fds 1 and 2, if it was spawned with
    /// [`capture_output`](crate::TaskBuilder::capture_output): all of it once the task has
    /// ended, what has arrived so far while it runs; `None` without capture. See
    /// [`TaskOutput`].
    pub fn output(&self) -> Option<TaskOutput> {
        self.shared.output()
    }

    /// The run-time limit the task was spawned with, if any.
    pub fn timeout(&self) -> Option<Duration> {
        self.shared.options().timeout
    }

    /// The grace between `SIGTERM` and `SIGKILL` the task was spawned with.
    pub fn cancel_timeout(&self) -> Duration {
        self.shared.options().cancel_timeout
    }

    /// The arguments the task was spawned with, printed from their encoding; see
    /// [`TaskInfo::args`].
    pub fn args(&self) -> Option<String> {
        self.info().args()
    }

    /// Whether the task has ended and its result is ready: awaiting it, or
    /// [`try_take`](ProcessTask::try_take), returns at once (also once the result was taken).
    ///
    /// The status turns `done`, `failed` or `cancelled` a moment before, when the task ends;
    /// its result is handed out once its `on_done` or `on_error` callback has run.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # offload::init();
    /// fn square(x: u64) -> u64 { x * x }
    ///
    /// let pool = offload::ProcessPool::new(1)?;
    /// let task = pool.spawn(square, 3);
    /// while !task.is_finished() {
    ///     std::thread::yield_now(); // other work of a synchronous loop
    /// }
    /// assert_eq!(task.wait()?, 9);
    /// # Ok::<(), offload::Error>(())
    /// ```
    pub fn is_finished(&self) -> bool {
        self.shared.is_released()
    }

    /// A snapshot of all the metadata at once.
    pub fn info(&self) -> TaskInfo {
        self.shared.snapshot()
    }

    /// Cancels the task; returns whether it did anything. Never blocks.
    ///
    /// - A queued task is taken out of the queue: its function never runs.
    /// - A running task's worker process group receives `SIGTERM` (`SIGKILL` for a zero
    ///   cancel timeout), and `SIGKILL` after the task's cancel timeout if it is still alive;
    ///   it is reaped and replaced. When the worker holds no other job (nothing was sent
    ///   ahead to it), the first signal is sent by this call, on the caller's thread, before
    ///   it returns, so the work stops even while the pool's thread is busy (a slow
    ///   callback); the rest happens on the pool's thread (see
    ///   [`cancel_and_wait`](ProcessTask::cancel_and_wait) to wait for it).
    /// - A finished task is left alone: `cancel` returns `false` and never touches the worker
    ///   that ran it.
    ///
    /// A cancelled task's status is `cancelled` at once, with its end time set, and awaiting
    /// it gives [`TaskError::Cancelled`] (once its `on_error` callback has run).
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
        hand_end_to_driver(task, notices);
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
        wait::until(self.shared.changed_event(), || self.shared.is_settled()).await;
        acted
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
        block_on("ProcessTask::wait", &mut self)
    }

    /// Takes the result if the task has ended, without blocking; `None` while it is queued or
    /// running. Once it returned `Some`, the result is taken: later calls return `None`, and
    /// awaiting or [`wait`](ProcessTask::wait)ing the task panics (see
    /// [`is_finished`](ProcessTask::is_finished), which stays `true`).
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
    ///     if let Some(result) = task.try_take() {
    ///         break result;
    ///     }
    ///     // ... other work of a synchronous loop ...
    /// };
    /// assert_eq!(result?, 49);
    /// # Ok::<(), offload::Error>(())
    /// ```
    pub fn try_take(&mut self) -> Option<Result<T, TaskError>> {
        self.shared.try_take()
    }

    /// The former name of [`try_take`](ProcessTask::try_take): unlike
    /// `std::process::Child::try_wait`, it takes the result, so it gives it only once.
    #[deprecated(since = "0.1.0", note = "renamed `try_take`: it takes the result")]
    pub fn try_wait(&mut self) -> Option<Result<T, TaskError>> {
        self.try_take()
    }

    /// [`cancel_and_wait`](ProcessTask::cancel_and_wait) for synchronous code: cancels the
    /// task and blocks until no process works on it any more.
    ///
    /// # Panics
    ///
    /// When called from a task callback, which runs on a pool's own thread.
    pub fn cancel_and_wait_blocking(&self) -> bool {
        block_on(
            "ProcessTask::cancel_and_wait_blocking",
            self.cancel_and_wait(),
        )
    }
}

/// Hands the end of `task`, which finished away from the driver's thread, to the driver to
/// report; reports it here when there is no driver any more.
pub(crate) fn hand_end_to_driver(task: &Arc<dyn AnyTask>, notices: &EndNotices) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::options::TaskOptions;
    use crate::task::shared::decode_value;

    fn task() -> (Arc<Shared<u64>>, ProcessTask<u64>) {
        let shared = Arc::new(Shared::new(
            1,
            "fib",
            None,
            decode_value,
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
        assert!(shared.start(4242, None, None));
        shared.finish_with_reply(Ok(&rmp_serde::to_vec(&5u64).unwrap()), Instant::now());
        report_end(&*shared);
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
        assert!(shared.finish_with_error(TaskError::Cancelled));
        shared.finish_with_reply(Ok(&rmp_serde::to_vec(&5u64).unwrap()), Instant::now());
        report_end(&*shared);
        assert!(!shared.start(1, None, None));
        assert_eq!(task.status(), "cancelled");
        assert_eq!(task.pid(), None);
        assert!(task.queued().is_some() && task.duration().is_none());
        assert!(shared.is_settled(), "it never reached a worker");
        assert!(task.wait().unwrap_err().is_cancelled());
    }

    #[test]
    fn undecodable_result_fails_with_decode() {
        let (shared, task) = task();
        assert!(shared.start(7, None, None));
        shared.finish_with_reply(Ok(b"\xc1"), Instant::now());
        report_end(&*shared);
        assert_eq!(task.status(), TaskStatus::Failed);
        assert!(!shared.is_settled(), "its worker is the driver's to settle");
        assert!(matches!(task.wait(), Err(TaskError::Decode(_))));
    }
}

#[cfg(test)]
mod release_tests {
    use super::*;
    use crate::task::options::TaskOptions;
    use crate::task::shared::decode_value;

    #[test]
    fn the_result_is_handed_out_only_once_the_end_callback_ran() {
        let options = TaskOptions {
            on_done: Some(Arc::new(|_: &TaskInfo| {})),
            ..TaskOptions::default()
        };
        let shared = Arc::new(Shared::new(
            2,
            "fib",
            None,
            decode_value::<u64>,
            options,
            None,
        ));
        let mut task = ProcessTask::new(shared.clone(), None);
        assert!(shared.start(1, None, None));
        shared.finish_with_reply(Ok(&rmp_serde::to_vec(&8u64).unwrap()), Instant::now());
        assert_eq!(task.status(), "done", "the status tells at once");
        assert!(
            !task.is_finished() && task.try_take().is_none(),
            "not before the report"
        );
        report_end(&*shared);
        assert!(task.is_finished());
        assert_eq!(task.try_take().unwrap().unwrap(), 8);
        assert!(task.is_finished() && task.try_take().is_none());
    }

    #[test]
    fn without_an_end_callback_the_result_is_handed_out_at_once() {
        let shared = Arc::new(Shared::new(
            4,
            "fib",
            None,
            decode_value::<u64>,
            TaskOptions::default(),
            None,
        ));
        let mut task = ProcessTask::new(shared.clone(), None);
        assert!(shared.start(1, None, None));
        shared.finish_with_reply(Ok(&rmp_serde::to_vec(&8u64).unwrap()), Instant::now());
        assert_eq!(task.try_take().unwrap().unwrap(), 8);
        report_end(&*shared); // records the end; nothing more to release
        assert!(task.is_finished());
    }

    #[test]
    fn a_result_whose_deserialize_panics_fails_with_decode() {
        struct Explosive;
        impl<'de> serde::Deserialize<'de> for Explosive {
            fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
                panic!("no deserializing this")
            }
        }
        let shared = Arc::new(Shared::new(
            3,
            "explosive",
            None,
            decode_value::<Explosive>,
            TaskOptions::default(),
            None,
        ));
        let task = ProcessTask::new(shared.clone(), None);
        assert!(shared.start(1, None, None));
        shared.finish_with_reply(Ok(&[0xc0]), Instant::now());
        report_end(&*shared);
        match task.wait() {
            Err(TaskError::Decode(msg)) => assert!(msg.contains("no deserializing this"), "{msg}"),
            other => panic!("{:?}", other.err()),
        }
    }
}
