//! [`PoolBuilder`]: a pool's options, in the style of `std::process::Command`.

use std::sync::Arc;

use super::{driver, Inner, ProcessPool};
use crate::error::Error;
use crate::launch::Launcher;

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
}

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

    /// Starts workers only when tasks wait for them.
    pub(crate) fn on_demand(&mut self) -> &mut PoolBuilder {
        self.on_demand = true;
        self
    }

    /// Starts the pool's driver thread and its worker processes.
    ///
    /// Returns once every worker process has been started; their start-up handshakes finish
    /// in the background, and tasks spawned meanwhile wait for them.
    ///
    /// # Errors
    ///
    /// - [`Error::Config`] for zero workers, zero tasks per worker or a zero memory limit;
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
        let (jobs, state) = driver::start(driver::Options {
            workers,
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
            }),
        })
    }
}
