//! The state a task shares between its handle and the driver, and the per-task options.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::{Duration, Instant};

use async_channel::Sender;
use event_listener::Event;
use serde::de::DeserializeOwned;

use crate::error::TaskError;
use crate::task::{Meta, TaskInfo, TaskStatus};
use crate::trace::TaskSpan;

/// Turns the payload of a worker's `Done` reply into a task's value.
pub(crate) type Decoder<T> = fn(&[u8]) -> Result<T, String>;

/// The decoder for a value encoded as one rmp-serde message.
pub(crate) fn decode_value<T: DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    rmp_serde::from_slice(payload).map_err(|e| e.to_string())
}

/// A task callback: runs on the pool's driver thread with a snapshot of the task.
pub(crate) type Callback = Arc<dyn Fn(&TaskInfo) + Send + Sync>;

/// The default grace between `SIGTERM` and `SIGKILL` when a running task is stopped.
pub(crate) const DEFAULT_CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// Per-task options, set with a [`TaskBuilder`](crate::TaskBuilder).
#[derive(Clone)]
pub(crate) struct TaskOptions {
    pub(crate) timeout: Option<Duration>,
    pub(crate) cancel_timeout: Duration,
    pub(crate) on_start: Option<Callback>,
    pub(crate) on_done: Option<Callback>,
    pub(crate) on_error: Option<Callback>,
}

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions {
            timeout: None,
            cancel_timeout: DEFAULT_CANCEL_TIMEOUT,
            on_start: None,
            on_done: None,
            on_error: None,
        }
    }
}

/// Where tasks that end away from the driver thread (cancelled by their handle, refused at
/// spawn) are reported, so that the driver runs their callbacks.
pub(crate) type EndNotices = Sender<Arc<dyn Completion>>;

/// What the driver needs from a task, without knowing its result type.
pub(crate) trait Completion: Send + Sync {
    fn id(&self) -> u64;
    fn info(&self) -> TaskInfo;
    fn status(&self) -> TaskStatus;
    fn options(&self) -> &TaskOptions;
    /// Marks the task as sent to worker `pid`. Returns `false` if it already ended (it was
    /// cancelled while queued), in which case it must not be sent.
    fn start(&self, pid: u32) -> bool;
    /// Ends the task with its worker's reply, received at `at`: the encoded result, or why
    /// there is none.
    fn replied(&self, reply: Result<&[u8], TaskError>, at: Instant);
    /// Ends the task with `error`; returns whether this call ended it.
    fn fail(&self, error: TaskError) -> bool;
    /// Cancels the task if it has not ended; returns whether it did.
    fn cancel(&self) -> bool;
    fn is_finished(&self) -> bool;
    /// Records that no worker process is doing anything for the task any more.
    fn settle(&self);
    /// Notified when the task ends and when it settles.
    fn changed(&self) -> &Event;
    /// Returns `true` once: whether `on_start` is still to be reported.
    fn take_start_report(&self) -> bool;
    /// Returns `true` once: whether the end is still to be reported.
    fn take_end_report(&self) -> bool;
    fn span(&self) -> &TaskSpan;
}

/// Runs `on_start` for a task that just started.
pub(crate) fn report_start(task: &dyn Completion) {
    if task.take_start_report() {
        if let Some(pid) = task.info().pid() {
            task.span().started(pid);
        }
        if let Some(callback) = &task.options().on_start {
            run_callback("on_start", callback, task);
        }
    }
}

/// Runs `on_done` or `on_error` for a task that ended, once.
pub(crate) fn report_end(task: &dyn Completion) {
    if !task.take_end_report() {
        return;
    }
    let options = task.options();
    #[cfg(feature = "tracing")]
    task.span().finished(&task.info());
    let callback = match task.status() {
        TaskStatus::Done => (&options.on_done, "on_done"),
        _ => (&options.on_error, "on_error"),
    };
    if let (Some(callback), name) = callback {
        run_callback(name, callback, task);
    }
}

/// A panicking callback is logged and changes nothing else.
fn run_callback(name: &str, callback: &Callback, task: &dyn Completion) {
    let info = task.info();
    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| callback(&info))) {
        let message = crate::worker::panic_message(&*payload);
        log::error!(
            "offload: the {name} callback of task {} ({}) panicked: {message}",
            info.id(),
            info.func_name()
        );
    }
}

/// Waits until `task` has ended.
pub(crate) async fn finished(task: &dyn Completion) {
    loop {
        if task.is_finished() {
            return;
        }
        let listener = task.changed().listen();
        if task.is_finished() {
            return;
        }
        listener.await;
    }
}

/// How a pool's tasks ended, counted the moment each ends.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) completed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) cancelled: AtomicU64,
}

