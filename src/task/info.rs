//! [`TaskInfo`]: a snapshot of a task's metadata.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::args::EncodedArgs;
use super::options::TaskOptions;
use super::report::Progress;
use super::status::TaskStatus;
use crate::error::TaskError;

/// A snapshot of everything known about a task, taken at one moment.
///
/// [`ProcessTask::info`](crate::ProcessTask::info) returns one; it has the same accessors as [`ProcessTask`](crate::ProcessTask) plus
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
    timeout: Option<Duration>,
    cancel_timeout: Duration,
    args: Option<EncodedArgs>,
    meta: Meta,
}

/// The part of a task's metadata that changes over its life.
#[derive(Clone)]
pub(crate) struct Meta {
    pub(crate) status: TaskStatus,
    /// The worker's pid on its host, from the moment the task is sent to it.
    pub(crate) pid: Option<u32>,
    /// The worker's host, for a remote worker.
    pub(crate) host: Option<Arc<str>>,
    /// When the task was sent to a worker.
    pub(crate) started_at: Option<Instant>,
    /// When the task finished (for a reply: when it arrived).
    pub(crate) ended_at: Option<Instant>,
    /// Why it failed, once it has.
    pub(crate) error: Option<TaskError>,
    /// The latest progress it reported.
    pub(crate) progress: Option<Progress>,
}

impl Default for Meta {
    fn default() -> Self {
        Meta {
            status: TaskStatus::Pending,
            pid: None,
            host: None,
            started_at: None,
            ended_at: None,
            error: None,
            progress: None,
        }
    }
}

impl Meta {
    pub(crate) fn duration(&self) -> Option<Duration> {
        Some(self.ended_at? - self.started_at?)
    }

    pub(crate) fn queued(&self, submitted_at: Instant) -> Option<Duration> {
        let left_queue = self.started_at.or(self.ended_at)?;
        Some(left_queue - submitted_at)
    }
}

/// What a task was started with, which its metadata gives back.
#[derive(Clone)]
pub(crate) struct Started {
    /// Unique within this process.
    pub(crate) id: u64,
    pub(crate) func_name: &'static str,
    pub(crate) submitted_at: Instant,
    pub(crate) args: Option<EncodedArgs>,
}

impl TaskInfo {
    pub(crate) fn new(started: &Started, options: &TaskOptions, meta: Meta) -> Self {
        TaskInfo {
            id: started.id,
            func_name: started.func_name,
            submitted_at: started.submitted_at,
            timeout: options.timeout,
            cancel_timeout: options.cancel_timeout,
            args: started.args.clone(),
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

    /// The host of the worker that took the task, as the worker reported it: `Some` for a
    /// worker started by a [`Launcher`](crate::Launcher) other than the local one, `None` for
    /// a local worker (and while queued).
    pub fn host(&self) -> Option<&str> {
        self.meta.host.as_deref()
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

    /// The latest progress the task reported with [`offload::progress`](crate::progress), if
    /// it reported any. In an [`on_progress`](crate::TaskBuilder::on_progress) callback of a
    /// [`map`](crate::TaskBuilder::map), the progress of the whole map.
    pub fn progress(&self) -> Option<Progress> {
        self.meta.progress
    }

    /// The same snapshot with `progress` instead (a `map`'s own, for its callback).
    pub(crate) fn with_progress(mut self, progress: Progress) -> Self {
        self.meta.progress = Some(progress);
        self
    }

    /// The run-time limit the task was spawned with ([`TaskBuilder::timeout`]), if any.
    ///
    /// [`TaskBuilder::timeout`]: crate::TaskBuilder::timeout
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The grace between `SIGTERM` and `SIGKILL` the task was spawned with
    /// ([`TaskBuilder::cancel_timeout`]).
    ///
    /// [`TaskBuilder::cancel_timeout`]: crate::TaskBuilder::cancel_timeout
    pub fn cancel_timeout(&self) -> Duration {
        self.cancel_timeout
    }

    /// The arguments the task was spawned with, printed from their encoding: `30` for
    /// `spawn(fib, 30)`, `[1, 2]` for `spawn(add, (1, 2))`, `[[0, 1], [1, 2]]` for the items of a
    /// `map` chunk. Structs show as the list of their fields (as they are encoded), byte
    /// buffers as their length, and long texts or lists are cut (`…`). `None` for a task whose
    /// arguments could not be encoded.
    ///
    /// The encoded arguments are kept, without a copy, for as long as the task or a snapshot of
    /// it lives; they are printed only when this is called.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # offload::init();
    /// fn add(a: i64, b: i64) -> i64 { a + b }
    ///
    /// let pool = offload::ProcessPool::new(1)?;
    /// let task = pool.spawn(add, (1, 2));
    /// assert_eq!(task.info().args().as_deref(), Some("[1, 2]"));
    /// # Ok::<(), offload::Error>(())
    /// ```
    pub fn args(&self) -> Option<String> {
        self.args.as_ref().map(EncodedArgs::render)
    }

    /// Writes `<{kind} func='..' status='..' pid=.. duration=..s>`.
    pub(crate) fn describe(&self, kind: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
