//! Shared by the integration tests. Each test binary is also its own worker program: its
//! `main` calls `offload::init()` first, through [`main_with`].
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};

/// The upper bound for any single scenario: generous, for loaded machines; a hang fails the
/// test instead of stalling the run.
pub const BOUND: Duration = Duration::from_secs(60);

/// `main` of a test binary: serve if started as a worker, else run `trials`.
pub fn main_with(trials: Vec<Trial>) {
    offload::init();
    libtest_mimic::run(&Arguments::from_args(), trials).exit();
}

/// A trial from a function that panics on failure.
pub fn trial(name: &'static str, test: fn()) -> Trial {
    Trial::test(name, move || {
        test();
        Ok::<(), Failed>(())
    })
}

/// Runs `fut` to completion, failing the test if it takes longer than [`BOUND`].
pub async fn bounded<T>(fut: impl Future<Output = T>) -> T {
    bounded_by(BOUND, fut).await
}

/// Runs `fut` to completion, failing the test if it takes longer than `bound`.
pub async fn bounded_by<T>(bound: Duration, fut: impl Future<Output = T>) -> T {
    futures_lite::future::or(fut, async {
        async_io::Timer::after(bound).await;
        panic!("scenario did not finish within {bound:?}");
    })
    .await
}

/// Blocks until `cond` holds, checking every millisecond, up to [`BOUND`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits, without blocking the executor, until `cond` holds; checks every millisecond, up to
/// [`BOUND`].
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        async_io::Timer::after(Duration::from_millis(1)).await;
    }
}

/// `[(name, scenario)]` for async fns that take no argument: `scenarios![a, b]`.
#[macro_export]
macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        [$((stringify!($name), (|| Box::pin($name())) as common::Scenario)),*]
    };
}

/// A scenario, boxed so that a list of them can run under several runtimes.
pub type Scenario = fn() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// One trial per scenario and runtime, named `{scenario}_under_{runtime}`.
pub fn trials_under(runtimes: &[Runtime], scenarios: &[(&str, Scenario)]) -> Vec<Trial> {
    trials_within(BOUND, runtimes, scenarios)
}

/// [`trials_under`] for scenarios that may take up to `bound` each (a long one, on a loaded
/// machine, in a debug build).
pub fn trials_within(
    bound: Duration,
    runtimes: &[Runtime],
    scenarios: &[(&str, Scenario)],
) -> Vec<Trial> {
    let mut trials = Vec::new();
    for &(name, scenario) in scenarios {
        for &runtime in runtimes {
            trials.push(Trial::test(
                format!("{name}_under_{}", runtime.name()),
                move || {
                    runtime.block_on_within(bound, scenario());
                    Ok(())
                },
            ));
        }
    }
    trials
}

/// The four executors every scenario runs under.
#[derive(Debug, Clone, Copy)]
pub enum Runtime {
    Smol,
    AsyncStd,
    TokioCurrentThread,
    TokioMultiThread,
}

pub const RUNTIMES: [Runtime; 4] = [
    Runtime::Smol,
    Runtime::AsyncStd,
    Runtime::TokioCurrentThread,
    Runtime::TokioMultiThread,
];

impl Runtime {
    /// Runs `fut` on this runtime, within [`BOUND`].
    pub fn block_on<T: Send + 'static>(self, fut: impl Future<Output = T> + Send + 'static) -> T {
        self.block_on_within(BOUND, fut)
    }

    /// Runs `fut` on this runtime, within `bound`.
    pub fn block_on_within<T: Send + 'static>(
        self,
        bound: Duration,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> T {
        let fut = bounded_by(bound, fut);
        match self {
            Runtime::Smol => smol::block_on(fut),
            Runtime::AsyncStd => async_std::task::block_on(fut),
            Runtime::TokioCurrentThread => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(fut),
            // Run inside a spawned task, so that the future really moves between threads.
            Runtime::TokioMultiThread => {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async { tokio::spawn(fut).await.unwrap() })
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Runtime::Smol => "smol",
            Runtime::AsyncStd => "async_std",
            Runtime::TokioCurrentThread => "tokio_current_thread",
            Runtime::TokioMultiThread => "tokio_multi_thread",
        }
    }
}

