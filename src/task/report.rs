//! What a running task reported beside its result: its [`Progress`] and its captured
//! [`TaskOutput`].

/// How far a task is, as it last reported with [`offload::progress`](crate::progress).
///
/// For a [`map`](crate::ProcessPool::map) with an
/// [`on_progress`](crate::TaskBuilder::on_progress) callback, `done` counts the items done in
/// the whole map and `total` the items it has (or, for an input of unknown length, has taken
/// so far).
///
/// # Examples
///
/// ```
/// let p = offload::Progress { done: 3, total: 4 };
/// assert_eq!(p.fraction(), 0.75);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Progress {
    /// How much is done.
    pub done: u64,
    /// How much there is in all.
    pub total: u64,
}

impl Progress {
    /// `done / total`, between 0 and 1 (1 when `total` is 0).
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(offload::Progress { done: 0, total: 0 }.fraction(), 1.0);
    /// ```
    pub fn fraction(&self) -> f64 {
        match self.total {
            0 => 1.0,
            total => (self.done.min(total) as f64) / total as f64,
        }
    }
}

/// What a task wrote to its fds 1 and 2, captured with
/// [`TaskBuilder::capture_output`](crate::TaskBuilder::capture_output).
///
/// The bytes are exactly what the task wrote, by any code (Rust's `print!`, C code writing to
/// the descriptors, the processes it started), and nothing another task wrote. Each of the
/// two keeps at most [`TaskOutput::LIMIT`] bytes; `stdout_cut` and `stderr_cut` count what
/// was written beyond and dropped.
///
/// # Examples
///
/// ```no_run
/// # offload::init();
/// fn noisy(n: u32) -> u32 {
///     println!("working on {n}");
///     eprintln!("a warning");
///     n
/// }
///
/// # futures_lite::future::block_on(async {
/// let pool = offload::ProcessPool::new(1)?;
/// let mut task = pool.task(noisy).capture_output().spawn(3);
/// (&mut task).await?;
/// let output = task.output().unwrap();
/// assert_eq!(output.stdout, b"working on 3\n");
/// assert_eq!(output.stderr, b"a warning\n");
/// # Ok::<(), offload::Error>(()) }).unwrap();
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskOutput {
    /// What the task wrote to fd 1.
    pub stdout: Vec<u8>,
    /// What the task wrote to fd 2.
    pub stderr: Vec<u8>,
    /// Bytes written to fd 1 beyond the limit, which were dropped.
    pub stdout_cut: u64,
    /// Bytes written to fd 2 beyond the limit, which were dropped.
    pub stderr_cut: u64,
}

impl TaskOutput {
    /// The most bytes kept of each of fd 1 and fd 2 (1 MiB).
    pub const LIMIT: usize = crate::protocol::CAPTURE_LIMIT;

    /// Adds what the task wrote to `fd`, and how much more was dropped.
    pub(crate) fn add(&mut self, fd: u8, bytes: &[u8], cut: u64) -> Result<(), String> {
        let (kept, dropped) = match fd {
            1 => (&mut self.stdout, &mut self.stdout_cut),
            2 => (&mut self.stderr, &mut self.stderr_cut),
            other => return Err(format!("output for fd {other}")),
        };
        let room = Self::LIMIT.saturating_sub(kept.len());
        let keep = bytes.len().min(room);
        kept.extend_from_slice(&bytes[..keep]);
        *dropped = dropped
            .saturating_add(cut)
            .saturating_add((bytes.len() - keep) as u64);
        Ok(())
    }
}
