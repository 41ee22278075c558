//! The copy of this executable on the other side of a launcher (ssh, srun), made once per build
//! and host, through the worker's own stdin: no second connection, no shared file system.
//!
//! The launcher runs [`script`] in a POSIX shell. It looks for this build's copy,
//! `${XDG_CACHE_HOME:-$HOME/.cache}/offload/worker-<content id>`, in a directory only the user
//! can write (mode 0700, owned by them, not a symlink), used only if it is an executable
//! regular file owned by the user. Then it speaks a few lines on stdout, which [`deliver`]
//! answers on stdin, before any frame of the protocol:
//!
//! - `offload-ready`: the copy is there; the script `exec`s it as the worker, and the
//!   handshake follows.
//! - `offload-send`: it is not; the parent answers `copy` and the file's bytes (the script
//!   stores them under a temporary name, checks the length and renames the file into place,
//!   so that no one starts a half-written file), or `check` to look again, when another
//!   worker of this process was copying to the same destination meanwhile.
//!
//! Copies that were not rewritten for [`KEEP_DAYS`] days are removed when a new copy is
//! written, so old builds do not pile up.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{self, Read};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_channel::{Receiver, Sender};
use futures_lite::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

use crate::protocol::build::content_id;
use crate::sys::exe::current_program;
use crate::sys::wait::within;

/// How long a copy whose bytes are being written may take (a slow link and a large program).
const COPY_TIMEOUT: Duration = Duration::from_secs(600);

/// How much of what the other side prints before its first marker line is read past (a
/// login shell's greeting); more is an error.
const CHATTER: usize = 64 * 1024;

/// How old, in days, a copy of another build gets before a new copy removes it.
const KEEP_DAYS: u32 = 30;

/// What the other side says on stdout.
const READY: &str = "offload-ready";
const SEND: &str = "offload-send";

/// The size of the chunks the file is sent in.
const CHUNK: usize = 1 << 20;

/// A worker whose program is looked for, and copied if missing, on the other side.
#[derive(Debug)]
pub(crate) struct Delivery {
    /// The destination: the launcher and its options (and the host, for ssh). Workers of this
    /// process copy to one destination one at a time.
    destination: Vec<OsString>,
}

impl Delivery {
    pub(super) fn new(destination: Vec<OsString>) -> Delivery {
        Delivery { destination }
    }
}

/// The file name of this build's copy.
fn copy_name() -> String {
    format!("worker-{:016x}", content_id())
}

/// The shell script that finds or receives this build's copy and runs it as the worker (see
/// the module docs). It contains no single quote, so that `'script'` quotes it for any shell.
pub(super) fn script() -> io::Result<String> {
    let size = std::fs::metadata(current_program())?.len();
    let name = copy_name();
    Ok(format!(
        "d=\"${{XDG_CACHE_HOME:-$HOME/.cache}}/offload\"; f=\"$d/{name}\"; n={size}; umask 077; \
         mine() {{ [ -d \"$d\" ] && [ ! -L \"$d\" ] && [ -O \"$d\" ]; }}; \
         ok() {{ mine && [ -f \"$f\" ] && [ ! -L \"$f\" ] && [ -O \"$f\" ] && [ -x \"$f\" ]; }}; \
         until ok; do \
           mine || {{ mkdir -p \"$d\" && chmod 700 \"$d\"; }} || exit 3; \
           mine || {{ echo \"$d is not a directory of this user\" >&2; exit 3; }}; \
           echo {SEND}; read -r go || exit 3; \
           if [ \"$go\" = copy ]; then \
             t=\"$f.tmp.$(uname -n).$$\"; \
             if head -c \"$n\" > \"$t\" && [ $(wc -c < \"$t\") -eq \"$n\" ] && chmod 700 \"$t\" && mv -f \"$t\" \"$f\"; \
             then find \"$d\" -maxdepth 1 -name \"worker-*\" -mtime +{KEEP_DAYS} -exec rm -f {{}} + 2>/dev/null; \
             else rm -f \"$t\"; echo \"could not store $f\" >&2; exit 3; fi; \
           fi; \
         done; \
         echo {READY}; exec \"$f\" --worker"
    ))
}

/// One copy at a time per destination, among this process's workers; the lock is given back
/// when the holder is dropped, finished or not.
struct Turn {
    token: Sender<()>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let _ = self.token.try_send(());
    }
}

