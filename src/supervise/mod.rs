//! One worker seen from the parent: its handshake, and all of its pipe I/O (sending jobs,
//! reading what it answers, forwarding its stderr), and the ways it ends (burial after death,
//! stop, graceful shutdown). The driver never touches a worker's pipe but through here.

use std::future::Future;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::io::BufReader;
use futures_lite::{future, AsyncBufReadExt, AsyncWriteExt};

use crate::error::TaskError;
use crate::launch::copy::{self, Delivery, Undelivered};
use crate::launch::{Environment, Launched, Launcher, Process};
use crate::protocol::build::target;
use crate::protocol::event::{Credit, Report, Reports, Unwatched};
use crate::protocol::{codec, frame, CodecFailure, FromWorker, Run, ToWorker};
use crate::sys::reactor::Pipe;
use crate::sys::region::Region;
use crate::sys::signal::Stopper;
use crate::sys::wait::within;
use crate::trace;

/// How long a new worker may take to answer the handshake before it is killed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a worker that closed its output, or was asked to shut down, may take to exit
/// before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// Size of the buffer in front of each worker's output pipe.
const READ_BUFFER: usize = 64 * 1024;

/// How much of what a failed launcher wrote is quoted, in characters.
const LAUNCHER_SAID: usize = 1000;

/// The usual cause of a worker that does not speak the protocol.
const INIT_HINT: &str =
    "is it built with the before-main feature (the default), or does `main` call offload::init() first?";

/// How long a worker is idle before its shared memory gives back what large frames grew.
const IDLE_GIVE_BACK: Duration = Duration::from_secs(1);

/// The job id of the initializer's run; task ids start at 1.
const INIT_ID: u64 = 0;

/// A worker's answer to a job.
pub(crate) enum Reply {
    /// The encoded result is [`WorkerLink::payload`] from `payload_start` on.
    Done {
        payload_start: usize,
    },
    Failed(TaskError),
}

/// How a worker was lost while running a job.
pub(crate) enum Lost {
    /// Its output ended: it exited or was killed.
    Died,
    /// Its output ended in the middle of a frame.
    CutShort,
    /// It wrote something that breaks the protocol.
    Broken(String),
}

/// How much longer than its grace a remote worker may take to confirm its exit (its launcher
/// exiting) before the launcher process is killed.
const REMOTE_STOP_MARGIN: Duration = Duration::from_secs(1);

/// What else goes to a worker while it runs a job: the jobs a pipeline sends ahead and the
/// ones it withdraws (`Skip`), and what the worker answers about them.
pub(crate) trait Feed {
    /// Waits for frames to send to the worker. They are at most [`ATOMIC_WRITE`] bytes in all,
    /// so that they are written whole or not at all: the wait, and the write, may be dropped
    /// when the reply comes.
    async fn next(&self) -> Vec<u8>;
    /// The frames [`next`](Feed::next) returned last were written.
    fn written(&self);
    /// The worker withdrew job `id` before it started.
    fn skipped(&self, id: u64) -> Result<(), String>;
}

/// A job with nothing beside it.
pub(crate) struct Alone;

impl Feed for Alone {
    async fn next(&self) -> Vec<u8> {
        future::pending().await
    }
    fn written(&self) {}
    fn skipped(&self, id: u64) -> Result<(), String> {
        Err(format!(
            "a Skipped message for task {id}, which was not sent ahead"
        ))
    }
}

/// The most bytes a single write to a pipe writes whole or not at all (`PIPE_BUF`).
pub(crate) const ATOMIC_WRITE: usize = 4096;

/// The `Piped` marker frame, with `confirm` or without.
pub(crate) fn piped_marker(confirm: bool) -> &'static [u8] {
    static MARKERS: std::sync::OnceLock<[Vec<u8>; 2]> = std::sync::OnceLock::new();
    let markers = MARKERS
        .get_or_init(|| [false, true].map(|confirm| frame::frame(&ToWorker::Piped { confirm })));
    &markers[usize::from(confirm)]
}

/// What a worker said about the next job sent ahead, after the job before it.
pub(crate) enum Ahead {
    /// It starts job `id`.
    Started(u64),
    /// It withdrew a job (the feed was told which).
    Skipped,
    /// It answered the job before (a reply that crossed a cancel or a timeout, not read).
    Answered,
}

