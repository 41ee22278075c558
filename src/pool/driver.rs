//! The driver: one named thread per pool that owns every worker process and pipe.
//!
//! The thread runs `async_io::block_on` over one future per worker slot (see `slot`), plus the
//! background work beside them: workers being stopped or retired, worker stderr being
//! forwarded, and ends of tasks that finished away from the driver, whose callbacks it runs.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use async_channel::{Receiver, Sender};
use futures_lite::{future, StreamExt};
use futures_util::stream::FuturesUnordered;

use super::backlog::Backlog;
use super::breaker::Breaker;
use super::slot::slot;
use super::state::PoolState;
use super::submit::Job;
use crate::error::Error;
use crate::launch::{Environment, Launcher};
use crate::supervise::{Starting, WorkerLink};
use crate::task::blocking::mark_driver_thread;
use crate::task::shared::AnyTask;

/// The name of the thread that drives a pool.
pub(crate) const THREAD_NAME: &str = "offload-driver";

/// How a pool's driver runs its workers.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) workers: usize,
    /// Workers kept at all times; the slots above them are elastic.
    pub(crate) min_workers: usize,
    /// How long an elastic slot's worker may stay idle before it is retired.
    pub(crate) idle_timeout: Option<Duration>,
    /// The entry of the initializer's trampoline, run in every worker before its first task.
    pub(crate) init: Option<u64>,
    /// How long the initializer may run.
    pub(crate) init_timeout: Duration,
    /// Replace a worker after it has run this many tasks.
    pub(crate) max_tasks_per_worker: Option<usize>,
    /// Start a worker only when a task is waiting for it, instead of at once and after every
    /// replacement.
    pub(crate) on_demand: bool,
    /// Cap each worker's address space (`RLIMIT_AS`) at this many bytes.
    pub(crate) memory_limit: Option<u64>,
    /// How workers are started.
    pub(crate) launcher: Launcher,
    /// The workers' environment and working directory.
    pub(crate) environment: Environment,
}

impl Options {
    /// Starts one worker process (its handshake comes next).
    pub(crate) fn launch(&self) -> io::Result<Starting> {
        WorkerLink::launch(&self.launcher, &self.environment, self.memory_limit)
    }
}

/// Starts the driver thread and its `workers` processes; returns the queue's sending side and
/// the state shared with the driver.
///
/// Workers are spawned by the driver thread itself, because `PR_SET_PDEATHSIG` fires when the
/// *thread* that forked a child exits: spawning from a caller's short-lived thread would kill
/// the workers with it.
pub(crate) fn start(options: Options) -> Result<(Sender<Job>, Arc<PoolState>), Error> {
    let (jobs, queue) = async_channel::unbounded();
    let (notices, notice_queue) = async_channel::unbounded();
    let state = Arc::new(PoolState::new(notices));
    let (ready, started) = mpsc::sync_channel(1);
    let driver_state = state.clone();
    thread::Builder::new()
        .name(THREAD_NAME.into())
        .spawn(move || {
            mark_driver_thread();
            let launched: io::Result<Vec<Option<Starting>>> = (0..options.workers)
                .map(
                    |slot| match options.on_demand || slot >= options.min_workers {
                        true => Ok(None),
                        false => options.launch().map(Some),
                    },
                )
                .collect();
            match launched {
                Ok(workers) => {
                    let _ = ready.send(Ok(()));
                    let run = run(workers, options, queue, notice_queue, &driver_state);
                    crate::sys::reactor::block_on(run);
                }
                // The processes started so far are killed and reaped by `kill_on_drop`.
                Err(err) => drop(ready.send(Err(err))),
            }
            driver_state.mark_stopped();
        })
        .map_err(Error::Spawn)?;
    match started.recv() {
        Ok(Ok(())) => Ok((jobs, state)),
        Ok(Err(err)) => Err(Error::Spawn(err)),
        Err(_) => Err(Error::Spawn(io::Error::other(
            "the driver thread ended early",
        ))),
    }
}

