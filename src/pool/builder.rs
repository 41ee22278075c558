//! [`PoolBuilder`]: a pool's options, in the style of `std::process::Command`.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::{driver, Inner, ProcessPool};
use crate::error::Error;
use crate::func::trampoline::init_entry_of;
use crate::func::InitFn;
use crate::launch::{Environment, Launcher};

/// Options for a [`ProcessPool`], in the style of `std::process::Command`.
///
/// # Examples
///
/// ```no_run
/// # offload::init();
/// let pool = offload::PoolBuilder::new().workers(2).build()?;
/// # Ok::<(), offload::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct PoolBuilder {
    workers: Option<usize>,
    max_tasks_per_worker: Option<usize>,
    memory_limit: Option<u64>,
    launcher: Launcher,
    /// Start workers only for waiting tasks (what `Isolated` needs).
    on_demand: bool,
    min_workers: Option<usize>,
    idle_timeout: Option<Duration>,
    /// The initializer: its trampoline's entry.
    init: Option<u64>,
    init_timeout: Option<Duration>,
    environment: Environment,
}

/// How long an initializer may run unless [`PoolBuilder::init_timeout`] says otherwise.
///
/// # Examples
///
/// ```
/// assert_eq!(offload::DEFAULT_INIT_TIMEOUT, std::time::Duration::from_secs(60));
/// ```
pub const DEFAULT_INIT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long an elastic pool's worker may stay idle unless [`PoolBuilder::idle_timeout`] says
/// otherwise.
///
/// # Examples
///
/// ```
/// assert_eq!(offload::DEFAULT_IDLE_TIMEOUT, std::time::Duration::from_secs(60));
/// ```
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

impl PoolBuilder {
    /// A builder with every option at its default.
    pub fn new() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// The number of worker processes.
    ///
    /// The default value of this option is the number of CPUs available to this process
    /// (`std::thread::available_parallelism`), or 1 if that is unknown.
    pub fn workers(&mut self, workers: usize) -> &mut PoolBuilder {
        self.workers = Some(workers);
        self
    }

    /// Replaces each worker with a fresh process after it has run `tasks` tasks, so that
    /// leaks and state in user code cannot pile up (pebble's `max_tasks`, Python's
    /// `max_tasks_per_child`). The worker finishes its last task, exits, and a replacement
    /// takes its place.
    ///
    /// The default value of this option is no limit. Zero is refused by
    /// [`build`](PoolBuilder::build).
    pub fn max_tasks_per_worker(&mut self, tasks: usize) -> &mut PoolBuilder {
        self.max_tasks_per_worker = Some(tasks);
        self
    }

    /// Caps each worker's address space at `bytes` (`RLIMIT_AS`), so that one runaway task
    /// cannot take the machine's memory.
    ///
    /// A task whose allocation fails under the cap aborts its worker; it fails with
    /// [`TaskError::MemoryLimit`](crate::TaskError::MemoryLimit) (told apart from other aborts by the report Rust's
    /// allocation failure handler writes to stderr, which the pool then reads and passes on
    /// to its own stderr), and the pool replaces the worker. Address space is more than
    /// resident memory: leave room for the program's code, libraries and thread stacks.
    ///
    /// # Caveats
    ///
    /// The pool's thread copies the workers' stderr to this process's stderr; if that stderr
    /// blocks (a full pipe that nobody reads), the pool waits with it.
    ///
    /// The default value of this option is no limit. Zero is refused by
    /// [`build`](PoolBuilder::build).
    pub fn memory_limit(&mut self, bytes: u64) -> &mut PoolBuilder {
        self.memory_limit = Some(bytes);
        self
    }

    /// How worker processes are started: on this machine, or through a command that starts
    /// this program elsewhere (see [`Launcher`]).
    ///
    /// The default value of this option is [`Launcher::local`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # offload::init();
    /// use offload::{Launcher, ProcessPool};
    ///
    /// let pool = ProcessPool::builder()
    ///     .launcher(Launcher::command("ssh").args(["-T", "node1"]).remote_program("/opt/app"))
    ///     .build()?;
    /// # Ok::<(), offload::Error>(())
    /// ```
    pub fn launcher(&mut self, launcher: Launcher) -> &mut PoolBuilder {
        self.launcher = launcher;
        self
    }

