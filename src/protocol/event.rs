//! What a running task reports beside its result, as the parent reads it: the events of
//! the worker's `Progress`, `Items`, `Output` and `Log` frames, and the credit a stream's
//! consumer grants back.

use event_listener::EventListener;
use serde::{Deserialize, Serialize};

/// One report of a running task, borrowed from the frame it came in.
pub(crate) enum Report<'a> {
    /// How far it is; the latest report wins.
    Progress { done: u64, total: u64 },
    /// `count` stream items, each a `u32` length and its rmp-serde encoding.
    Items { count: u32, payload: &'a [u8] },
    /// Bytes it wrote to `fd` (1 or 2) while its output is captured, and how many more it
    /// wrote there that were dropped over the cap.
    Output { fd: u8, bytes: &'a [u8], cut: u64 },
}

/// Where the reports of a running task go, on the driver's thread.
pub(crate) trait Reports {
    /// Takes one report; an error is a report the task may not make (it breaks the protocol).
    fn report(&self, report: Report<'_>) -> Result<(), String>;
    /// For a stream: the credit its consumer grants.
    fn credit(&self) -> Option<&dyn Credit>;
}

/// The reports of a job nobody watches (the initializer's): dropped.
pub(crate) struct Unwatched;

impl Reports for Unwatched {
    fn report(&self, _: Report<'_>) -> Result<(), String> {
        Ok(())
    }

    fn credit(&self) -> Option<&dyn Credit> {
        None
    }
}

/// A `log` record from a worker, as plain data (as the `Log` message carries it).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct LogRecord {
    /// `log::Level` as a number: 1 is `Error`, 5 is `Trace`.
    pub(crate) level: u8,
    pub(crate) target: String,
    pub(crate) message: String,
    pub(crate) module_path: Option<String>,
    pub(crate) file: Option<String>,
    pub(crate) line: Option<u32>,
}

/// Where the consumer of a stream grants the worker more items.
pub(crate) trait Credit: Send + Sync {
    /// Notified whenever [`take`](Credit::take) may return more than zero.
    fn listen(&self) -> EventListener;
    /// The items granted since the last call, to send to the worker.
    fn take(&self) -> u64;
}

impl LogRecord {
    /// Hands the record to this process's `log` logger, tagged with the task (`task`, its id,
    /// and `pid`, its worker's, as key-values), guarded: a logger that panics loses the
    /// record, nothing else.
    pub(crate) fn emit(&self, task: u64, pid: u32) {
        let Some(level) = log::Level::iter().nth(usize::from(self.level).wrapping_sub(1)) else {
            return;
        };
        if level > log::max_level() {
            return;
        }
        let tags: [(&str, u64); 2] = [("task", task), ("pid", u64::from(pid))];
        let _ = crate::sys::panic::catch(|| {
            log::logger().log(
                &log::Record::builder()
                    .level(level)
                    .target(&self.target)
                    .module_path(self.module_path.as_deref())
                    .file(self.file.as_deref())
                    .line(self.line)
                    .key_values(&tags)
                    .args(format_args!("{}", self.message))
                    .build(),
            )
        });
    }
}