/// A worker process that was started and has not answered the handshake yet.
pub(crate) struct Starting {
    launched: Launched,
    expected_build: u64,
    memory_limit: Option<u64>,
    remote: bool,
}

/// The parent's link to one worker process that passed the handshake.
pub(crate) struct WorkerLink {
    /// The worker's pid on its host, as its hello confirmed.
    pid: u32,
    /// The host it runs on, as its hello said; `None` for a local worker.
    host: Option<Arc<str>>,
    /// Started by a launcher other than a local exec: `process` is the launcher, and the
    /// worker is stopped by a message to its control thread.
    remote: bool,
    process: Process,
    input: Pipe,
    output: BufReader<Pipe>,
    /// The body of the last frame read.
    buf: Vec<u8>,
    /// For a local worker that opened them, the shared memory for large frames: jobs to it,
    /// and replies from it (see [`frame`]).
    jobs: Option<Region>,
    replies: Option<Region>,
    /// The address-space cap it was given, to name in a `MemoryLimit` error.
    memory_limit: Option<u64>,
    /// Its stderr, until [`forward_stderr`](WorkerLink::forward_stderr) takes it.
    stderr: Option<Pipe>,
    /// The end of what it wrote to its stderr, as [`forward_stderr`] keeps it.
    stderr_tail: Option<Arc<StderrTail>>,
    /// What started it, for start-up errors (see [`Launched::via`]).
    via: Option<String>,
}

impl WorkerLink {
    /// Starts a worker with `launcher`. Its stderr is piped through the parent: to quote a
    /// launcher that fails to start, to keep the last words of a worker that dies, and to
    /// tell an allocation failure under a memory limit from other aborts.
    pub(crate) fn launch(
        launcher: &Launcher,
        environment: &Environment,
        memory_limit: Option<u64>,
    ) -> io::Result<Starting> {
        Ok(Starting {
            launched: launcher.start(true, environment)?,
            expected_build: launcher.expected_build(),
            memory_limit,
            remote: !launcher.is_local(),
        })
    }
}

impl Starting {
    /// Exchanges `Hello`s: the worker must run this very build. Kills it on failure.
    pub(crate) async fn handshake(self) -> io::Result<WorkerLink> {
        let Launched {
            process,
            input,
            output,
            stderr,
            delivery,
            via,
        } = self.launched;
        // Registered with the driver's own poller (a failure drops `process`, which kills it).
        let input = Pipe::new(rustix::fd::OwnedFd::try_from(input)?)?;
        let output = Pipe::new(rustix::fd::OwnedFd::try_from(output)?)?;
        let stderr = match stderr {
            Some(stderr) => Some(Pipe::new(rustix::fd::OwnedFd::try_from(stderr)?)?),
            None => None,
        };
        let mut worker = WorkerLink {
            pid: process.pid(),
            host: None,
            remote: self.remote,
            process,
            input,
            output: BufReader::with_capacity(READ_BUFFER, output),
            buf: Vec::new(),
            jobs: None,
            replies: None,
            memory_limit: self.memory_limit,
            stderr,
            stderr_tail: None,
            via,
        };
        let delivered = match &delivery {
            Some(delivery) => worker.deliver(delivery).await,
            None => Ok(()),
        };
        let answer = match delivered {
            Ok(()) => within(HANDSHAKE_TIMEOUT, worker.greet(self.expected_build)).await,
            Err(err) => Some(Err(err)),
        };
        let err = match answer {
            Some(Ok(())) => return Ok(worker),
            Some(Err(err)) => err,
            None => io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{} did not answer within {HANDSHAKE_TIMEOUT:?}; {}",
                    worker.who(),
                    worker.hint()
                ),
            ),
        };
        worker.stop(Duration::ZERO, "it failed the handshake").await;
        Err(err)
    }
}

