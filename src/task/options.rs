//! Per-task options, set with a [`TaskBuilder`](crate::TaskBuilder).

use std::sync::Arc;
use std::time::Duration;

use super::info::TaskInfo;

/// A task callback: runs on the pool's driver thread with a snapshot of the task.
pub(crate) type Callback = Arc<dyn Fn(&TaskInfo) + Send + Sync>;

/// The default grace between `SIGTERM` and `SIGKILL` when a running task is stopped.
pub(crate) const DEFAULT_CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// Per-task options.
#[derive(Clone)]
pub(crate) struct TaskOptions {
    /// The longest the task may run once a worker took it.
    pub(crate) timeout: Option<Duration>,
    /// The grace between `SIGTERM` and `SIGKILL` when its worker is stopped.
    pub(crate) cancel_timeout: Duration,
    /// Runs when the task is sent to a worker.
    pub(crate) on_start: Option<Callback>,
    /// Runs when the task returned its value, before the value is handed out.
    pub(crate) on_done: Option<Callback>,
    /// Runs when the task failed or was cancelled, before the error is handed out.
    pub(crate) on_error: Option<Callback>,
    /// Runs when the task reports progress.
    pub(crate) on_progress: Option<Callback>,
    /// Whether the task's fds 1 and 2 are captured.
    pub(crate) capture: bool,
    /// For a stream: how many items the worker may run ahead of the consumer.
    pub(crate) window: Option<u64>,
}

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions {
            timeout: None,
            cancel_timeout: DEFAULT_CANCEL_TIMEOUT,
            on_start: None,
            on_done: None,
            on_error: None,
            on_progress: None,
            capture: false,
            window: None,
        }
    }
}