    /// Makes the pool elastic: it keeps `min_workers` workers at all times, starts another one
    /// (up to [`workers`](PoolBuilder::workers)) whenever a task waits and no worker is idle
    /// or starting for it, and retires a worker that has been idle for
    /// [`idle_timeout`](PoolBuilder::idle_timeout), down to `min_workers` again. A retired
    /// worker is idle by definition: retiring never cancels a task.
    /// [`ProcessPool::stats`](crate::ProcessPool::stats) shows the workers running now.
    ///
    /// The default value of this option is `workers`: a fixed pool, whose workers all start
    /// when it is built. Zero is allowed (no worker runs while no task does); more than
    /// `workers` is refused by [`build`](PoolBuilder::build).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # offload::init();
    /// use std::time::Duration;
    ///
    /// // One worker while idle, up to eight under load, back to one after 30 s without work.
    /// let pool = offload::ProcessPool::builder()
    ///     .workers(8)
    ///     .min_workers(1)
    ///     .idle_timeout(Duration::from_secs(30))
    ///     .build()?;
    /// # Ok::<(), offload::Error>(())
    /// ```
    pub fn min_workers(&mut self, min_workers: usize) -> &mut PoolBuilder {
        self.min_workers = Some(min_workers);
        self
    }

    /// How long a worker above [`min_workers`](PoolBuilder::min_workers) may stay idle before
    /// it is retired (it exits after its last task, and is reaped). It means nothing to a fixed
    /// pool.
    ///
    /// The default value of this option is [`DEFAULT_IDLE_TIMEOUT`] (60 s). Zero is refused by
    /// [`build`](PoolBuilder::build).
    pub fn idle_timeout(&mut self, idle_timeout: Duration) -> &mut PoolBuilder {
        self.idle_timeout = Some(idle_timeout);
        self
    }

    /// Runs `init` in every worker before its first task: in the first workers, in
    /// replacements, and in the successors of retired workers. It is a function of no
    /// arguments returning `()` or `Result<(), E>` with `E: Display` (see [`InitFn`]), the
    /// place to load a model or open a connection once per worker instead of once per task.
    /// What it sets up lives in the worker's own `static`s (a [`OnceLock`](std::sync::OnceLock)),
    /// which a worker process keeps between its tasks.
    ///
    /// A worker whose `init` fails (returns an error, panics, exits, is killed, or runs past
    /// [`init_timeout`](PoolBuilder::init_timeout)) never serves: it is stopped, and another
    /// one is started after a short pause (20 ms, then 40 ms). After 3 start-up failures in a
    /// row (of `init`, or of the launch and handshake) the pool stops starting workers for a
    /// back-off of 1 s, doubling after every further failure up to 60 s, and every queued task
    /// fails with [`TaskError::InitFailed`](crate::TaskError::InitFailed) carrying the
    /// initializer's message (or with [`TaskError::Spawn`](crate::TaskError::Spawn) for a
    /// launch or handshake error). A task spawned during the back-off waits for its end, then
    /// for one new attempt, and fails the same way if that fails too; the first worker that
    /// starts ends the back-off. [`PoolStats::start_failures`](crate::PoolStats) counts the
    /// failed start-ups.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # offload::init();
    /// use std::sync::OnceLock;
    ///
    /// static WEIGHTS: OnceLock<Vec<f32>> = OnceLock::new();
    ///
    /// fn load_weights() -> Result<(), std::io::Error> {
    ///     let bytes = std::fs::read("weights.bin")?;
    ///     let _ = WEIGHTS.set(bytes.iter().map(|&b| f32::from(b)).collect());
    ///     Ok(())
    /// }
    ///
    /// fn score(x: f32) -> f32 {
    ///     WEIGHTS.get().expect("loaded by init").iter().map(|w| w * x).sum()
    /// }
    ///
    /// # futures_lite::future::block_on(async {
    /// let pool = offload::ProcessPool::builder().workers(4).init(load_weights).build()?;
    /// pool.ready().await?; // every worker has loaded the weights
    /// let s = pool.spawn(score, 0.5).await?;
    /// # Ok::<(), offload::Error>(()) }).unwrap();
    /// ```
    pub fn init<F: InitFn<M>, M>(&mut self, init: F) -> &mut PoolBuilder {
        let _ = init;
        self.init = Some(init_entry_of::<F, M>());
        self
    }

    /// How long [`init`](PoolBuilder::init) may run in a worker before the start-up counts as
    /// failed and the worker is stopped.
    ///
    /// The default value of this option is [`DEFAULT_INIT_TIMEOUT`] (60 s). Zero is refused by
    /// [`build`](PoolBuilder::build).
    pub fn init_timeout(&mut self, timeout: Duration) -> &mut PoolBuilder {
        self.init_timeout = Some(timeout);
        self
    }