impl WorkerLink {
    /// Has the launcher's side find this program, or receive it (see [`copy`]).
    async fn deliver(&mut self, delivery: &Delivery) -> io::Result<()> {
        let who = self.who();
        match copy::deliver(
            delivery,
            &mut self.input,
            &mut self.output,
            HANDSHAKE_TIMEOUT,
        )
        .await
        {
            Ok(_) => Ok(()),
            Err(Undelivered::Ended) => Err(self.exited_during_start_up().await),
            Err(Undelivered::Failed(err)) => Err(io::Error::new(
                err.kind(),
                format!("{who} could not be given this program: {err}"),
            )),
        }
    }

    /// The error of a worker whose launcher exited before the handshake: its status and what
    /// it said.
    async fn exited_during_start_up(&mut self) -> io::Error {
        let who = self.who();
        let status = match self.process.reap().await {
            Ok(status) => status.to_string(),
            Err(err) => err.to_string(),
        };
        let said = self.launcher_said().await;
        io::Error::other(format!(
            "{who} exited during start-up ({status}){said}; {}",
            self.hint()
        ))
    }

    async fn greet(&mut self, expected_build: u64) -> io::Result<()> {
        // Without them (no memfd here), every frame goes through the pipe. Held by the link
        // from here on, not by this future: if the handshake times out, they stay open until
        // the worker is stopped and reaped, so that a late worker cannot open whatever took
        // their descriptor numbers meanwhile.
        if !self.remote {
            if let Ok((jobs, replies)) =
                Region::create().and_then(|jobs| Ok((jobs, Region::create()?)))
            {
                self.jobs = Some(jobs);
                self.replies = Some(replies);
            }
        }
        let hello = frame::frame(&ToWorker::Hello {
            build: expected_build,
            parent: std::process::id(),
            memory_limit: self.memory_limit,
            remote: self.remote,
            target: target(),
            log_level: log::max_level() as u8,
            regions: self
                .jobs
                .as_ref()
                .zip(self.replies.as_ref())
                .map(|(jobs, replies)| (jobs.raw_fd(), replies.raw_fd())),
        });
        let who = self.who();
        let sent = self.input.write_all(&hello).await;
        if !frame::read_frame_async(&mut self.output, &mut self.buf, None).await? {
            return Err(self.exited_during_start_up().await);
        }
        sent?;
        match frame::split::<FromWorker>(&self.buf) {
            Ok((FromWorker::Hello { build, .. }, _)) if build != expected_build => {
                Err(io::Error::other(format!(
                    "{who} runs a different build of the program \
                     ({build:016x}, this is {expected_build:016x})"
                )))
            }
            Ok((FromWorker::Hello { pid: got, host, .. }, _)) if self.remote => {
                self.pid = got;
                self.host = Some(host.into());
                Ok(())
            }
            Ok((
                FromWorker::Hello {
                    pid: got,
                    regions: opened,
                    ..
                },
                _,
            )) if got == self.pid => {
                if !opened {
                    (self.jobs, self.replies) = (None, None);
                }
                Ok(())
            }
            Ok((FromWorker::Hello { pid: got, .. }, _)) => Err(io::Error::other(format!(
                "{who} answered the handshake as process {got}: \
                 something between the parent and the worker is not the worker it started"
            ))),
            Ok((FromWorker::Refused { reason }, _)) => Err(io::Error::other(format!(
                "{who} refused to serve: {reason}"
            ))),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{who} did not answer the handshake; {}", self.hint()),
            )),
        }
    }

    /// Runs the pool's initializer (the trampoline at `entry`) as the worker's first job, and
    /// waits up to `timeout` for it. A worker whose initializer fails in any way (its error,
    /// a panic, an exit or a signal, the timeout) is stopped; the message says what happened.
    pub(crate) async fn initialize(
        mut self,
        entry: u64,
        timeout: Duration,
    ) -> Result<Self, String> {
        let run = frame::frame(&ToWorker::Run(Run {
            id: INIT_ID,
            entry,
            flags: 0,
            window: 0,
        }));
        let exchange = async {
            if self.send(&run).await.is_err() {
                return Err(Lost::Died);
            }
            self.reply(INIT_ID, &Unwatched, &Alone).await
        };
        let failure = match within(timeout, exchange).await {
            Some(Ok(Reply::Done { payload_start })) => {
                match codec::decode::<Result<(), String>>(self.payload(payload_start)) {
                    Ok(Ok(())) => return Ok(self),
                    Ok(Err(message)) => message,
                    Err(err) => format!("its outcome could not be decoded: {err}"),
                }
            }
            Some(Ok(Reply::Failed(TaskError::Panicked { message, location }))) => match location {
                Some(location) => format!("it panicked: {message} (at {location})"),
                None => format!("it panicked: {message}"),
            },
            Some(Ok(Reply::Failed(error))) => error.to_string(),
            Some(Err(Lost::Died | Lost::CutShort)) => {
                return Err(format!(
                    "{} while it ran the initializer",
                    self.bury(None).await
                ));
            }
            Some(Err(Lost::Broken(msg))) => format!("the worker broke the protocol: {msg}"),
            None => format!("it did not finish within {timeout:?}"),
        };
        self.stop(Duration::ZERO, "its initializer failed").await;
        Err(failure)
    }

    /// The end of what the launcher of a worker that exited wrote to its stderr (it is piped
    /// only for remote launchers and under a memory limit), as `: it said "…"`, also copied to
    /// this process's stderr.
    async fn launcher_said(&mut self) -> String {
        use futures_lite::AsyncReadExt;
        let Some(stderr) = self.stderr.as_mut() else {
            return String::new();
        };
        let mut said = Vec::new();
        let _ = within(EXIT_GRACE, stderr.read_to_end(&mut said)).await;
        let _ = std::io::Write::write_all(&mut std::io::stderr(), &said);
        let text = String::from_utf8_lossy(&said);
        let text = text.trim();
        if text.is_empty() {
            return String::new();
        }
        let skip = text.chars().count().saturating_sub(LAUNCHER_SAID);
        let tail: String = text.chars().skip(skip).collect();
        format!(": it said \"{}\"", tail.replace('\n', " / "))
    }

    /// The worker as start-up errors name it: `worker 123`, or `worker 123 (ssh node1)` with
    /// the pid of its launcher.
    fn who(&self) -> String {
        match &self.via {
            None => format!("worker {}", self.pid),
            Some(via) => format!("worker {} ({via})", self.pid),
        }
    }

    /// The usual cause of a worker that does not answer.
    fn hint(&self) -> &'static str {
        match self.remote {
            false => INIT_HINT,
            true => "did the launcher start this program's build on the other side, and does its `main` call offload::init() first?",
        }
    }

    /// The host the worker runs on; `None` for a local worker.
    pub(crate) fn host(&self) -> Option<&Arc<str>> {
        self.host.as_ref()
    }

    /// The worker's pid on its host.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// What lets the handle of the task this worker runs alone stop it from its own thread;
    /// `None` for a remote worker, which only its control thread may signal.
    pub(crate) fn stopper(&self) -> Option<Arc<Stopper>> {
        (!self.remote).then(|| self.process.stopper().clone())
    }

    /// The copy of the worker's stderr to ours: a future to run beside the worker until its
    /// stderr ends. It keeps the end of what the worker wrote, and watches for the report of
    /// an allocation failure, which [`bury`](WorkerLink::bury) turns into
    /// [`TaskError::MemoryLimit`].
    pub(crate) fn forward_stderr(&mut self) -> Option<impl Future<Output = ()> + 'static> {
        let stderr = self.stderr.take()?;
        let tail = Arc::new(StderrTail::default());
        self.stderr_tail = Some(tail.clone());
        // The writer thread starts here rather than at the future's first poll, so that it
        // exists before the worker serves (a pool's threads do not grow later, at a time
        // that depends on scheduling).
        Some(forward_stderr(stderr, tail, stderr_writer()))
    }

    /// Writes one complete frame (a job) to the worker: a large one through shared memory if
    /// it can.
    pub(crate) async fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        let body = &frame[frame::LEN_PREFIX..];
        match frame::into_region_async(self.jobs.as_mut(), &[body]).await {
            Some(marker) => self.input.write_all(&marker).await,
            None => self.input.write_all(frame).await,
        }
    }

    /// Writes a job that is piped (jobs may be sent ahead behind it) to an idle worker.
    pub(crate) async fn send_piped(&mut self, frame: &[u8]) -> io::Result<()> {
        self.input.write_all(piped_marker(false)).await?;
        self.send(frame).await
    }

    /// Waits for the worker to write something, or to close its output, while it has no job:
    /// either breaks the protocol. Returns how many bytes it wrote (0: it closed its output).
    ///
    /// After [`IDLE_GIVE_BACK`] of it, its shared memory gives back what large frames grew.
    pub(crate) async fn unasked_output(&mut self) -> io::Result<usize> {
        let (jobs, replies) = (&mut self.jobs, &mut self.replies);
        let grown = jobs.iter().chain(replies.iter()).any(Region::grown);
        let give_back = async {
            // No timer for a worker whose frames stayed small: the common case costs nothing.
            if grown {
                // The driver's own timer: one of async-io's would wake the thread that
                // holds its reactor (a caller under smol) at every idle period.
                crate::sys::reactor::sleep(IDLE_GIVE_BACK).await;
                // Neither side writes a region while the worker is idle.
                jobs.iter_mut()
                    .chain(replies.iter_mut())
                    .for_each(Region::give_back);
            }
            future::pending().await
        };
        future::or(
            async { self.output.fill_buf().await.map(|b| b.len()) },
            give_back,
        )
        .await
    }

    /// The body of the last frame read: a `Done` reply's payload is in it from
    /// `payload_start` on.
    pub(crate) fn payload(&self, payload_start: usize) -> &[u8] {
        &self.buf[payload_start..]
    }

    /// Reads the worker's answer to job `id`, handing what the job reports on the way to
    /// `reports` (and its `log` records to this process's logger); for a stream, grants the
    /// worker the credit its consumer gives meanwhile; sends what `feed` has, and tells it
    /// of the jobs the worker withdrew.
    pub(crate) async fn reply<R: Reports + ?Sized, F: Feed>(
        &mut self,
        id: u64,
        reports: &R,
        feed: &F,
    ) -> Result<Reply, Lost> {
        let pid = self.pid;
        let read = read_reply(
            &mut self.output,
            &mut self.buf,
            self.replies.as_mut(),
            id,
            pid,
            reports,
            feed,
        );
        // Written first: the worker may be waiting for credit while its reports keep coming.
        future::or(
            send_beside(&mut self.input, id, reports.credit(), feed),
            read,
        )
        .await
    }

    /// Reads what the worker says about the jobs sent ahead after the answer to the job
    /// before them (whose reports, and whose answer if it was not read, are dropped).
    pub(crate) async fn ahead<F: Feed>(&mut self, feed: &F) -> Result<Ahead, Lost> {
        loop {
            read_one(&mut self.output, &mut self.buf, self.replies.as_mut()).await?;
            let (header, _) = frame::split::<FromWorker>(&self.buf)
                .map_err(|e| Lost::Broken(format!("undecodable message: {e}")))?;
            return Ok(match header {
                FromWorker::Started { id } => Ahead::Started(id),
                FromWorker::Skipped { id } => {
                    feed.skipped(id).map_err(Lost::Broken)?;
                    Ahead::Skipped
                }
                FromWorker::Done { .. }
                | FromWorker::Panicked { .. }
                | FromWorker::Failed { .. } => Ahead::Answered,
                FromWorker::Progress { .. }
                | FromWorker::Items { .. }
                | FromWorker::Output { .. }
                | FromWorker::Log { .. } => continue,
                other => {
                    return Err(Lost::Broken(format!(
                        "unexpected {} message between tasks",
                        other.kind()
                    )))
                }
            });
        }
    }

    /// Sends the frames `feed` has ready now: the withdrawals of jobs sent ahead, when the job
    /// before them ends from outside.
    pub(crate) async fn send_ready<F: Feed>(&mut self, feed: &F) -> io::Result<()> {
        loop {
            let frames = match future::or(async { Some(feed.next().await) }, async {
                future::yield_now().await;
                None
            })
            .await
            {
                Some(frames) => frames,
                None => return Ok(()),
            };
            self.input.write_all(&frames).await?;
            feed.written();
        }
    }

    /// Collects the exit status of a worker whose output ended, and says how it died, with
    /// the end of what it wrote to its stderr: `captured` is what its task wrote to a captured
    /// fd 2 (where the worker's own last words went while it ran).
    pub(crate) async fn bury(mut self, captured: Option<Vec<u8>>) -> TaskError {
        drop(self.input);
        let pid = self.pid;
        let status = self.process.exit_within(EXIT_GRACE).await;
        if status.is_none() {
            self.process.kill();
            let _ = self.process.reap().await;
            return TaskError::Protocol(format!(
                "worker {pid} closed its output but kept running; it was killed"
            ));
        }
        let aborted = matches!(&status, Some(Ok(status)) if status.signal() == Some(SIGABRT));
        // Its stderr ends once its group is gone: what it said last is read by then. A
        // process that left the group may hold it open; the wait is short, unless the end
        // must tell an allocation failure from other aborts.
        let said = match &self.stderr_tail {
            Some(tail) => {
                let wait = match aborted && self.memory_limit.is_some() {
                    true => EXIT_GRACE,
                    false => LAST_WORDS_WAIT,
                };
                let _ = within(wait, tail.ended()).await;
                tail.bytes()
            }
            None => Vec::new(),
        };
        let said = match captured {
            Some(captured) if !captured.is_empty() => captured,
            _ => said,
        };
        let allocation_failed = said
            .windows(ALLOCATION_FAILED.len())
            .any(|w| w == ALLOCATION_FAILED);
        let stderr = last_words(&said);
        match status {
            Some(Ok(status)) if aborted => {
                // An allocation over the limit aborts; its report on stderr tells it apart.
                match self.memory_limit.filter(|_| allocation_failed) {
                    Some(limit) => TaskError::MemoryLimit { pid, limit },
                    None => died(pid, status, stderr),
                }
            }
            Some(Ok(status)) => died(pid, status, stderr),
            _ => TaskError::WorkerDied {
                pid,
                code: None,
                signal: None,
                stderr,
            },
        }
    }

    /// Stops the worker (`SIGTERM`, `grace`, `SIGKILL`) and reaps it.
    pub(crate) async fn stop(mut self, grace: Duration, reason: &str) {
        self.begin_stop(grace, reason).await;
        self.finish_stop(grace).await;
    }

    /// Starts a stop at once, so that the CPU is freed before anything else happens: a local
    /// worker gets `SIGTERM` (or `SIGKILL` for a zero grace) through its pidfd; a remote one
    /// gets a `Stop` message, on which its control thread signals its whole process group. See
    /// [`finish_stop`](WorkerLink::finish_stop).
    pub(crate) async fn begin_stop(&mut self, grace: Duration, reason: &str) {
        trace::worker_stopped(self.pid, reason);
        if !self.remote {
            self.process.signal_stop(grace);
            return;
        }
        let stop = frame::frame(&ToWorker::Stop {
            grace_ms: grace.as_millis().try_into().unwrap_or(u64::MAX),
        });
        // A worker that does not take the message is killed with its launcher in
        // `finish_stop`; the small frame fits in the pipe unless the worker is already stuck.
        let _ = within(REMOTE_STOP_MARGIN, self.input.write_all(&stop)).await;
    }

    /// Waits up to `limit` for the worker to exit, and reaps it if it did.
    pub(crate) async fn exited_within(&mut self, limit: Duration) -> bool {
        matches!(self.process.exit_within(limit).await, Some(Ok(_)))
    }

    /// The rest of a stop begun with [`begin_stop`](WorkerLink::begin_stop): waits up to
    /// `grace` for the exit (for a remote worker, `grace` and a margin for the exit to be
    /// confirmed by its launcher), sends `SIGKILL` (to the launcher, for a remote worker) if it
    /// did not come, and reaps.
    pub(crate) async fn finish_stop(mut self, grace: Duration) {
        drop(self.input);
        let wait = match self.remote {
            true => grace + REMOTE_STOP_MARGIN,
            false => grace,
        };
        if !wait.is_zero() && self.process.exit_within(wait).await.is_some() {
            return;
        }
        // Not reaped yet (no status was returned), so the group's number is still this
        // worker's: the signal reaches its group alone.
        self.process.kill();
        let _ = self.process.reap().await;
    }

    /// Asks an idle worker to exit and reaps it; kills it if it does not exit in time.
    pub(crate) async fn shut_down(mut self) {
        let _ = self.send(&frame::frame(&ToWorker::Shutdown)).await;
        drop(self.input);
        if self.process.exit_within(EXIT_GRACE).await.is_none() {
            self.process.kill();
            let _ = self.process.reap().await;
        }
    }
}

