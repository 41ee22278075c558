//! What the optional `tracing` feature reports: a span per task (`id`, `func`, `pid`) and
//! events for spawn, start, finish, worker stops and worker replacements. Without the feature
//! everything here compiles to nothing.

#[cfg(feature = "tracing")]
use std::time::Duration;

#[cfg(feature = "tracing")]
use crate::error::TaskError;

/// The span of one task.
pub(crate) struct TaskSpan {
    #[cfg(feature = "tracing")]
    span: tracing::Span,
}

impl TaskSpan {
    /// Opens the span of a task being spawned, and reports the spawn.
    pub(crate) fn spawned(id: u64, func: &'static str) -> TaskSpan {
        #[cfg(feature = "tracing")]
        {
            let span = tracing::info_span!(
                "offload_task",
                id,
                func,
                pid = tracing::field::Empty,
                host = tracing::field::Empty
            );
            span.in_scope(|| tracing::debug!("task spawned"));
            TaskSpan { span }
        }
        #[cfg(not(feature = "tracing"))]
        {
            let _ = (id, func);
            TaskSpan {}
        }
    }

    /// The task was sent to worker `pid` on `host` (`None`: this machine).
    #[cfg(feature = "tracing")]
    pub(crate) fn started(&self, pid: u32, host: Option<&str>) {
        self.span.record("pid", pid);
        if let Some(host) = host {
            self.span.record("host", host);
        }
        self.span
            .in_scope(|| tracing::debug!(pid, host, "task started"));
    }

    /// The task ended with `status`, after running for `duration`, or failed with `error`.
    #[cfg(feature = "tracing")]
    pub(crate) fn finished(
        &self,
        status: &str,
        duration: Option<Duration>,
        error: Option<&TaskError>,
    ) {
        self.span.in_scope(|| match error {
            None => tracing::debug!(status, ?duration, "task finished"),
            Some(error) => tracing::debug!(status, %error, "task finished"),
        });
    }
}

/// A worker is being stopped (`SIGTERM`, grace, `SIGKILL`) for `reason`.
pub(crate) fn worker_stopped(pid: u32, reason: &str) {
    #[cfg(feature = "tracing")]
    tracing::debug!(pid, reason, "offload worker stopped");
    #[cfg(not(feature = "tracing"))]
    let _ = (pid, reason);
}

/// Worker `pid` took the place of one that exited, died, was stopped or retired.
pub(crate) fn worker_replaced(pid: u32) {
    #[cfg(feature = "tracing")]
    tracing::debug!(pid, "offload worker replaced");
    #[cfg(not(feature = "tracing"))]
    let _ = pid;
}