    /// Sets an environment variable for every worker, as
    /// [`Command::env`](std::process::Command::env) does; the workers otherwise inherit this
    /// process's environment (for remote workers, see [`Launcher`]: the variable is set where
    /// the worker runs). It is in the worker's environment when the program starts, so that
    /// libraries reading it early (`OMP_NUM_THREADS`) see it.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # offload::init();
    /// let pool = offload::ProcessPool::builder()
    ///     .env("OMP_NUM_THREADS", "1")
    ///     .env_remove("DISPLAY")
    ///     .current_dir("/tmp")
    ///     .build()?;
    /// # Ok::<(), offload::Error>(())
    /// ```
    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut PoolBuilder {
        self.environment
            .set(key.as_ref(), Some(value.as_ref().to_os_string()));
        self
    }

    /// Removes an environment variable from every worker's environment, as
    /// [`Command::env_remove`](std::process::Command::env_remove) does.
    pub fn env_remove(&mut self, key: impl AsRef<OsStr>) -> &mut PoolBuilder {
        self.environment.set(key.as_ref(), None);
        self
    }

    /// The working directory of every worker, as
    /// [`Command::current_dir`](std::process::Command::current_dir) sets it; a relative path
    /// is taken from this process's working directory for local workers, and from the login
    /// directory for ssh workers. A directory that does not exist fails the start-up with
    /// [`TaskError::Spawn`](crate::TaskError::Spawn).
    ///
    /// The default value of this option is this process's working directory for local
    /// workers, and what the launcher gives for remote ones.
    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut PoolBuilder {
        self.environment.dir = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Starts workers only when tasks wait for them.
    pub(crate) fn on_demand(&mut self) -> &mut PoolBuilder {
        self.on_demand = true;
        self
    }

    /// Starts the pool's driver thread and its worker processes.
    ///
    /// Returns once the first workers' processes (all of them, or
    /// [`min_workers`](PoolBuilder::min_workers)) have been started; their handshakes and
    /// [`init`](PoolBuilder::init) finish in the background, and tasks spawned meanwhile wait
    /// for them ([`ProcessPool::ready`](crate::ProcessPool::ready) waits for that).
    ///
    /// # Errors
    ///
    /// - [`Error::Config`] for zero workers, zero tasks per worker, a zero memory limit, idle
    ///   timeout or init timeout, or more `min_workers` than `workers`;
    /// - [`Error::Spawn`] if the driver thread or a worker process cannot be started;
    /// - [`Error::NotInitialized`] in a process that was started as a worker but did not call
    ///   [`init`](crate::init) first in `main` (it would otherwise start workers without end).
    pub fn build(&self) -> Result<ProcessPool, Error> {
        if crate::child::is_stray_worker() {
            return Err(Error::NotInitialized);
        }
        if self.max_tasks_per_worker == Some(0) {
            return Err(Error::Config(
                "a worker must be allowed at least one task".into(),
            ));
        }
        if self.memory_limit == Some(0) {
            return Err(Error::Config("a memory limit of zero bytes".into()));
        }
        let workers = match self.workers {
            Some(0) => return Err(Error::Config("a pool needs at least one worker".into())),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let min_workers = self.min_workers.unwrap_or(workers);
        if min_workers > workers {
            return Err(Error::Config(format!(
                "min_workers ({min_workers}) is more than workers ({workers})"
            )));
        }
        if self.idle_timeout == Some(Duration::ZERO) {
            return Err(Error::Config("an idle timeout of zero".into()));
        }
        if self.init_timeout == Some(Duration::ZERO) {
            return Err(Error::Config("an init timeout of zero".into()));
        }
        let (jobs, state) = driver::start(driver::Options {
            workers,
            min_workers,
            idle_timeout: Some(self.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT)),
            init: self.init,
            init_timeout: self.init_timeout.unwrap_or(DEFAULT_INIT_TIMEOUT),
            environment: self.environment.clone(),
            max_tasks_per_worker: self.max_tasks_per_worker,
            on_demand: self.on_demand,
            memory_limit: self.memory_limit,
            launcher: self.launcher.clone(),
        })?;
        Ok(ProcessPool {
            inner: Arc::new(Inner {
                jobs,
                state,
                workers,
                min_workers,
            }),
        })
    }
}