/// Reads frames until the answer to job `id`, handing its reports on the way to `reports`.
async fn read_reply<R: Reports + ?Sized, F: Feed>(
    output: &mut BufReader<Pipe>,
    buf: &mut Vec<u8>,
    mut replies: Option<&mut Region>,
    id: u64,
    pid: u32,
    reports: &R,
    feed: &F,
) -> Result<Reply, Lost> {
    // Reports read since this future last yielded: a worker that reports without pause must
    // not keep the driver from its other workers (a read that finds data does not yield).
    let mut unyielded = 0;
    loop {
        unyielded += 1;
        if unyielded == REPORTS_PER_TURN {
            unyielded = 0;
            future::yield_now().await;
        }
        read_one(output, buf, replies.as_deref_mut()).await?;
        let (header, payload) = frame::split::<FromWorker>(buf)
            .map_err(|e| Lost::Broken(format!("undecodable message: {e}")))?;
        let report = match header {
            FromWorker::Done { id: got } if got == id => {
                return Ok(Reply::Done {
                    payload_start: buf.len() - payload.len(),
                })
            }
            FromWorker::Panicked {
                id: got,
                message,
                location,
            } if got == id => return Ok(Reply::Failed(TaskError::Panicked { message, location })),
            FromWorker::Failed { id: got, error } if got == id => {
                return Ok(Reply::Failed(match error {
                    CodecFailure::Encode(msg) => TaskError::Encode(msg),
                    CodecFailure::Decode(msg) => TaskError::Decode(msg),
                }))
            }
            FromWorker::Progress {
                id: got,
                done,
                total,
            } if got == id => Report::Progress { done, total },
            FromWorker::Items { id: got, count } if got == id => Report::Items { count, payload },
            FromWorker::Output { id: got, fd, cut } if got == id => Report::Output {
                fd,
                bytes: payload,
                cut,
            },
            FromWorker::Log { id: got, record } if got == id => {
                record.emit(id, pid);
                continue;
            }
            FromWorker::Skipped { id: withdrawn } => {
                feed.skipped(withdrawn).map_err(Lost::Broken)?;
                continue;
            }
            other => {
                return Err(Lost::Broken(format!(
                    "unexpected {} message while running task {id}",
                    other.kind()
                )))
            }
        };
        reports
            .report(report)
            .map_err(|msg| Lost::Broken(format!("task {id}: {msg}")))?;
    }
}

