//! Errors: [`TaskError`] for one task, [`Error`] for the pool.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

/// Why a task did not produce its value.
///
/// A `TaskError` describes one task only: whatever happened to it, the pool keeps serving the
/// others. It is `Clone` so that [`TaskInfo::error`](crate::TaskInfo::error) can hand out a copy.
///
/// # Examples
///
/// ```
/// use offload::TaskError;
///
/// let e = TaskError::WorkerDied { pid: 4242, code: None, signal: Some(6), stderr: None };
/// assert!(e.is_worker_died());
/// assert_eq!(e.to_string(), "worker process 4242 died: killed by signal 6 (SIGABRT)");
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum TaskError {
    /// The task panicked inside its worker. The worker lives on and serves the next task.
    Panicked {
        /// The panic message (`"Box<dyn Any>"` when the payload was not a string).
        message: String,
        /// Where the panic happened, as `file:line:column`, when known.
        location: Option<String>,
    },
    /// The task ran longer than its timeout and its worker was killed.
    TimedOut {
        /// The timeout that expired.
        after: Duration,
    },
    /// The task was cancelled before it finished.
    Cancelled,
    /// The worker process running the task died (abort, segfault, `exit`, a signal from
    /// outside). The pool replaced it.
    WorkerDied {
        /// The pid the worker had.
        pid: u32,
        /// Its exit code, if it exited.
        code: Option<i32>,
        /// The signal that killed it, if one did.
        signal: Option<i32>,
        /// The last lines it wrote to its stderr (at most [`STDERR_TAIL`](TaskError::STDERR_TAIL)
        /// bytes, of any task it ran), which often say why it died; `None` if it wrote
        /// nothing.
        stderr: Option<String>,
    },
    /// The worker running the task tried to allocate beyond the pool's
    /// [`memory_limit`](crate::PoolBuilder::memory_limit) and aborted. The pool replaced it.
    MemoryLimit {
        /// The pid the worker had.
        pid: u32,
        /// The limit, in bytes.
        limit: u64,
    },
    /// The arguments or the result could not be encoded (or were larger than
    /// [`MAX_FRAME_LEN`](crate::MAX_FRAME_LEN)).
    Encode(String),
    /// The arguments or the result could not be decoded.
    Decode(String),
    /// The pool was closed before the task could run.
    PoolClosed,
    /// No worker process could be started for the task.
    Spawn(Arc<io::Error>),
    /// The worker broke the protocol (malformed, oversized or unexpected frame); it was killed
    /// and replaced.
    Protocol(String),
    /// No worker could start for the task: the pool's
    /// [`init`](crate::PoolBuilder::init) failed in 3 workers in a row, and the pool is
    /// backing off before it tries again (see
    /// [`PoolBuilder::init`](crate::PoolBuilder::init)).
    InitFailed {
        /// What went wrong: the initializer's own error text, its panic, how its worker
        /// ended, or the timeout it ran past.
        message: String,
    },
}

impl TaskError {
    /// The most bytes of a dead worker's stderr kept in [`TaskError::WorkerDied`] (4 KiB).
    pub const STDERR_TAIL: usize = 4096;

    /// Returns `true` for [`TaskError::Panicked`].
    pub fn is_panicked(&self) -> bool {
        matches!(self, TaskError::Panicked { .. })
    }

    /// Returns `true` for [`TaskError::TimedOut`].
    pub fn is_timed_out(&self) -> bool {
        matches!(self, TaskError::TimedOut { .. })
    }

    /// Returns `true` for [`TaskError::Cancelled`].
    pub fn is_cancelled(&self) -> bool {
        matches!(self, TaskError::Cancelled)
    }

    /// Returns `true` for [`TaskError::WorkerDied`].
    pub fn is_worker_died(&self) -> bool {
        matches!(self, TaskError::WorkerDied { .. })
    }

    /// Returns `true` for [`TaskError::MemoryLimit`].
    pub fn is_memory_limit(&self) -> bool {
        matches!(self, TaskError::MemoryLimit { .. })
    }

    /// Returns `true` for [`TaskError::Encode`] and [`TaskError::Decode`].
    pub fn is_codec(&self) -> bool {
        matches!(self, TaskError::Encode(_) | TaskError::Decode(_))
    }

    /// Returns `true` for [`TaskError::PoolClosed`].
    pub fn is_pool_closed(&self) -> bool {
        matches!(self, TaskError::PoolClosed)
    }