/// A destination's lock: a channel holding one token.
type Lock = (Sender<()>, Receiver<()>);

/// The lock of each destination.
static TURNS: Mutex<Option<HashMap<Vec<OsString>, Lock>>> = Mutex::new(None);

/// Takes the destination's lock, and says whether another worker held it first (and may have made
/// the copy meanwhile).
async fn take_turn(destination: &[OsString]) -> (Turn, bool) {
    let (token, tokens) = {
        let mut turns = TURNS.lock().unwrap_or_else(PoisonError::into_inner);
        turns
            .get_or_insert_with(HashMap::new)
            .entry(destination.to_vec())
            .or_insert_with(|| {
                let (token, tokens) = async_channel::bounded(1);
                let _ = token.try_send(());
                (token, tokens)
            })
            .clone()
    };
    let waited = match tokens.try_recv() {
        Ok(()) => false,
        Err(_) => {
            // The sender lives in the map for good, so the channel never closes.
            let _ = tokens.recv().await;
            true
        }
    };
    (Turn { token }, waited)
}

/// Why a delivery failed.
pub(crate) enum Undelivered {
    /// The other side closed its output (it exited): its launcher's stderr says why.
    Ended,
    /// Anything else, said in full.
    Failed(io::Error),
}

impl From<io::Error> for Undelivered {
    fn from(err: io::Error) -> Undelivered {
        Undelivered::Failed(err)
    }
}

/// Whether the other side had the program or was given it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivered {
    Found,
    Copied,
}

/// Answers the script until it runs the worker: sends the program if the other side lacks
/// it. Bounded by `timeout` for each exchange of lines, and [`COPY_TIMEOUT`] for the bytes.
pub(crate) async fn deliver(
    delivery: &Delivery,
    input: &mut (impl AsyncWrite + Unpin),
    output: &mut (impl AsyncBufRead + Unpin),
    timeout: Duration,
) -> Result<Delivered, Undelivered> {
    let mut turn = None;
    let mut copied = false;
    loop {
        let said = within(timeout, marker(output))
            .await
            .ok_or_else(|| timed_out("did not say whether it has this program", timeout))??;
        if said == READY {
            return Ok(match copied {
                true => Delivered::Copied,
                false => Delivered::Found,
            });
        }
        if copied {
            return Err(io::Error::other("the copy of this program was not usable there").into());
        }
        // `offload-send`: copy, unless another worker held the turn and may have copied.
        let waited = match turn {
            Some(_) => false,
            None => {
                let (held, waited) = take_turn(&delivery.destination).await;
                turn = Some(held);
                waited
            }
        };
        if waited {
            input.write_all(b"check\n").await?;
            continue;
        }
        input.write_all(b"copy\n").await?;
        within(COPY_TIMEOUT, send_program(input))
            .await
            .ok_or_else(|| timed_out("did not take the program", COPY_TIMEOUT))??;
        copied = true;
    }
}

/// Reads lines until one of the markers; `Ended` if the output closes first.
async fn marker(output: &mut (impl AsyncBufRead + Unpin)) -> Result<&'static str, Undelivered> {
    let mut read = 0;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = output.read_until(b'\n', &mut line).await?;
        if n == 0 || line.last() != Some(&b'\n') {
            return Err(Undelivered::Ended);
        }
        match line.trim_ascii_end() {
            l if l == READY.as_bytes() => return Ok(READY),
            l if l == SEND.as_bytes() => return Ok(SEND),
            _ => {}
        }
        read += n;
        if read > CHATTER {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("printed more than {CHATTER} bytes before starting the worker"),
            )
            .into());
        }
    }
}

/// Writes this executable's bytes to the other side.
async fn send_program(input: &mut (impl AsyncWrite + Unpin)) -> io::Result<()> {
    let mut file = std::fs::File::open(current_program())?;
    let mut chunk = vec![0; CHUNK];
    loop {
        // A local file, most likely in the page cache: reading it blocks for no time worth
        // a thread.
        let n = file.read(&mut chunk)?;
        if n == 0 {
            return input.flush().await;
        }
        input.write_all(&chunk[..n]).await?;
    }
}

