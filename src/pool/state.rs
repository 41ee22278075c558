//! What a pool's handles and its driver share: the registry of live tasks, where ends are
//! reported, the counters of [`PoolStats`](crate::PoolStats), and whether the driver stopped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use event_listener::Event;

use crate::error::TaskError;
use crate::sys::wait;
use crate::task::shared::{report_end, AnyTask, EndNotices, Tally};

/// What a pool's handles and its driver share.
pub(crate) struct PoolState {
    /// Every task spawned and not yet reported ended, by id (what `tasks()` lists and
    /// `shutdown_now` cancels).
    live: Mutex<HashMap<u64, Arc<dyn AnyTask>>>,
    /// Ends that happened away from the driver, for it to report.
    notices: EndNotices,
    /// Set, and `stopped_event` notified, once every worker is reaped and the driver is gone.
    stopped: AtomicBool,
    stopped_event: Event,
    /// Workers serving and busy, and replacements: kept up to date by the driver.
    pub(crate) counters: Counters,
    /// How tasks ended: counted by the tasks themselves as they finish.
    pub(crate) tally: Arc<Tally>,
    /// Notified when a task is queued or the queue closes: an elastic slot may start a worker.
    pub(crate) demand: Event,
    /// Notified when a worker starts serving, when start-ups fail for good, and when the
    /// driver stops: what [`ProcessPool::ready`](crate::ProcessPool::ready) waits for.
    pub(crate) startup: Event,
    /// The error of the start-ups that tripped the breaker, until a worker starts again.
    startup_error: Mutex<Option<TaskError>>,
}

/// What [`PoolStats`](crate::PoolStats) reports about workers, kept up to date by the driver.
#[derive(Default)]
pub(crate) struct Counters {
    /// Workers that passed the handshake and serve (or wait for) tasks.
    pub(crate) workers: AtomicUsize,
    /// Workers running a task.
    pub(crate) busy: AtomicUsize,
    /// Queued tasks sent ahead to a worker (see `pipeline`).
    pub(crate) sent_ahead: AtomicUsize,
    /// Workers started in place of one that exited, died, was stopped or retired.
    pub(crate) replaced: AtomicU64,
    /// Workers being started (launch, handshake, `init`).
    pub(crate) starting: AtomicUsize,
    /// Start-ups that failed.
    pub(crate) start_failures: AtomicU64,
}

/// Counts one up while it lives.
pub(crate) struct Gauge<'a>(&'a AtomicUsize);

impl<'a> Gauge<'a> {
    pub(crate) fn up(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Gauge(counter)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl PoolState {
    pub(crate) fn new(notices: EndNotices) -> PoolState {
        PoolState {
            live: Mutex::new(HashMap::new()),
            notices,
            stopped: AtomicBool::new(false),
            stopped_event: Event::new(),
            counters: Counters::default(),
            tally: Arc::default(),
            demand: Event::new(),
            startup: Event::new(),
            startup_error: Mutex::new(None),
        }
    }

    /// Records whether start-ups fail for good (`Some`: the breaker tripped with this error)
    /// or work again (`None`).
    pub(crate) fn set_startup_error(&self, error: Option<TaskError>) {
        *self
            .startup_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = error;
        self.startup.notify(usize::MAX);
    }

    /// The error of the start-ups that tripped the breaker, while no worker has started since.
    pub(crate) fn startup_error(&self) -> Option<TaskError> {
        self.startup_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether the driver has stopped.
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    pub(crate) fn notices(&self) -> &EndNotices {
        &self.notices
    }

    /// Adds a task to the live set.
    pub(crate) fn register(&self, task: Arc<dyn AnyTask>) {
        self.live_tasks().insert(task.id(), task);
    }

    /// The tasks spawned and not yet reported ended.
    pub(crate) fn live(&self) -> Vec<Arc<dyn AnyTask>> {
        self.live_tasks().values().cloned().collect()
    }

    /// Applies `count` to the live tasks without copying the set.
    pub(crate) fn count_live(&self, count: impl Fn(&dyn AnyTask) -> bool) -> usize {
        self.live_tasks().values().filter(|t| count(&***t)).count()
    }

    fn live_tasks(&self) -> MutexGuard<'_, HashMap<u64, Arc<dyn AnyTask>>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that the driver has stopped and every worker is reaped.
    pub(crate) fn mark_stopped(&self) {
        self.stopped.store(true, Ordering::Release);
        self.stopped_event.notify(usize::MAX);
        self.startup.notify(usize::MAX);
    }

    /// Waits until the driver has stopped and every worker is reaped.
    pub(crate) async fn stopped(&self) {
        wait::until(&self.stopped_event, || self.stopped.load(Ordering::Acquire)).await
    }

    /// Reports the end of a finished task: it leaves the live set, its callbacks run, and its
    /// result is released. The one place where a pool's task ends are reported.
    pub(crate) fn report_end(&self, task: &dyn AnyTask) {
        self.live_tasks().remove(&task.id());
        report_end(task);
    }
}
