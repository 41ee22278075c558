//! [`TaskStatus`]: where a task is in its life.

use std::fmt;

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
