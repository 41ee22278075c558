//! The state a task shares between its handle and the driver, and how its start and end are
//! reported (tracing, callbacks) before the result is handed out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::Instant;

use async_channel::Sender;
use event_listener::Event;
use serde::de::DeserializeOwned;

use super::args::EncodedArgs;
use super::info::{Meta, Started, TaskInfo};
use super::options::{Callback, TaskOptions};
use super::report::{Progress, TaskOutput};
use super::status::TaskStatus;
use super::stream::ItemSink;
use crate::error::TaskError;
use crate::protocol::codec;
use crate::protocol::event::{Credit, Report, Reports};
use crate::sys::panic::catch;
use crate::sys::signal::Stopper;
use crate::sys::wait;
use crate::trace::TaskSpan;

/// Turns the payload of a worker's `Done` reply into a task's value.
pub(crate) type Decoder<T> = fn(&[u8]) -> Result<T, String>;

/// The decoder for a value encoded as one rmp-serde message.
pub(crate) fn decode_value<T: DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    codec::decode(payload)
}

/// Where tasks that end away from the driver thread (cancelled by their handle, refused at
/// spawn) are reported, so that the driver runs their callbacks.
pub(crate) type EndNotices = Sender<Arc<dyn AnyTask>>;

/// A task with its result type erased: what the driver and the pool's registry hold.
///
/// A task *finishes* once (`finish_with_reply`, `finish_with_error`, `cancel`): its status and
/// end time are set at that moment. Its end is then *reported* once (`report_end`: tracing and
/// callbacks), and only after that is its result *released* to whoever awaits it. It *settles*
/// when no worker process does anything for it any more.
pub(crate) trait AnyTask: Send + Sync + Reports {
    fn id(&self) -> u64;
    fn info(&self) -> TaskInfo;
    fn status(&self) -> TaskStatus;
    fn options(&self) -> &TaskOptions;
    /// Marks the task as sent to worker `pid` on `host` (`None`: this machine). Returns `false`
    /// if it already finished (it was cancelled while queued), in which case it must not be
    /// sent. `stopper`, armed for this task, is given when the worker holds no other job: from
    /// the moment the task runs, a cancel signals the worker itself.
    fn start(&self, pid: u32, host: Option<&Arc<str>>, stopper: Option<&Arc<Stopper>>) -> bool;
    /// Marks the task as sent ahead to a worker (`true`) that has not started it, or as back
    /// in the pool's hands (`false`): while it is out, a cancel does not settle it, since the
    /// worker may have started it in the meantime; the slot settles it.
    fn send_ahead(&self, out: bool);
    /// Finishes the task with its worker's reply, received at `at`: the encoded result
    /// (decoded here, guarded), or why there is none.
    fn finish_with_reply(&self, reply: Result<&[u8], TaskError>, at: Instant);
    /// Finishes the task with `error`; returns whether this call finished it.
    fn finish_with_error(&self, error: TaskError) -> bool;
    /// Cancels the task if it has not finished; returns whether it did. A task that got a
    /// stopper when it started has its worker signalled here and now, unless the driver
    /// disarmed it since (the worker answered, or was given more).
    fn cancel(&self) -> bool;
    fn is_finished(&self) -> bool;
    /// Records that no worker process is doing anything for the task any more.
    fn settle(&self);
    /// Notified when the task finishes, when its result is released and when it settles.
    fn changed(&self) -> &Event;
    /// Returns `true` once: whether `on_start` is still to be reported.
    fn take_start_report(&self) -> bool;
    /// Returns `true` once: whether the end is still to be reported.
    fn take_end_report(&self) -> bool;
    /// Hands the result out to the awaiting side, once the end was reported.
    fn release(&self);
    /// What it wrote to its captured fd 2 so far; `None` without capture.
    fn captured_stderr(&self) -> Option<Vec<u8>>;
    /// Its tracing span (which exists with the `tracing` feature only).
    #[cfg(feature = "tracing")]
    fn span(&self) -> &TaskSpan;
}

/// Runs `on_start` for a task that just started, once.
pub(crate) fn report_start(task: &dyn AnyTask) {
    if task.take_start_report() {
        // A snapshot only for the span: without tracing, starting a task copies nothing.
        #[cfg(feature = "tracing")]
        {
            let info = task.info();
            if let Some(pid) = info.pid() {
                task.span().started(pid, info.host());
            }
        }
        if let Some(callback) = &task.options().on_start {
            run_callback("on_start", callback, task);
        }
    }
}

