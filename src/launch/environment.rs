//! The environment and working directory a pool gives its workers, and how each launcher
//! applies them: on the command for a local exec (and srun, which passes its environment on
//! to the step), as words in front of the program for a command launcher, as shell text for
//! ssh.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::process::Command;

/// Variables to set or remove, and the working directory, of every worker.
#[derive(Debug, Clone, Default)]
pub(crate) struct Environment {
    /// Set (`Some`) or removed (`None`), one entry per key, the last call's.
    vars: Vec<(OsString, Option<OsString>)>,
    pub(crate) dir: Option<PathBuf>,
}

/// The shell script that runs its arguments after `cd -- "$1"`, for a command launcher: the
/// directory is an argument, never part of the script.
const CD_THEN_EXEC: &str = "cd -- \"$1\" && shift && exec \"$@\"";

impl Environment {
    /// Sets (`Some`) or removes (`None`) `key`, replacing what was said of it before.
    pub(crate) fn set(&mut self, key: &OsStr, value: Option<OsString>) {
        self.vars.retain(|(k, _)| k != key);
        self.vars.push((key.to_os_string(), value));
    }

    /// Applies the variables (and the directory, if `with_dir`) to a command run on this
    /// machine.
    pub(crate) fn apply(&self, command: &mut Command, with_dir: bool) {
        for (key, value) in &self.vars {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        if let (true, Some(dir)) = (with_dir, &self.dir) {
            command.current_dir(dir);
        }
    }

    /// The words to put in front of the program a command launcher starts:
    /// `sh -c '<cd then exec>' sh DIR` for the directory, `env -u KEY KEY=VALUE` for the
    /// variables; none if there is nothing to set.
    pub(crate) fn words(&self) -> Vec<OsString> {
        let mut words: Vec<OsString> = Vec::new();
        if let Some(dir) = &self.dir {
            words.extend(["sh", "-c", CD_THEN_EXEC, "sh"].map(OsString::from));
            words.push(dir.clone().into_os_string());
        }
        if !self.vars.is_empty() {
            words.push("env".into());
            for (key, value) in &self.vars {
                match value {
                    Some(value) => {
                        let mut word = key.clone();
                        word.push("=");
                        word.push(value);
                        words.push(word);
                    }
                    None => words.extend(["-u".into(), key.clone()]),
                }
            }
        }
        words
    }

    /// The shell text to put in front of a remote command (ssh): `cd -- 'DIR' && unset KEY &&
    /// KEY='VALUE' && export KEY && `, quoted with `quote`.
    pub(crate) fn shell_prefix(&self, quote: impl Fn(&str) -> String) -> String {
        let mut prefix = String::new();
        if let Some(dir) = &self.dir {
            prefix += &format!("cd -- {} && ", quote(&dir.to_string_lossy()));
        }
        for (key, value) in &self.vars {
            let key = quote(&key.to_string_lossy());
            match value {
                Some(value) => {
                    let value = quote(&value.to_string_lossy());
                    prefix += &format!("export {key}={value} && ");
                }
                None => prefix += &format!("unset {key} && "),
            }
        }
        prefix
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Environment {
        let mut env = Environment::default();
        env.set("A".as_ref(), Some("1".into()));
        env.set("B".as_ref(), None);
        env.set("A".as_ref(), Some("it's 2".into()));
        env.dir = Some("/data dir".into());
        env
    }

    #[test]
    fn the_last_word_on_a_key_wins_in_every_form() {
        let env = example();
        let words: Vec<String> = env
            .words()
            .iter()
            .map(|w| w.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            words,
            [
                "sh",
                "-c",
                CD_THEN_EXEC,
                "sh",
                "/data dir",
                "env",
                "-u",
                "B",
                "A=it's 2"
            ]
        );
        let quote = |w: &str| format!("'{}'", w.replace('\'', "'\\''"));
        assert_eq!(
            env.shell_prefix(quote),
            "cd -- '/data dir' && unset 'B' && export 'A'='it'\\''s 2' && "
        );
    }

    #[test]
    fn nothing_to_set_adds_nothing() {
        let env = Environment::default();
        assert!(env.words().is_empty());
        assert_eq!(env.shell_prefix(|w| w.to_string()), "");
    }
}
