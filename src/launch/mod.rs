//! How a worker process is started, which identity it must show, and how it is killed: a
//! local exec of this same executable, or a command that starts it elsewhere with its stdin
//! and stdout forwarded.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_process::{Child, ChildStderr, ChildStdin, ChildStdout};

use self::copy::Delivery;
use crate::protocol::build::{build_id, content_id};
use crate::protocol::{WORKER_ENV, WORKER_FLAG};
use crate::sys::exe::current_program;
use crate::sys::signal::{first_stop_signal, Pidfd, Signal, Stopper};
use crate::sys::wait::within;

pub(crate) mod copy;
mod environment;
mod ssh;

pub(crate) use environment::Environment;

/// Where and how a pool's worker processes are started: on this machine (the default), or
/// through any command that starts this same program elsewhere with its stdin and stdout
/// forwarded (`ssh host`, `docker exec -i box`, a wrapper such as `nice` or `sudo -u`).
///
/// A worker started through a command is a *remote* worker, whatever machine it runs on: it
/// proves its build by the executable's content (the ELF build-id, or a hash of the file), it
/// reports its own pid and host ([`ProcessTask::host`](crate::ProcessTask::host)), and it is
/// stopped by a message to its control thread, which applies `SIGTERM` → cancel timeout →
/// `SIGKILL` to its own process group; if it has not exited by then, the launcher process is
/// killed. It exits, with everything it started, as soon as its input closes.
///
/// # Examples
///
/// ```no_run
/// # offload::init();
/// use offload::{Launcher, ProcessPool};
///
/// // Workers at a lower priority, started through `nice`:
/// let pool = ProcessPool::builder()
///     .workers(2)
///     .launcher(Launcher::command("nice").args(["-n", "10"]))
///     .build()?;
/// # Ok::<(), offload::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Launcher {
    kind: Kind,
    /// The launcher's own arguments, before the worker's command line.
    args: Vec<OsString>,
    /// The worker executable on the other side.
    remote_program: Option<PathBuf>,
}

#[derive(Debug, Clone, Default)]
enum Kind {
    /// `current_program() --worker` on this machine.
    #[default]
    Local,
    /// `program args.. remote_program --worker`.
    Command(OsString),
    /// `srun --ntasks=1 --unbuffered --quiet [--overlap] [args..] <program> --worker`.
    Srun,
    /// `ssh [options] host exec <copy or remote_program> --worker`, over `hosts` in turn.
    Ssh {
        hosts: Vec<String>,
        /// Which host the next worker goes to.
        next: Arc<AtomicUsize>,
    },
}

impl Launcher {
    /// Workers on this machine, started from this very executable (`/proc/self/exe
    /// --worker`): the default.
    pub fn local() -> Launcher {
        Launcher::default()
    }

    /// Workers started as `program [args..] <remote program> --worker`, where the remote
    /// program is this executable's path unless [`remote_program`](Launcher::remote_program)
    /// names another. The command must forward its stdin and stdout to the worker's, unchanged
    /// (for `docker` and `kubectl`, that is `exec -i`; for `srun`, `--unbuffered`).
    ///
    /// # Examples
    ///
    /// ```
    /// use offload::Launcher;
    ///
    /// let launcher = Launcher::command("docker")
    ///     .args(["exec", "-i", "box"])
    ///     .remote_program("/opt/app/bin/app");
    /// assert!(!launcher.is_local());
    /// ```
    pub fn command(program: impl Into<OsString>) -> Launcher {
        Launcher {
            kind: Kind::Command(program.into()),
            ..Launcher::default()
        }
    }

    /// Workers on `destination` (`host`, `user@host`, or a `Host` of the ssh configuration),
    /// started with `ssh -T -o BatchMode=yes -o ConnectTimeout=10 [args..] destination`.
    ///
    /// Unless [`remote_program`](Launcher::remote_program) names the executable there, this
    /// program is copied to `${XDG_CACHE_HOME:-~/.cache}/offload/worker-<content id>` on the
    /// host the first time a worker starts there (once per build: a later build gets a file of
    /// its own), through the worker's own connection, into a directory only the user can
    /// write, under a temporary name renamed into place; later starts find it and skip the
    /// copy. The workers of one pool copy to a host one at a time, so a pool of eight sends the
    /// file once. Copies of other builds not rewritten for 30 days are removed when a new copy
    /// is written. The remote login shell must be able to run `sh -c '…'`. Its
    /// [`args`](Launcher::args) are ssh options (`-F ssh_config`, `-p 2222`, `-i key`).
    ///
    /// # Examples
    ///
    /// ```
    /// use offload::Launcher;
    ///
    /// let launcher = Launcher::ssh("node1").args(["-F", "ssh_config"]);
    /// assert!(!launcher.is_local());
    /// ```
    pub fn ssh(destination: impl Into<String>) -> Launcher {
        Launcher::ssh_hosts([destination])
    }