/// What the slots of one driver share.
pub(crate) struct Driver {
    pub(crate) state: Arc<PoolState>,
    pub(crate) options: Options,
    /// Work done beside the slots, so that a slot can start a replacement at once.
    pub(crate) background: Sender<Background>,
    /// How start-up failures are answered.
    pub(crate) breaker: Breaker,
    /// The jobs waiting for a worker.
    pub(crate) backlog: Backlog,
    /// Notified when tasks ended away from the driver (cancelled): a pipeline withdraws the
    /// ones it sent ahead.
    pub(crate) ended_away: event_listener::Event,
    /// How many times `ended_away` was notified: a pipeline looks for the jobs it must
    /// withdraw only when this changed.
    pub(crate) ends_away: std::cell::Cell<u64>,
    /// Notified when a worker goes idle: a pipeline behind a slow job withdraws its jobs for it.
    pub(crate) went_idle: event_listener::Event,
}

/// Work for the driver beside its slots.
pub(crate) enum Background {
    /// Copy a worker's stderr to ours until it ends (see [`WorkerLink::forward_stderr`]).
    ForwardStderr(Pin<Box<dyn Future<Output = ()>>>),
    /// A worker whose task was cancelled or timed out, already signalled: finish the stop
    /// within the cancel timeout, then settle and report the task.
    Stop {
        worker: WorkerLink,
        task: Arc<dyn AnyTask>,
    },
    /// A worker that ran its share of tasks: let it exit.
    Retire(WorkerLink),
}

/// What ended among the driver's futures.
pub(crate) enum Finished {
    Slot,
    Background,
}

type LocalFuture = Pin<Box<dyn Future<Output = Finished>>>;

/// The driver's whole life: all slots and all background work, until the queue is closed and
/// drained and every worker is reaped.
async fn run(
    workers: Vec<Option<Starting>>,
    options: Options,
    queue: Receiver<Job>,
    notice_queue: Receiver<Arc<dyn AnyTask>>,
    state: &Arc<PoolState>,
) {
    let (background, background_queue) = async_channel::unbounded::<Background>();
    let driver = Rc::new(Driver {
        state: state.clone(),
        options,
        background,
        breaker: Breaker::default(),
        backlog: Backlog::new(queue),
        ended_away: event_listener::Event::new(),
        ends_away: std::cell::Cell::new(0),
        went_idle: event_listener::Event::new(),
    });
    let mut slots = workers.len();
    let min_workers = driver.options.min_workers;
    let mut work: FuturesUnordered<LocalFuture> = workers
        .into_iter()
        .enumerate()
        .map(|(i, worker)| {
            let elastic = i >= min_workers;
            Box::pin(slot(driver.clone(), worker, elastic)) as LocalFuture
        })
        .collect();

    enum Event {
        Finished(Option<Finished>),
        Background(Box<Background>),
        Notice(Arc<dyn AnyTask>),
    }
    while slots > 0 || !work.is_empty() {
        let event = future::or(
            async { Event::Finished(work.next().await) },
            future::or(
                async {
                    match background_queue.recv().await {
                        Ok(errand) => Event::Background(Box::new(errand)),
                        Err(_) => future::pending().await,
                    }
                },
                async {
                    match notice_queue.recv().await {
                        Ok(task) => Event::Notice(task),
                        Err(_) => future::pending().await,
                    }
                },
            ),
        )
        .await;
        match event {
            Event::Finished(Some(Finished::Slot)) => slots -= 1,
            Event::Finished(Some(Finished::Background)) | Event::Finished(None) => {}
            Event::Background(errand) => work.push(match *errand {
                Background::Stop { worker, task } => {
                    let state = state.clone();
                    Box::pin(async move {
                        worker.finish_stop(task.options().cancel_timeout).await;
                        task.settle();
                        state.report_end(&*task);
                        Finished::Background
                    })
                }
                Background::ForwardStderr(forward) => Box::pin(async move {
                    forward.await;
                    Finished::Background
                }),
                Background::Retire(worker) => Box::pin(async move {
                    worker.shut_down().await;
                    Finished::Background
                }),
            }),
            Event::Notice(task) => {
                state.report_end(&*task);
                // A task sent ahead may be among them: its pipeline withdraws it.
                driver.ends_away.set(driver.ends_away.get() + 1);
                driver.ended_away.notify(usize::MAX);
            }
        }
    }
    // Closed first, so that an end handed over from now on is reported by its own thread
    // instead of waiting here for a driver that is gone.
    notice_queue.close();
    while let Ok(task) = notice_queue.try_recv() {
        state.report_end(&*task);
    }
}