/// Reads one frame into `buf` (from `replies` if it is there).
async fn read_one(
    output: &mut BufReader<Pipe>,
    buf: &mut Vec<u8>,
    replies: Option<&mut Region>,
) -> Result<(), Lost> {
    match frame::read_frame_async(output, buf, replies).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(Lost::Died),
        Err(err) if err.kind() == io::ErrorKind::InvalidData => Err(Lost::Broken(err.to_string())),
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => Err(Lost::CutShort),
        // A failed read: the worker is gone or going.
        Err(_) => Err(Lost::Died),
    }
}

/// How many reports a reply's reader takes before it lets the driver's other work run.
const REPORTS_PER_TURN: u32 = 64;

/// Sends what goes beside job `id` as it comes: the credit its consumer grants a stream, and
/// `feed`'s frames; never ends.
///
/// Each write is at most [`ATOMIC_WRITE`] bytes (a `Credit` frame is far smaller), so
/// should this future be dropped (the reply came) while it waits for room in the pipe, no
/// part of a frame was written.
async fn send_beside<F: Feed>(
    input: &mut Pipe,
    id: u64,
    credit: Option<&dyn Credit>,
    feed: &F,
) -> Result<Reply, Lost> {
    loop {
        let granted = async {
            let Some(credit) = credit else {
                return future::pending().await;
            };
            loop {
                let granted = credit.listen();
                let items = credit.take();
                if items > 0 {
                    return frame::frame(&ToWorker::Credit { id, items });
                }
                granted.await;
            }
        };
        // Credit first: the worker may be waiting for it.
        let (frames, fed) = future::or(async { (granted.await, false) }, async {
            (feed.next().await, true)
        })
        .await;
        if input.write_all(&frames).await.is_err() {
            // The worker is gone: its reply says how.
            return future::pending().await;
        }
        if fed {
            feed.written();
        }
    }
}

