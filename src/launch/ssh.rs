//! Workers over ssh: the remote command line, and the copy of this executable to a
//! content-addressed path on each host, made once per build.
//!
//! The copy lives in `~/.cache/offload/`, a directory that only the user can write (mode
//! 0700, owned by them, not a symlink), as `worker-<content id>`; it is written under a
//! temporary name and renamed into place, so a worker never starts from a half-written file,
//! and it is used only if it is a regular file owned by the user. A host is checked (and
//! given the copy if it lacks it) once per process; later workers start at once.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};

use crate::protocol::build::content_id;
use crate::sys::exe::current_program;

/// The options offload gives ssh before the user's: no terminal, no prompts (a start that
/// needs a password fails instead of waiting), and at most 10 s to connect.
pub(super) fn base_options() -> [&'static str; 5] {
    ["-T", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
}

/// The directory of the copies, as the remote shell expands it.
const CACHE_DIR: &str = "\"$HOME/.cache/offload\"";

/// The file name of this build's copy.
fn copy_name() -> String {
    format!("worker-{:016x}", content_id())
}

/// The remote command that runs the worker: `exec <program> --worker`, each word quoted for
/// the remote shell (ssh hands the command line to it).
pub(super) fn worker_command(remote_program: Option<&std::path::Path>) -> String {
    match remote_program {
        Some(path) => format!("exec {} --worker", quote(&path.to_string_lossy())),
        None => format!("exec {CACHE_DIR}/{} --worker", copy_name()),
    }
}

/// Quotes `word` for a POSIX shell.
pub(super) fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// Hosts (with their ssh options) known to hold this build's copy.
static COPIED: Mutex<Option<HashSet<Vec<OsString>>>> = Mutex::new(None);

/// Makes sure `host` holds this build's copy, copying it there if it does not.
pub(super) fn ensure_copy(options: &[OsString], host: &str) -> io::Result<()> {
    let mut key = options.to_vec();
    key.push(host.into());
    let mut copied = COPIED.lock().unwrap_or_else(PoisonError::into_inner);
    if copied.get_or_insert_with(HashSet::new).contains(&key) {
        return Ok(());
    }
    // Present: a regular file (not a symlink), owned by the user, executable, in a directory
    // that is the user's own and not a symlink. Absent: made under a temporary name in that
    // directory (mode 0700), then renamed into place, so that no one starts a half-written
    // file and a concurrent copy of the same build only replaces it with the same bytes.
    let vars = format!("d={CACHE_DIR}; f=\"$d/{}\"", copy_name());
    let dir_is_ours = "[ -d \"$d\" ] && [ ! -L \"$d\" ] && [ -O \"$d\" ]";
    let check = format!(
        "{vars}; {dir_is_ours} && [ -f \"$f\" ] && [ ! -L \"$f\" ] && [ -O \"$f\" ] && [ -x \"$f\" ]"
    );
    let script = format!(
        "umask 077; {vars}; mkdir -p \"$d\" && chmod 700 \"$d\" || exit 3; \
         if ! {{ {dir_is_ours}; }}; then echo \"$d is not a directory of this user\" >&2; exit 3; fi; \
         t=\"$f.tmp.$$\"; cat > \"$t\" && chmod 700 \"$t\" && mv -f \"$t\" \"$f\""
    );
    // The file goes through stdin only when the host lacks it: the check runs first.
    let present = ssh(options, host, &check, Stdio::null())?;
    if !present.status.success() {
        if present.status.code() == Some(255) {
            return Err(failed(host, "could not connect", &present.stderr));
        }
        let copy = ssh(
            options,
            host,
            &script,
            File::open(current_program())?.into(),
        )?;
        if !copy.status.success() {
            return Err(failed(
                host,
                "could not copy the program there",
                &copy.stderr,
            ));
        }
    }
    copied.get_or_insert_with(HashSet::new).insert(key);
    Ok(())
}

/// Runs `script` on `host` with `stdin`, and waits for it.
fn ssh(
    options: &[OsString],
    host: &str,
    script: &str,
    stdin: Stdio,
) -> io::Result<std::process::Output> {
    Command::new("ssh")
        .args(base_options())
        .args(options)
        .arg(host)
        .arg(script)
        .stdin(stdin)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("could not run ssh: {e}")))
}

/// An error that names the host and quotes what ssh said.
fn failed(host: &str, what: &str, stderr: &[u8]) -> io::Error {
    let said = String::from_utf8_lossy(stderr);
    io::Error::other(format!("ssh {host}: {what}: {}", said.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_for_the_remote_shell() {
        assert_eq!(quote("/opt/my app"), "'/opt/my app'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        let command = worker_command(Some(std::path::Path::new("/opt/a b")));
        assert_eq!(command, "exec '/opt/a b' --worker");
        assert!(worker_command(None).starts_with("exec \"$HOME/.cache/offload\"/worker-"));
    }
}