/// Reports the end of a finished task once (tracing, then `on_done` or `on_error`), then
/// releases its result: whoever awaits the task sees the callbacks' effects.
pub(crate) fn report_end(task: &dyn AnyTask) {
    if !task.take_end_report() {
        return;
    }
    let options = task.options();
    #[cfg(feature = "tracing")]
    {
        let info = task.info();
        task.span()
            .finished(info.status().as_str(), info.duration(), info.error());
    }
    let callback = match task.status() {
        TaskStatus::Done => (&options.on_done, "on_done"),
        _ => (&options.on_error, "on_error"),
    };
    if let (Some(callback), name) = callback {
        run_callback(name, callback, task);
    }
    task.release();
}

/// A panicking callback is logged and changes nothing else.
fn run_callback(name: &str, callback: &Callback, task: &dyn AnyTask) {
    let info = task.info();
    if let Err(panic) = catch(|| callback(&info)) {
        log::error!(
            "offload: the {name} callback of task {} ({}) panicked: {}",
            info.id(),
            info.func_name(),
            panic.message
        );
    }
}

/// Waits until `task` has finished.
pub(crate) async fn until_finished(task: &dyn AnyTask) {
    wait::until(task.changed(), || task.is_finished()).await
}

/// How a pool's tasks ended, counted the moment each finishes.
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
    /// What the task was started with (with `options`); never changes.
    started: Started,
    /// How the worker's reply becomes the task's value.
    decode: Decoder<T>,
    /// The tracing span (empty, and never read, without the `tracing` feature).
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    span: TaskSpan,
    options: TaskOptions,
    /// Where the end is counted, for a task of a pool.
    tally: Option<Arc<Tally>>,
    /// Where the items of a stream go.
    items: Option<Arc<dyn ItemSink>>,
    state: Mutex<State<T>>,
    /// See [`AnyTask::changed`].
    changed: Event,
}

/// The part of a task that changes, under one lock.
struct State<T> {
    meta: Meta,
    /// The outcome, from the moment the task finishes until the handle takes it.
    outcome: Option<Result<T, TaskError>>,
    /// What the task wrote, if it captures its output (boxed: most tasks do not).
    output: Option<Box<TaskOutput>>,
    /// Whether the handle already took the outcome.
    taken: bool,
    /// Whether the end was reported, so the outcome may be handed out.
    released: bool,
    /// The waker of the last poll that found no outcome.
    waker: Option<Waker>,
    /// Whether no worker process works on the task any more.
    settled: bool,
    /// Whether `on_start` was claimed by [`report_start`].
    start_reported: bool,
    /// Whether it is sent ahead to a worker (see [`AnyTask::send_ahead`]).
    ahead: bool,
    /// Whether the end was claimed by [`report_end`].
    end_reported: bool,
    /// What stops its worker from the handle's thread on a cancel, while armed for it.
    stopper: Option<Arc<Stopper>>,
}

impl<T> Shared<T> {
    pub(crate) fn new(
        id: u64,
        func_name: &'static str,
        args: Option<EncodedArgs>,
        decode: Decoder<T>,
        options: TaskOptions,
        tally: Option<Arc<Tally>>,
    ) -> Self {
        let output = options.capture.then(Box::default);
        Shared {
            started: Started {
                id,
                func_name,
                submitted_at: Instant::now(),
                args,
            },
            decode,
            span: TaskSpan::spawned(id, func_name),
            options,
            tally,
            items: None,
            state: Mutex::new(State {
                meta: Meta::default(),
                outcome: None,
                output,
                taken: false,
                released: false,
                waker: None,
                settled: false,
                start_reported: false,
                ahead: false,
                end_reported: false,
                stopper: None,
            }),
            changed: Event::new(),
        }
    }

    /// Makes the task a stream whose items go to `items`.
    pub(crate) fn with_items(mut self, items: Arc<dyn ItemSink>) -> Self {
        self.items = Some(items);
        self
    }

    /// What the task wrote so far, if it captures its output.
    pub(crate) fn output(&self) -> Option<TaskOutput> {
        self.lock().output.as_deref().cloned()
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // No user code runs while the lock is held, but a poisoned lock must not spread panics.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn id(&self) -> u64 {
        self.started.id
    }