/// The signal Rust's allocation failure handler ends a process with.
const SIGABRT: i32 = 6;

/// What Rust's default allocation failure handler writes before aborting.
const ALLOCATION_FAILED: &[u8] = b"memory allocation of ";

/// How long a dead worker's stderr may take to end before its last words are taken as they
/// are.
const LAST_WORDS_WAIT: Duration = Duration::from_millis(250);

/// The end of what a worker wrote to its stderr: up to twice [`TaskError::STDERR_TAIL`]
/// bytes, cut back to the tail when full.
#[derive(Default)]
struct StderrTail {
    bytes: std::sync::Mutex<Vec<u8>>,
    /// Set once its stderr ended.
    ended: std::sync::atomic::AtomicBool,
    changed: event_listener::Event,
}

impl StderrTail {
    fn add(&self, chunk: &[u8]) {
        let mut bytes = self
            .bytes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        bytes.extend_from_slice(chunk);
        if bytes.len() > 2 * TaskError::STDERR_TAIL {
            let cut = bytes.len() - TaskError::STDERR_TAIL;
            bytes.drain(..cut);
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let bytes = self
            .bytes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        bytes.clone()
    }

    fn end(&self) {
        self.ended.store(true, std::sync::atomic::Ordering::Release);
        self.changed.notify(usize::MAX);
    }

    async fn ended(&self) {
        crate::sys::wait::until(&self.changed, || {
            self.ended.load(std::sync::atomic::Ordering::Acquire)
        })
        .await
    }
}

/// Copies a worker's stderr to ours (through [`stderr_writer`], so that a parent's stderr that
/// blocks never blocks the driver) until it ends, keeping its end in `tail`.
async fn forward_stderr(
    mut stderr: Pipe,
    tail: Arc<StderrTail>,
    writer: Option<async_channel::Sender<Vec<u8>>>,
) {
    loop {
        let mut chunk = vec![0; 8192];
        let n = match futures_lite::AsyncReadExt::read(&mut stderr, &mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        chunk.truncate(n);
        tail.add(&chunk);
        // Waits while the writer is behind: the worker then waits to write, as it would on
        // an inherited stderr that blocks.
        if let Some(writer) = &writer {
            let _ = writer.send(chunk).await;
        }
    }
    tail.end();
}

/// The thread that writes what workers wrote to their stderr to this process's stderr; `None`
/// if it could not start (their output is then dropped, their last words still kept).
fn stderr_writer() -> Option<async_channel::Sender<Vec<u8>>> {
    static WRITER: std::sync::OnceLock<Option<async_channel::Sender<Vec<u8>>>> =
        std::sync::OnceLock::new();
    WRITER
        .get_or_init(|| {
            let (send, chunks) = async_channel::bounded::<Vec<u8>>(64);
            std::thread::Builder::new()
                .name("offload-stderr".into())
                .spawn(move || {
                    use std::io::Write;
                    while let Ok(chunk) = chunks.recv_blocking() {
                        let _ = std::io::stderr().write_all(&chunk);
                    }
                })
                .ok()
                .map(|_| send)
        })
        .clone()
}

/// The last lines of what a worker wrote, as text; `None` if there is nothing to say.
fn last_words(said: &[u8]) -> Option<String> {
    let start = said.len().saturating_sub(TaskError::STDERR_TAIL);
    let text = String::from_utf8_lossy(&said[start..]);
    let text = text.trim_matches(|c: char| c.is_whitespace() || c == char::REPLACEMENT_CHARACTER);
    (!text.is_empty()).then(|| text.to_owned())
}

/// The error for a worker that ended with `status`, having written `stderr` last.
fn died(pid: u32, status: ExitStatus, stderr: Option<String>) -> TaskError {
    TaskError::WorkerDied {
        pid,
        code: status.code(),
        signal: status.signal(),
        stderr,
    }
}
