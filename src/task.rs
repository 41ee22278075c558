//! The task handle: [`ProcessTask`], its [`TaskStatus`] and [`TaskInfo`] snapshot.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::error::TaskError;

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
struct Meta {
    status: TaskStatus,
    pid: Option<u32>,
    started_at: Option<Instant>,
    ended_at: Option<Instant>,
    error: Option<TaskError>,
}

impl TaskInfo {
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
        Some(self.meta.ended_at? - self.meta.started_at?)
    }

    /// Wait time in the queue: from `submitted_at` until the task was sent to a worker (or
    /// ended without ever being sent). `None` while still queued.
    pub fn queued(&self) -> Option<Duration> {
        let left_queue = self.meta.started_at.or(self.meta.ended_at)?;
        Some(left_queue - self.submitted_at)
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

/// What the driver needs from a task, without knowing its result type.
pub(crate) trait Completion: Send + Sync {
    /// Marks the task as sent to worker `pid`. Returns `false` if it already ended (it was
    /// cancelled while queued), in which case it must not be sent.
    fn start(&self, pid: u32) -> bool;
    /// Ends the task with the encoded result `payload`.
    fn succeed(&self, payload: &[u8]);
    /// Ends the task with `error`.
    fn fail(&self, error: TaskError);
}

/// The state a [`ProcessTask`] shares with the driver.
pub(crate) struct Shared<T> {
    id: u64,
    func_name: &'static str,
    submitted_at: Instant,
    state: Mutex<State<T>>,
}

struct State<T> {
    meta: Meta,
    /// The outcome, until the handle takes it.
    outcome: Option<Result<T, TaskError>>,
    /// Whether the handle already took the outcome.
    taken: bool,
    waker: Option<Waker>,
}

impl<T> Shared<T> {
    pub(crate) fn new(id: u64, func_name: &'static str) -> Self {
        Shared {
            id,
            func_name,
            submitted_at: Instant::now(),
            state: Mutex::new(State {
                meta: Meta {
                    status: TaskStatus::Pending,
                    pid: None,
                    started_at: None,
                    ended_at: None,
                    error: None,
                },
                outcome: None,
                taken: false,
                waker: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing panics while the lock is held, but a poisoned lock must not spread panics.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn info(&self) -> TaskInfo {
        TaskInfo {
            id: self.id,
            func_name: self.func_name,
            submitted_at: self.submitted_at,
            meta: self.lock().meta.clone(),
        }
    }

    /// Ends the task once; later calls are ignored.
    pub(crate) fn finish(&self, outcome: Result<T, TaskError>) {
        let waker = {
            let mut state = self.lock();
            if state.meta.status.is_finished() {
                return;
            }
            let meta = &mut state.meta;
            meta.ended_at = Some(Instant::now());
            match &outcome {
                Ok(_) => meta.status = TaskStatus::Done,
                Err(error) => {
                    meta.status = match error {
                        TaskError::Cancelled => TaskStatus::Cancelled,
                        _ => TaskStatus::Failed,
                    };
                    meta.error = Some(error.clone());
                }
            }
            state.outcome = Some(outcome);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T: DeserializeOwned + Send> Completion for Shared<T> {
    fn start(&self, pid: u32) -> bool {
        let mut state = self.lock();
        if state.meta.status != TaskStatus::Pending {
            return false;
        }
        state.meta.status = TaskStatus::Running;
        state.meta.pid = Some(pid);
        state.meta.started_at = Some(Instant::now());
        true
    }

    fn succeed(&self, payload: &[u8]) {
        let outcome = rmp_serde::from_slice(payload)
            .map_err(|e| TaskError::Decode(format!("result of `{}`: {e}", self.func_name)));
        self.finish(outcome);
    }

    fn fail(&self, error: TaskError) {
        self.finish(Err(error));
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
/// # Dropping
///
/// Dropping the handle does not stop the work: the task runs to the end in its worker and its
/// result is discarded.
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
/// assert!(task.pid().is_some()); // sent to an idle worker at once
/// let v = (&mut task).await?;
/// assert_eq!(v, 832040);
/// println!("{task:?}"); // <ProcessTask func='fib' status='done' pid=84312 duration=0.0231s>
/// # Ok::<(), offload::Error>(()) }).unwrap();
/// ```
#[must_use = "a ProcessTask does nothing useful unless awaited or waited on"]
pub struct ProcessTask<T> {
    shared: Arc<Shared<T>>,
}

impl<T> ProcessTask<T> {
    pub(crate) fn new(shared: Arc<Shared<T>>) -> Self {
        ProcessTask { shared }
    }

    /// The task's id, unique within this process.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// The function's name, from its type: `fib`, or `main::{{closure}}` for a closure.
    pub fn func_name(&self) -> &'static str {
        self.shared.func_name
    }

    /// The current status.
    pub fn status(&self) -> TaskStatus {
        self.shared.lock().meta.status
    }

    /// The pid of the worker process running the task: `Some` from the moment it is sent to a
    /// worker, `None` while queued (and for a task that ended without ever running).
    pub fn pid(&self) -> Option<u32> {
        self.shared.lock().meta.pid
    }

    /// When the task was spawned.
    pub fn submitted_at(&self) -> Instant {
        self.shared.submitted_at
    }

    /// When the task was sent to a worker.
    pub fn started_at(&self) -> Option<Instant> {
        self.shared.lock().meta.started_at
    }

    /// When the task ended.
    pub fn ended_at(&self) -> Option<Instant> {
        self.shared.lock().meta.ended_at
    }

    /// Run time, without time spent queued: `ended_at - started_at`, once the task has ended.
    pub fn duration(&self) -> Option<Duration> {
        self.info().duration()
    }

    /// Time spent queued before a worker took the task; `None` while still queued.
    pub fn queued(&self) -> Option<Duration> {
        self.info().queued()
    }

    /// A snapshot of all the metadata at once.
    pub fn info(&self) -> TaskInfo {
        self.shared.info()
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
    pub fn wait(self) -> Result<T, TaskError> {
        futures_lite::future::block_on(self)
    }
}

impl<T> Future for ProcessTask<T> {
    type Output = Result<T, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.shared.lock();
        if let Some(outcome) = state.outcome.take() {
            state.taken = true;
            return Poll::Ready(outcome);
        }
        assert!(!state.taken, "ProcessTask polled after it returned Ready");
        match &mut state.waker {
            Some(waker) => waker.clone_from(cx.waker()),
            None => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
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

    fn task() -> (Arc<Shared<u64>>, ProcessTask<u64>) {
        let shared = Arc::new(Shared::new(1, "fib"));
        (shared.clone(), ProcessTask::new(shared))
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
        shared.succeed(&rmp_serde::to_vec(&5u64).unwrap());
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
        shared.fail(TaskError::Cancelled);
        shared.succeed(&rmp_serde::to_vec(&5u64).unwrap());
        assert!(!shared.start(1));
        assert_eq!(task.status(), "cancelled");
        assert_eq!(task.pid(), None);
        assert!(task.queued().is_some() && task.duration().is_none());
        assert!(task.wait().unwrap_err().is_cancelled());
    }

    #[test]
    fn undecodable_result_fails_with_decode() {
        let (shared, task) = task();
        assert!(shared.start(7));
        shared.succeed(b"\xc1");
        assert_eq!(task.status(), TaskStatus::Failed);
        assert!(matches!(task.wait(), Err(TaskError::Decode(_))));
    }
}