    pub(crate) fn func_name(&self) -> &'static str {
        self.started.func_name
    }

    pub(crate) fn submitted_at(&self) -> Instant {
        self.started.submitted_at
    }

    pub(crate) fn options(&self) -> &TaskOptions {
        &self.options
    }

    /// A snapshot of the metadata.
    pub(crate) fn snapshot(&self) -> TaskInfo {
        TaskInfo::new(&self.started, &self.options, self.lock().meta.clone())
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

    /// Whether the result is handed out: awaiting the task would not wait.
    pub(crate) fn is_released(&self) -> bool {
        self.lock().released
    }

    /// Takes the outcome if it is released and was not taken yet.
    pub(crate) fn try_take(&self) -> Option<Result<T, TaskError>> {
        let mut state = self.lock();
        if !state.released {
            return None;
        }
        let outcome = state.outcome.take()?;
        state.taken = true;
        Some(outcome)
    }

    /// Takes the outcome if it is released, else stores `waker` to be woken when it is.
    pub(crate) fn poll_outcome(&self, waker: &Waker) -> Option<Result<T, TaskError>> {
        let mut state = self.lock();
        if state.released {
            if let Some(outcome) = state.outcome.take() {
                state.taken = true;
                return Some(outcome);
            }
        }
        assert!(!state.taken, "ProcessTask polled after it returned Ready");
        match &mut state.waker {
            Some(stored) => stored.clone_from(waker),
            None => state.waker = Some(waker.clone()),
        }
        None
    }

    /// Finishes the task once, with its end time `at`; later calls are ignored. Returns
    /// whether this call finished it.
    pub(crate) fn finish(&self, outcome: Result<T, TaskError>, at: Instant) -> bool {
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
            if meta.started_at.is_none() && !state.ahead {
                state.settled = true;
            }
            if let Some(tally) = &self.tally {
                tally.count(state.meta.status);
            }
            // A cancelled task's worker, if it runs this task alone, is signalled now. Under
            // this lock, after the status: the driver finds the task cancelled only with the
            // signal sent, so it disarms the stopper after, and then stops that worker.
            if let Some(stopper) = state.stopper.take() {
                if state.meta.status == TaskStatus::Cancelled {
                    stopper.fire(self.started.id, self.options.cancel_timeout);
                }
            }
            state.outcome = Some(outcome);
            // With no end callback to wait for, the result is handed out at once (the report
            // then only records the end): the awaiter runs beside the rest of the driver's
            // work instead of after it.
            let callback = match state.meta.status {
                TaskStatus::Done => &self.options.on_done,
                _ => &self.options.on_error,
            };
            if callback.is_none() {
                state.released = true;
                state.waker.take()
            } else {
                None
            }
        };
        self.changed.notify(usize::MAX);
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }
}

impl<T: Send> Reports for Shared<T> {
    fn report(&self, report: Report<'_>) -> Result<(), String> {
        match report {
            Report::Progress { done, total } => {
                self.lock().meta.progress = Some(Progress { done, total });
                if let Some(callback) = &self.options.on_progress {
                    run_callback("on_progress", callback, self);
                }
                Ok(())
            }
            Report::Items { count, payload } => match &self.items {
                Some(items) => items.push(count, payload),
                None => Err("items from a task that is not a stream".into()),
            },
            Report::Output { fd, bytes, cut } => match &mut self.lock().output {
                Some(output) => output.add(fd, bytes, cut),
                None => Err("output from a task that does not capture it".into()),
            },
        }
    }

    fn credit(&self) -> Option<&dyn Credit> {
        self.items.as_ref().map(|items| items.credit())
    }
}

impl<T: Send> AnyTask for Shared<T> {
    fn id(&self) -> u64 {
        self.started.id
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

    fn start(&self, pid: u32, host: Option<&Arc<str>>, stopper: Option<&Arc<Stopper>>) -> bool {
        let mut state = self.lock();
        if state.meta.status != TaskStatus::Pending {
            return false;
        }
        // Under the same lock as the status: a cancel that finds the task running finds it.
        state.stopper = stopper.cloned();
        state.meta.status = TaskStatus::Running;
        state.meta.pid = Some(pid);
        state.meta.host = host.cloned();
        state.meta.started_at = Some(Instant::now());
        true
    }

    fn send_ahead(&self, out: bool) {
        self.lock().ahead = out;
    }

    fn finish_with_reply(&self, reply: Result<&[u8], TaskError>, at: Instant) {
        let outcome = reply.and_then(|payload| {
            (self.decode)(payload).map_err(|e| {
                TaskError::Decode(format!("result of `{}`: {e}", self.started.func_name))
            })
        });
        self.finish(outcome, at);
    }

    fn finish_with_error(&self, error: TaskError) -> bool {
        self.finish(Err(error), Instant::now())
    }

    fn cancel(&self) -> bool {
        self.finish_with_error(TaskError::Cancelled)
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

    fn release(&self) {
        let waker = {
            let mut state = self.lock();
            if std::mem::replace(&mut state.released, true) {
                return; // released when it finished: there was no callback to wait for
            }
            state.waker.take()
        };
        self.changed.notify(usize::MAX);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn captured_stderr(&self) -> Option<Vec<u8>> {
        self.lock()
            .output
            .as_ref()
            .map(|output| output.stderr.clone())
    }

    #[cfg(feature = "tracing")]
    fn span(&self) -> &TaskSpan {
        &self.span
    }
}
