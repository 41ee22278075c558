//! Progress reports, coalesced in the worker: the latest report wins, at most one frame is
//! written per [`INTERVAL`], and the last report always reaches the parent before the task's
//! reply. A report held back is sent when the interval has passed, by a flusher thread, even
//! if no other report follows (a task that reports and then computes for a minute shows
//! where it is).

use std::sync::{Condvar, OnceLock};
use std::time::{Duration, Instant};

use super::{channel, lock, Channel};
use crate::protocol::FromWorker;

/// The shortest time between two progress frames of one task.
pub(crate) const INTERVAL: Duration = Duration::from_millis(5);

/// The progress of the task that runs.
#[derive(Default)]
pub(crate) struct State {
    /// The latest report.
    latest: Option<(u64, u64)>,
    /// The last report sent, and when.
    sent: Option<(u64, u64)>,
    sent_at: Option<Instant>,
    /// Reports are taken (a task runs and has not ended).
    open: bool,
    /// Reports come from a `map` chunk's items, and the task function's own are ignored.
    items: bool,
    /// A report is held back, and the flusher was told.
    held: bool,
}

impl State {
    /// Starts the reports of a new task.
    pub(super) fn open(&mut self) {
        *self = State {
            open: true,
            ..State::default()
        };
    }
}

/// Reports that the task that runs has done `done` of `total`: see [`crate::progress`].
pub(crate) fn report(done: u64, total: u64) {
    let Some(channel) = channel() else {
        return; // not a worker
    };
    let mut state = lock(&channel.progress);
    if !state.items {
        update(channel, &mut state, done, total);
    }
}

/// Reports that a `map` chunk has done `done` of its `total` items; from then on, the task
/// function's own reports are ignored until the chunk ends.
pub(crate) fn report_items(done: u64, total: u64) {
    let Some(channel) = channel() else {
        return;
    };
    let mut state = lock(&channel.progress);
    state.items = true;
    update(channel, &mut state, done, total);
}

/// Records a report, and sends it if the last one went out at least [`INTERVAL`] ago. The
/// frame is written under the progress lock, so frames leave in the order of the reports.
fn update(channel: &Channel, state: &mut State, done: u64, total: u64) {
    let Some(id) = channel.running() else {
        return;
    };
    if !state.open {
        return;
    }
    state.latest = Some((done, total));
    let now = Instant::now();
    if state.sent_at.is_some_and(|at| now - at < INTERVAL) {
        if !state.held {
            state.held = true;
            wake_flusher();
        }
        return;
    }
    state.sent_at = Some(now);
    send(channel, state, id);
}

/// The flusher's wake-up, paired with the channel's progress lock.
static HELD: Condvar = Condvar::new();

/// Tells the flusher that a report is held back, starting it the first time.
fn wake_flusher() {
    static STARTED: OnceLock<bool> = OnceLock::new();
    let started = STARTED.get_or_init(|| {
        std::thread::Builder::new()
            .name("offload-progress".into())
            .spawn(flush_held)
            .is_ok()
    });
    if *started {
        HELD.notify_one();
    }
}

/// The flusher thread: sends a held-back report once its interval has passed.
fn flush_held() {
    let Some(channel) = channel() else {
        return;
    };
    let mut state = lock(&channel.progress);
    loop {
        if !state.held {
            state = HELD
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            continue;
        }
        let due = state.sent_at.map_or_else(Instant::now, |at| at + INTERVAL);
        let now = Instant::now();
        if now < due {
            state = HELD
                .wait_timeout(state, due - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
            continue;
        }
        match channel.running() {
            Some(id) if state.open && state.latest != state.sent => {
                state.sent_at = Some(now);
                send(channel, &mut state, id);
            }
            _ => state.held = false,
        }
    }
}

/// Sends the latest report as the last one of task `id`, if it was not sent yet, and takes
/// no more.
pub(super) fn close(channel: &Channel, id: u64) {
    let mut state = lock(&channel.progress);
    send_held(channel, &mut state, id);
    state.open = false;
}

/// Sends the latest report of task `id` now, if it was not sent yet.
pub(super) fn flush(channel: &Channel, id: u64) {
    send_held(channel, &mut lock(&channel.progress), id);
}

/// Sends the latest report of task `id`, if reports are taken and it was not sent yet.
fn send_held(channel: &Channel, state: &mut State, id: u64) {
    if state.open && state.latest != state.sent {
        state.sent_at = Some(Instant::now());
        send(channel, state, id);
    }
}

fn send(channel: &Channel, state: &mut State, id: u64) {
    state.held = false;
    let Some((done, total)) = state.latest else {
        return;
    };
    state.sent = state.latest;
    channel.report(id, &FromWorker::Progress { id, done, total }, &[]);
}