    /// Workers over ssh on each of `destinations` in turn (see [`Launcher::ssh`]): the first
    /// worker on the first host, the next on the second, and so on, replacements too.
    ///
    /// # Panics
    ///
    /// If `destinations` is empty.
    pub fn ssh_hosts<I>(destinations: I) -> Launcher
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let hosts: Vec<String> = destinations.into_iter().map(Into::into).collect();
        assert!(
            !hosts.is_empty(),
            "Launcher::ssh_hosts needs at least one host"
        );
        Launcher {
            kind: Kind::Ssh {
                hosts,
                next: Arc::default(),
            },
            ..Launcher::default()
        }
    }

    /// Workers as Slurm job steps: each worker is one long-lived step, started with
    /// `srun --ntasks=1 --nodes=1 --unbuffered --quiet [args..] sh -c '<find or receive the
    /// copy, then exec it --worker>'` (never one step per task). Inside an allocation
    /// (`salloc`, `sbatch`: `SLURM_JOB_ID` is set) every worker is a step of that job, started
    /// with `--overlap` so that the pool's steps run at the same time; outside one, each
    /// worker's `srun` gets a job of its own. Its [`args`](Launcher::args) are srun options
    /// (`--partition=cpu`, `--cpus-per-task=4`).
    ///
    /// The program gets to the node by itself, as for [`Launcher::ssh`]: each step looks for
    /// this build's copy in `${XDG_CACHE_HOME:-~/.cache}/offload` on its node and receives it
    /// through its stdin if it is missing (on a home directory that the nodes share, that is
    /// once for the whole cluster). With [`remote_program`](Launcher::remote_program) the step
    /// runs that file instead (`std::env::current_exe()` where the nodes see this program's
    /// file system; a path given to srun's own `--bcast=<path>`). Cancel and timeout stop the
    /// worker's process group through its control thread; killing the `srun` process, which the
    /// pool does if the worker does not confirm its exit in time, cancels the step.
    ///
    /// # Examples
    ///
    /// ```
    /// use offload::Launcher;
    ///
    /// let launcher = Launcher::srun().arg("--partition=cpu");
    /// assert!(!launcher.is_local());
    /// ```
    pub fn srun() -> Launcher {
        Launcher {
            kind: Kind::Srun,
            ..Launcher::default()
        }
    }

    /// Adds one argument of the launcher's own, before the worker's command line.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Launcher {
        self.args.push(arg.into());
        self
    }

    /// Adds arguments of the launcher's own, before the worker's command line.
    pub fn args<I>(mut self, args: I) -> Launcher
    where
        I: IntoIterator,
        I::Item: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Where the worker executable is on the other side. The file there must have the same
    /// content as this program (the same build): any other is refused in the handshake.
    ///
    /// The default value of this option is the path of this executable
    /// (`std::env::current_exe`), which fits a launcher that runs on this machine or one that
    /// sees the same file system. It means nothing to [`Launcher::local`].
    pub fn remote_program(mut self, path: impl Into<PathBuf>) -> Launcher {
        self.remote_program = Some(path.into());
        self
    }

    /// Whether workers run as local children of this process (and are signalled directly).
    pub fn is_local(&self) -> bool {
        matches!(self.kind, Kind::Local)
    }

    /// Whether a pool sends jobs ahead to its workers (docs/architecture.md, "Pipelined
    /// dispatch"). Not through srun: its forwarding of a worker's output delivered the many
    /// small answers of a pipeline at about 2,400 a second with the CPUs idle, a quarter of
    /// what one job at a time reaches (`cargo bench --bench launchers`, 2026-12-04).
    pub(crate) fn pipelines(&self) -> bool {
        !matches!(self.kind, Kind::Srun)
    }

    /// Starts one worker process with piped stdin and stdout (and stderr if `pipe_stderr`),
    /// in its own process group so that a terminal's Ctrl-C reaches only the parent, which
    /// decides what workers do.
    ///
    /// `environment` reaches the worker as each launcher allows: on the local command; on
    /// srun's own environment (which srun exports to the step) and `--chdir`; as
    /// `sh -c 'cd …' sh DIR env …` words before a command launcher's program; as shell text
    /// before ssh's remote command.
    pub(crate) fn start(
        &self,
        pipe_stderr: bool,
        environment: &Environment,
    ) -> io::Result<Launched> {
        // Every worker carries the marker that makes it serve before `main` (set last: the
        // pool's own variables cannot remove it).
        let mut environment = environment.clone();
        environment.set(WORKER_ENV.as_ref(), Some("1".into()));
        let environment = &environment;
        // Without a remote program named, ssh and srun workers find or receive their copy.
        let copying = self.remote_program.is_none();
        let mut command = match &self.kind {
            Kind::Local => {
                let mut command = std::process::Command::new(current_program());
                environment.apply(&mut command, true);
                command
            }
            Kind::Command(program) => {
                let mut command = std::process::Command::new(program);
                command.args(&self.args).args(environment.words());
                command.arg(self.program_elsewhere()?);
                command
            }
            Kind::Srun => {
                let mut command = std::process::Command::new("srun");
                command.args(["--ntasks=1", "--nodes=1", "--unbuffered", "--quiet"]);
                if std::env::var_os("SLURM_JOB_ID").is_some() {
                    command.arg("--overlap");
                }
                environment.apply(&mut command, false);
                if let Some(dir) = &environment.dir {
                    let mut chdir = OsString::from("--chdir=");
                    chdir.push(dir);
                    command.arg(chdir);
                }
                command.args(&self.args);
                if copying {
                    // Steps may land on any node: each start looks for the copy on its own.
                    command.args(["sh", "-c", &copy::script()?]);
                    return self.spawn(command, pipe_stderr, None, copying);
                }
                command.arg(self.program_elsewhere()?);
                command
            }
            Kind::Ssh { hosts, next } => {
                let host = &hosts[next.fetch_add(1, Ordering::Relaxed) % hosts.len()];
                let mut command = std::process::Command::new("ssh");
                command.args(ssh::base_options()).args(&self.args).arg(host);
                let worker = match &self.remote_program {
                    Some(program) => ssh::worker_command(program),
                    None => ssh::copying_worker_command()?,
                };
                command.arg(ssh::with_environment(environment, &worker));
                // The worker line, already complete: the flag below is not added again.
                return self.spawn(command, pipe_stderr, Some(host), copying);
            }
        };
        command.arg(WORKER_FLAG);
        let launched = self.spawn(command, pipe_stderr, None, false);
        match (&self.kind, &environment.dir) {
            (Kind::Local, Some(dir)) => launched.map_err(|err| {
                io::Error::new(
                    err.kind(),
                    format!("{err} (starting a worker in {})", dir.display()),
                )
            }),
            _ => launched,
        }
    }

    /// The worker executable a command or srun launcher names: `remote_program`, else this
    /// executable's real path (`/proc/self/exe` would name the launcher on the other side).
    fn program_elsewhere(&self) -> io::Result<PathBuf> {
        match &self.remote_program {
            Some(path) => Ok(path.clone()),
            None => std::env::current_exe(),
        }
    }

    /// Spawns the launch `command` with the protocol's pipes, in a process group of its own;
    /// `host` is the one it reaches (ssh), and `copying` says it runs the copy script.
    fn spawn(
        &self,
        mut command: std::process::Command,
        pipe_stderr: bool,
        host: Option<&str>,
        copying: bool,
    ) -> io::Result<Launched> {
        command.process_group(0);
        let mut command = async_process::Command::from(command);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(match pipe_stderr {
                true => Stdio::piped(),
                false => Stdio::inherit(),
            })
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|e| self.explain(e))?;
        let pidfd = Pidfd::open(child.id());
        let missing = || io::Error::other("worker pipes were not created");
        let input = child.stdin.take().ok_or_else(missing)?;
        let output = child.stdout.take().ok_or_else(missing)?;
        widen_pipe(&input);
        widen_pipe(&output);
        let stderr = child.stderr.take();
        Ok(Launched {
            process: Process {
                stopper: Arc::new(Stopper::new(child.id())),
                child,
                pidfd,
                reaped: false,
            },
            input,
            output,
            stderr,
            // One destination: the launcher, its options and the host.
            delivery: copying.then(|| {
                let mut destination = vec![OsString::from(self.program_name())];
                destination.extend(self.args.iter().cloned());
                destination.extend(host.map(OsString::from));
                Delivery::new(destination)
            }),
            via: match (&self.kind, host) {
                (Kind::Local, _) => None,
                (_, Some(host)) => Some(format!("{} {host}", self.program_name())),
                (_, None) => Some(self.program_name()),
            },
        })
    }

    /// The launcher's program, as errors name it.
    fn program_name(&self) -> String {
        match &self.kind {
            Kind::Local => current_program().display().to_string(),
            Kind::Command(program) => program.to_string_lossy().into_owned(),
            Kind::Srun => "srun".to_string(),
            Kind::Ssh { .. } => "ssh".to_string(),
        }
    }

    /// An error of the launch, with the launcher named.
    fn explain(&self, err: io::Error) -> io::Error {
        if self.is_local() {
            return err;
        }
        let program = self.program_name();
        io::Error::new(
            err.kind(),
            format!("could not run the launcher {program}: {err}"),
        )
    }

    /// The build identity a worker started by this launcher must answer the handshake with.
    pub(crate) fn expected_build(&self) -> u64 {
        match self.kind {
            Kind::Local => build_id(),
            Kind::Command(_) | Kind::Srun | Kind::Ssh { .. } => content_id(),
        }
    }
}