fn timed_out(what: &str, limit: Duration) -> Undelivered {
    Undelivered::Failed(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("the other side {what} within {limit:?}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::io::BufReader;
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};
    use std::process::Stdio;

    /// The script run by a local `sh` with its cache in `cache`, as a launcher would run it.
    fn start(cache: &Path) -> async_process::Child {
        async_process::Command::new("sh")
            .args(["-c", &script().unwrap()])
            .env("XDG_CACHE_HOME", cache)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // Once it runs this test program as `--worker`, that complains about the flag.
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    async fn deliver_to(cache: &Path, destination: &str) -> Delivered {
        let mut child = start(cache);
        let mut input = child.stdin.take().unwrap();
        let mut output = BufReader::new(child.stdout.take().unwrap());
        let delivery = Delivery::new(vec![destination.into()]);
        let delivered = deliver(&delivery, &mut input, &mut output, Duration::from_secs(60));
        let delivered = delivered.await.unwrap_or_else(|e| match e {
            Undelivered::Ended => panic!("the script ended"),
            Undelivered::Failed(e) => panic!("{e}"),
        });
        // What runs now is this test program as `--worker`; it is not needed.
        let _ = child.kill();
        let _ = child.status().await;
        delivered
    }

    fn temp_cache(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("offload-copy-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_program_is_copied_once_and_old_copies_are_pruned() {
        let cache = temp_cache("once");
        let dir = cache.join("offload");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let (old, recent) = (dir.join("worker-old"), dir.join("worker-recent"));
        std::fs::write(&old, b"x").unwrap();
        std::fs::write(&recent, b"x").unwrap();
        let aged = std::process::Command::new("touch")
            .args(["-d", "40 days ago"])
            .arg(&old)
            .status()
            .unwrap();
        assert!(aged.success());

        let delivered = futures_lite::future::block_on(deliver_to(&cache, "once"));
        assert_eq!(delivered, Delivered::Copied);
        let copy = dir.join(copy_name());
        let program = std::fs::read(current_program()).unwrap();
        assert!(std::fs::read(&copy).unwrap() == program, "the same bytes");
        assert_eq!(mode(&copy), 0o700);
        assert!(!old.exists(), "a copy untouched for 40 days is pruned");
        assert!(recent.exists(), "a recent copy is kept");
        let written = std::fs::metadata(&copy).unwrap().modified().unwrap();

        let again = futures_lite::future::block_on(deliver_to(&cache, "once"));
        assert_eq!(again, Delivered::Found);
        assert_eq!(
            std::fs::metadata(&copy).unwrap().modified().unwrap(),
            written
        );
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 2, "no temporary file is left: {left:?}");
        let _ = std::fs::remove_dir_all(&cache);
    }

    #[test]
    fn workers_starting_together_send_the_program_once() {
        let cache = temp_cache("together");
        let both = futures_lite::future::block_on(futures_lite::future::zip(
            deliver_to(&cache, "together"),
            deliver_to(&cache, "together"),
        ));
        let mut got = [both.0, both.1];
        got.sort_by_key(|d| *d == Delivered::Found);
        assert_eq!(got, [Delivered::Copied, Delivered::Found]);
        assert_eq!(mode(&cache.join("offload")), 0o700);
        let _ = std::fs::remove_dir_all(&cache);
    }

    #[test]
    fn a_cache_directory_of_someone_else_is_refused() {
        // A symlink in place of the directory is not the user's own directory.
        let cache = temp_cache("symlink");
        let elsewhere = temp_cache("symlink-target");
        std::os::unix::fs::symlink(&elsewhere, cache.join("offload")).unwrap();
        let mut child = start(&cache);
        let mut input = child.stdin.take().unwrap();
        let mut output = BufReader::new(child.stdout.take().unwrap());
        let delivery = Delivery::new(vec!["symlink".into()]);
        let got = futures_lite::future::block_on(async {
            let got = deliver(&delivery, &mut input, &mut output, Duration::from_secs(60)).await;
            (
                got.err().map(|e| matches!(e, Undelivered::Ended)),
                child.status().await,
            )
        });
        assert_eq!(got.0, Some(true), "the script exits");
        assert_eq!(got.1.unwrap().code(), Some(3));
        assert_eq!(
            std::fs::read_dir(&elsewhere).unwrap().count(),
            0,
            "nothing written there"
        );
        let _ = std::fs::remove_dir_all(&cache);
        let _ = std::fs::remove_dir_all(&elsewhere);
    }
}
