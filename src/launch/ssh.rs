//! Workers over ssh: the remote command line. The copy of this program that it runs unless
//! told another is made by [`super::copy`].

use std::io;
use std::path::Path;

use super::Environment;

/// The options offload gives ssh before the user's: no terminal, no prompts (a start that
/// needs a password fails instead of waiting), and at most 10 s to connect.
pub(super) fn base_options() -> [&'static str; 5] {
    ["-T", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
}

/// The remote command that runs `program` as the worker, quoted for the remote shell (ssh
/// hands the command line to it).
pub(super) fn worker_command(program: &Path) -> String {
    format!("exec {} --worker", quote(&program.to_string_lossy()))
}

/// The remote command that finds or receives this build's copy and runs it as the worker.
pub(super) fn copying_worker_command() -> io::Result<String> {
    Ok(format!("exec sh -c {}", quote(&super::copy::script()?)))
}

/// The remote command `worker` run in the pool's directory and environment.
pub(super) fn with_environment(environment: &Environment, worker: &str) -> String {
    environment.shell_prefix(quote) + worker
}

/// Quotes `word` for a POSIX shell.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_for_the_remote_shell() {
        assert_eq!(quote("/opt/my app"), "'/opt/my app'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        let command = worker_command(Path::new("/opt/a b"));
        assert_eq!(command, "exec '/opt/a b' --worker");
        let copying = copying_worker_command().unwrap();
        assert!(copying.starts_with("exec sh -c 'd="), "{copying}");
        assert_eq!(
            copying.matches('\'').count(),
            2,
            "the script holds no quote: {copying}"
        );
    }
}