/// A worker process just started, before the handshake.
pub(crate) struct Launched {
    pub(crate) process: Process,
    /// Its stdin: the protocol towards the worker.
    pub(crate) input: ChildStdin,
    /// Its stdout: the protocol from the worker.
    pub(crate) output: ChildStdout,
    /// Its stderr, when asked for with `pipe_stderr`.
    pub(crate) stderr: Option<ChildStderr>,
    /// Set when the program is looked for, and copied if missing, on the other side before
    /// the worker starts: [`copy::deliver`] comes before the handshake.
    pub(crate) delivery: Option<Delivery>,
    /// What started it, as start-up errors name it (`ssh node1`, `srun`); `None` for a local
    /// worker.
    pub(crate) via: Option<String>,
}

/// A started worker process, as far as signals and exit go.
///
/// The process leads a process group of its own, and every signal goes to that whole group,
/// so that what a task started (`sleep`, a compiler) goes with its worker. Signals are sent
/// only while the process is unreaped, which keeps its pid, the group's number, from being
/// given to another process (see `sys::signal`); reaping comes last, after a final `SIGKILL`
/// to whatever is left of the group.
pub(crate) struct Process {
    child: Child,
    /// Opened right after the spawn, before anything could reap the child.
    pidfd: Pidfd,
    /// Set once the exit status was collected: no signal may be sent from then on.
    reaped: bool,
    /// What lets a task's handle signal the group (closed before the reap, and on drop).
    stopper: Arc<Stopper>,
}