impl Tally {
    fn count(&self, status: TaskStatus) {
        let counter = match status {
            TaskStatus::Done => &self.completed,
            TaskStatus::Cancelled => &self.cancelled,
            _ => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The state shared by a [`ProcessTask`](crate::ProcessTask) and the driver.
pub(crate) struct Shared<T> {
    id: u64,
    func_name: &'static str,
    decode: Decoder<T>,
    span: TaskSpan,
    submitted_at: Instant,
    options: TaskOptions,
    /// Where the end is counted, for a task of a pool.
    tally: Option<Arc<Tally>>,
    state: Mutex<State<T>>,
    changed: Event,
}

struct State<T> {
    meta: Meta,
    /// The outcome, until the handle takes it.
    outcome: Option<Result<T, TaskError>>,
    /// Whether the handle already took the outcome.
    taken: bool,
    waker: Option<Waker>,
    settled: bool,
    start_reported: bool,
    end_reported: bool,
}

impl<T> Shared<T> {
    pub(crate) fn new(
        id: u64,
        func_name: &'static str,
        decode: Decoder<T>,
        options: TaskOptions,
        tally: Option<Arc<Tally>>,
    ) -> Self {
        Shared {
            id,
            func_name,
            decode,
            span: TaskSpan::spawned(id, func_name),
            submitted_at: Instant::now(),
            options,
            tally,
            state: Mutex::new(State {
                meta: Meta::default(),
                outcome: None,
                taken: false,
                waker: None,
                settled: false,
                start_reported: false,
                end_reported: false,
            }),
            changed: Event::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing panics while the lock is held, but a poisoned lock must not spread panics.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn func_name(&self) -> &'static str {
        self.func_name
    }

    pub(crate) fn submitted_at(&self) -> Instant {
        self.submitted_at
    }

    /// A snapshot of the metadata.
    pub(crate) fn snapshot(&self) -> TaskInfo {
        TaskInfo::new(
            self.id,
            self.func_name,
            self.submitted_at,
            self.lock().meta.clone(),
        )
    }

    /// Reads the metadata under the lock.
    pub(crate) fn with_meta<R>(&self, read: impl FnOnce(&Meta) -> R) -> R {
        read(&self.lock().meta)
    }

    pub(crate) fn changed_event(&self) -> &Event {
        &self.changed
    }

    pub(crate) fn is_settled(&self) -> bool {
        self.lock().settled
    }

    /// Takes the outcome if it is there and was not taken yet.
    pub(crate) fn try_take(&self) -> Option<Result<T, TaskError>> {
        let mut state = self.lock();
        let outcome = state.outcome.take()?;
        state.taken = true;
        Some(outcome)
    }

    /// Takes the outcome if it is there, else stores `waker` to be woken when it is.
    pub(crate) fn poll_outcome(&self, waker: &Waker) -> Option<Result<T, TaskError>> {
        let mut state = self.lock();
        if let Some(outcome) = state.outcome.take() {
            state.taken = true;
            return Some(outcome);
        }
        assert!(!state.taken, "ProcessTask polled after it returned Ready");
        match &mut state.waker {
            Some(stored) => stored.clone_from(waker),
            None => state.waker = Some(waker.clone()),
        }
        None
    }

    /// Ends the task once; later calls are ignored. Returns whether this call ended it.
    pub(crate) fn finish(&self, outcome: Result<T, TaskError>) -> bool {
        self.finish_at(outcome, Instant::now())
    }

    /// [`finish`](Shared::finish), with the end time given.
    fn finish_at(&self, outcome: Result<T, TaskError>, at: Instant) -> bool {
        let waker = {
            let mut state = self.lock();
            if state.meta.status.is_finished() {
                return false;
            }
            let meta = &mut state.meta;
            meta.ended_at = Some(at);
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
            // A task that never reached a worker has nothing left to stop.
            if meta.started_at.is_none() {
                state.settled = true;
            }
            if let Some(tally) = &self.tally {
                tally.count(state.meta.status);
            }
            state.outcome = Some(outcome);
            state.waker.take()
        };
        self.changed.notify(usize::MAX);
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }
}

impl<T: Send> Completion for Shared<T> {
    fn id(&self) -> u64 {
        self.id
    }

    fn info(&self) -> TaskInfo {
        self.snapshot()
    }

    fn status(&self) -> TaskStatus {
        self.lock().meta.status
    }

    fn options(&self) -> &TaskOptions {
        &self.options
    }

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

    fn fail(&self, error: TaskError) -> bool {
        self.finish(Err(error))
    }

    fn replied(&self, reply: Result<&[u8], TaskError>, at: Instant) {
        let outcome = reply.and_then(|payload| {
            (self.decode)(payload)
                .map_err(|e| TaskError::Decode(format!("result of `{}`: {e}", self.func_name)))
        });
        self.finish_at(outcome, at);
    }

    fn cancel(&self) -> bool {
        self.finish(Err(TaskError::Cancelled))
    }

    fn is_finished(&self) -> bool {
        self.status().is_finished()
    }

    fn settle(&self) {
        self.lock().settled = true;
        self.changed.notify(usize::MAX);
    }

    fn changed(&self) -> &Event {
        &self.changed
    }

    fn take_start_report(&self) -> bool {
        !std::mem::replace(&mut self.lock().start_reported, true)
    }

    fn take_end_report(&self) -> bool {
        !std::mem::replace(&mut self.lock().end_reported, true)
    }

    fn span(&self) -> &TaskSpan {
        &self.span
    }
}