/// Whether process `pid` exists and has not exited (a zombie has).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !stat[stat.rfind(')').unwrap()..].starts_with(") Z"))
}

/// How many file descriptors this process has open.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// This process's children, alive or zombie.
pub fn children() -> Vec<u32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                let rest = &stat[stat.rfind(')').unwrap() + 2..];
                rest.split(' ').nth(1) == Some(me.as_str())
            })
        })
        .collect()
}

/// Whether process `pid` exists and is a child of this process.
pub fn is_our_child(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next().unwrap();
    let ppid: u32 = fields.next().unwrap().parse().unwrap();
    state != "Z" && ppid == std::process::id()
}

/// A fresh, empty directory, unique in this run.
pub fn temp_dir(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("offload-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---- task functions, run in the workers ----

/// Sleeps, then returns the pid of the process that ran it.
pub fn sleep_ms(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

/// Spins until killed; returns nothing, ever.
pub fn spin() -> u32 {
    loop {
        std::hint::spin_loop();
    }
}

/// Creates the file `path`, then returns the pid of the process that ran it.
pub fn touch(path: PathBuf) -> u32 {
    std::fs::write(path, b"").unwrap();
    std::process::id()
}

/// Waits, up to [`BOUND`], until the file `path` exists; returns the pid that ran it.
pub fn wait_for_file(path: PathBuf) -> u32 {
    let deadline = Instant::now() + BOUND;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    std::process::id()
}

/// Announces itself in `dir` and waits, up to [`BOUND`], until `n` tasks have: proves `n`
/// tasks run at the same time. Returns the pid of the process that ran it.
pub fn rendezvous(dir: PathBuf, n: usize) -> u32 {
    let pid = std::process::id();
    std::fs::write(dir.join(pid.to_string()), b"").unwrap();
    let deadline = Instant::now() + BOUND;
    while count(&dir) < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} tasks met",
            count(&dir)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    pid
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

/// This machine's host name, as a worker reports it.
pub fn hostname() -> String {
    String::from_utf8(std::fs::read("/proc/sys/kernel/hostname").unwrap())
        .unwrap()
        .trim()
        .to_string()
}

/// Starts `sleep 1000` (in the worker's process group), writes its pid to `path`, spins. The
/// sleeper is never waited for: the tests check that stopping the worker takes it along.
#[allow(clippy::zombie_processes)]
pub fn sleeper_then_spin(path: PathBuf) -> u32 {
    let child = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    std::fs::write(&path, child.id().to_string()).unwrap();
    spin()
}

/// The pid `sleeper_then_spin` wrote to `path`, once it is there (up to [`BOUND`]).
pub fn read_pid(path: &Path) -> u32 {
    wait_for_file(path.to_path_buf());
    loop {
        if let Ok(pid) = std::fs::read_to_string(path).unwrap_or_default().parse() {
            return pid;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A copy of this test binary in `dir` with one byte of its GNU build-id flipped: the same
/// program, another build.
pub fn another_build(dir: &Path) -> PathBuf {
    let mut bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let note = [4, 0, 0, 0, 20, 0, 0, 0, 3, 0, 0, 0, b'G', b'N', b'U', 0];
    let at = bytes
        .windows(note.len())
        .position(|w| w == note)
        .expect("a GNU build-id note of 20 bytes");
    bytes[at + note.len()] ^= 0xff;
    let other = dir.join("other");
    std::fs::write(&other, &bytes).unwrap();
    std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    other
}

/// `$OFFLOAD_TEST_VAR` and the working directory, as a worker sees them.
pub fn env_and_dir() -> (Option<String>, PathBuf) {
    (
        std::env::var("OFFLOAD_TEST_VAR").ok(),
        std::env::current_dir().unwrap(),
    )
}

/// Asserts that a pool's `env` and `current_dir` reach a worker started by `launcher`.
pub async fn assert_environment_and_directory_reach_workers(launcher: offload::Launcher) {
    let dir = temp_dir("environment");
    let pool = offload::ProcessPool::builder()
        .workers(1)
        .launcher(launcher)
        .env("OFFLOAD_TEST_VAR", "it's one")
        .current_dir(&dir)
        .build()
        .unwrap();
    let (var, cwd) = pool.spawn(env_and_dir, ()).await.unwrap();
    assert_eq!(var.as_deref(), Some("it's one"));
    assert_eq!(cwd, dir.canonicalize().unwrap());
}

/// A pool of one worker started by `launcher`, whose launcher process mentions `tag` (in its
/// environment or command line), for [`kill_children_mentioning`].
pub fn tagged_pool(launcher: offload::Launcher, tag: &str) -> offload::ProcessPool {
    offload::ProcessPool::builder()
        .workers(1)
        .launcher(launcher)
        .env("OFFLOAD_TEST_TAG", tag)
        .build()
        .unwrap()
}

/// Kills (`SIGKILL`) this process's children whose command line or environment mentions
/// `tag` (a pool's `env("OFFLOAD_TEST_TAG", tag)` shows in its launcher's), so that a test
/// kills its own launcher and not those of the tests running beside it. Returns how many.
pub fn kill_children_mentioning(tag: &str) -> usize {
    let mentions = |pid: u32, file: &str| {
        std::fs::read(format!("/proc/{pid}/{file}"))
            .is_ok_and(|bytes| bytes.windows(tag.len()).any(|w| w == tag.as_bytes()))
    };
    let mut killed = 0;
    for child in children() {
        if mentions(child, "cmdline") || mentions(child, "environ") {
            let pid = rustix::process::Pid::from_raw(child as i32).unwrap();
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            killed += 1;
        }
    }
    killed
}

/// Items `0..n`, reporting how many it produced as progress, with a line on stdout and one
/// on stderr each tenth item.
pub fn reported_items(n: u64) -> impl Iterator<Item = u64> {
    (0..n).inspect(move |&i| {
        offload::progress(i + 1, n);
        if i % 10 == 0 {
            println!("item {i}");
            eprintln!("note {i}");
        }
    })
}

/// Writes its last words to stderr, then aborts.
pub fn aborts_saying(words: String) -> u32 {
    eprintln!("{words}");
    std::process::abort()
}

/// Asserts that what a running task reports reaches the parent from a worker started by
/// `launcher`: a stream whose small window makes the worker wait for credit many times, its
/// progress, its captured output, and the last words of a worker that dies.
pub async fn assert_reports_reach_the_parent(launcher: offload::Launcher) {
    use futures_lite::StreamExt;
    let pool = offload::ProcessPool::builder()
        .workers(1)
        .launcher(launcher)
        .build()
        .unwrap();
    let mut stream = pool
        .task(reported_items)
        .stream_window(8)
        .capture_output()
        .spawn_stream(1000);
    let mut expected = 0;
    while let Some(item) = stream.next().await {
        assert_eq!(item.unwrap(), expected);
        expected += 1;
    }
    assert_eq!(expected, 1000);
    assert_eq!(
        stream.progress().map(|p| (p.done, p.total)),
        Some((1000, 1000))
    );
    let output = stream.output().unwrap();
    let lines = |bytes: &[u8], word: &str| -> Vec<String> {
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(text.lines().all(|l| l.starts_with(word)), "{text}");
        text.lines().map(str::to_owned).collect()
    };
    assert_eq!(lines(&output.stdout, "item ").len(), 100);
    assert_eq!(lines(&output.stderr, "note ").len(), 100);
    let words = format!("out of luck in {}", std::process::id());
    match pool.spawn(aborts_saying, words.clone()).await {
        Err(offload::TaskError::WorkerDied {
            stderr: Some(said), ..
        }) => assert!(said.contains(&words), "{said:?}"),
        other => panic!("{other:?}"),
    }
}

/// Returns its bytes: a task that sends a buffer both ways.
pub fn echo(bytes: serde_bytes::ByteBuf) -> serde_bytes::ByteBuf {
    bytes
}

/// This process's descriptors of shared-memory regions (`/proc/self/fd/N` of each
/// `memfd:offload-frames`): in a worker, its two regions; in a parent, those of its workers.
pub fn region_fds() -> Vec<PathBuf> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|fd| {
            let path = fd.ok()?.path();
            let link = std::fs::read_link(&path).ok()?;
            link.to_string_lossy()
                .starts_with("/memfd:offload-frames")
                .then_some(path)
        })
        .collect()
}