impl Process {
    /// The worker's pid on its host.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first signal of a stop, which needs no waiting: `SIGTERM`, or `SIGKILL` for a zero
    /// grace, to the whole group.
    pub(crate) fn signal_stop(&self, grace: Duration) {
        if !self.reaped {
            let _ = self.pidfd.signal_group(first_stop_signal(grace));
        }
    }

    /// `SIGKILL` to the whole group.
    pub(crate) fn kill(&self) {
        if !self.reaped {
            let _ = self.pidfd.signal_group(Signal::KILL);
        }
    }

    /// What lets the handle of the task this process runs alone signal its group.
    pub(crate) fn stopper(&self) -> &Arc<Stopper> {
        &self.stopper
    }

    /// Kills what is left of the group, waits for the exit and reaps.
    pub(crate) async fn reap(&mut self) -> io::Result<ExitStatus> {
        self.stopper.close();
        self.kill();
        let status = self.child.status().await;
        self.reaped = true;
        status
    }

    /// Waits up to `limit` for the exit; then kills what is left of the group, reaps, and
    /// returns the status.
    pub(crate) async fn exit_within(&mut self, limit: Duration) -> Option<io::Result<ExitStatus>> {
        within(limit, self.pidfd.exited()).await?;
        Some(self.reap().await)
    }
}

impl Drop for Process {
    /// A worker dropped unreaped (its driver is gone) takes its group with it; `kill_on_drop`
    /// then reaps it in the background.
    fn drop(&mut self) {
        self.stopper.close();
        self.kill();
    }
}

/// The pipe buffer asked for: large payloads then cross in a few big copies instead of many
/// 64 KiB ones (which cost a wake-up each), measured in docs/performance.md.
const PIPE_BUFFER: usize = 1 << 20;

/// Grows a pipe's buffer towards [`PIPE_BUFFER`], as far as the system allows; a refusal
/// only costs speed.
fn widen_pipe(pipe: &impl std::os::fd::AsFd) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let max = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(PIPE_BUFFER);
        let _ = rustix::pipe::fcntl_setpipe_size(pipe, PIPE_BUFFER.min(max));
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = pipe;
}