    /// Returns `true` for [`TaskError::Spawn`].
    pub fn is_spawn(&self) -> bool {
        matches!(self, TaskError::Spawn(_))
    }

    /// Returns `true` for [`TaskError::Protocol`].
    pub fn is_protocol(&self) -> bool {
        matches!(self, TaskError::Protocol(_))
    }

    /// Returns `true` for [`TaskError::InitFailed`].
    pub fn is_init_failed(&self) -> bool {
        matches!(self, TaskError::InitFailed { .. })
    }
}

/// The conventional name of a Unix signal number, for messages.
pub(crate) fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        _ => return None,
    })
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskError::Panicked { message, location } => {
                write!(f, "task panicked: {message}")?;
                match location {
                    Some(location) => write!(f, " (at {location})"),
                    None => Ok(()),
                }
            }
            TaskError::TimedOut { after } => write!(f, "task timed out after {after:?}"),
            TaskError::Cancelled => f.write_str("task was cancelled"),
            TaskError::WorkerDied {
                pid,
                code,
                signal,
                stderr,
            } => {
                write!(f, "worker process {pid} died: ")?;
                match (code, signal) {
                    (Some(code), _) => write!(f, "exited with code {code}"),
                    (None, Some(signal)) => match signal_name(*signal) {
                        Some(name) => write!(f, "killed by signal {signal} ({name})"),
                        None => write!(f, "killed by signal {signal}"),
                    },
                    (None, None) => f.write_str("exit status unknown"),
                }?;
                match stderr {
                    Some(said) => write!(f, "; its stderr ended with: {said}"),
                    None => Ok(()),
                }
            }
            TaskError::MemoryLimit { pid, limit } => write!(
                f,
                "worker process {pid} went over its memory limit of {limit} bytes"
            ),
            TaskError::Encode(msg) => write!(f, "could not encode task data: {msg}"),
            TaskError::Decode(msg) => write!(f, "could not decode task data: {msg}"),
            TaskError::PoolClosed => f.write_str("the process pool is closed"),
            TaskError::Spawn(err) => write!(f, "could not start a worker process: {err}"),
            TaskError::Protocol(msg) => write!(f, "worker broke the protocol: {msg}"),
            TaskError::InitFailed { message } => {
                write!(
                    f,
                    "no worker could start: its initializer failed: {message}"
                )
            }
        }
    }
}

impl std::error::Error for TaskError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TaskError::Spawn(err) => Some(&**err),
            _ => None,
        }
    }
}

/// A pool-level error: the pool could not be built, or a task failed (so that `?` works on
/// both in one function).
///
/// # Examples
///
/// ```no_run
/// fn fib(n: u64) -> u64 { if n < 2 { n } else { fib(n - 1) + fib(n - 2) } }
///
/// async fn app() -> Result<u64, offload::Error> {
///     let pool = offload::ProcessPool::new(2)?;   // Error::Spawn if no worker can start
///     let v = pool.spawn(fib, 20).await?;          // TaskError converts into Error::Task
///     Ok(v)
/// }
/// # offload::init();
/// # futures_lite::future::block_on(app()).unwrap();
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A worker process could not be started.
    Spawn(io::Error),
    /// The pool's configuration is unusable (for example zero workers).
    Config(String),
    /// This process was started as an offload worker but [`init`](crate::init) was not the
    /// first thing `main` called, so it refuses to start workers of its own.
    NotInitialized,
    /// A task failed.
    Task(TaskError),
}

impl Error {
    /// The task error inside, for [`Error::Task`].
    pub fn as_task_error(&self) -> Option<&TaskError> {
        match self {
            Error::Task(e) => Some(e),
            _ => None,
        }
    }
}

impl Error {
    /// What a task that needed this pool fails with.
    pub(crate) fn into_task_error(self) -> TaskError {
        match self {
            Error::Task(err) => err,
            Error::Spawn(err) => TaskError::Spawn(Arc::new(err)),
            other => TaskError::Spawn(Arc::new(io::Error::other(other.to_string()))),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Spawn(err) => write!(f, "could not start a worker process: {err}"),
            Error::Config(msg) => write!(f, "invalid pool configuration: {msg}"),
            Error::NotInitialized => f.write_str(
                "this process is an offload worker but offload::init() was not called first in main",
            ),
            Error::Task(err) => fmt::Display::fmt(err, f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Spawn(err) => Some(err),
            Error::Task(err) => Some(err),
            _ => None,
        }
    }
}

impl From<TaskError> for Error {
    fn from(err: TaskError) -> Self {
        Error::Task(err)
    }
}
