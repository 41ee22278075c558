//! The worker's `log` logger: records emitted while a task runs go to the parent, which hands
//! them to its own logger tagged with the task. The worker installs it itself, so a task's
//! code needs no set-up; records emitted while no task runs are dropped.

use log::{LevelFilter, Log, Metadata, Record};

use super::channel;
use crate::protocol::event::LogRecord;
use crate::protocol::FromWorker;

/// Forwards records to the parent.
struct Forward;

static FORWARD: Forward = Forward;

/// Installs the forwarding logger, taking records up to `level` (a `log::LevelFilter` as a
/// number: the parent's own maximum). Leaves a logger that was set before alone.
pub(crate) fn install(level: u8) {
    if log::set_logger(&FORWARD).is_ok() {
        log::set_max_level(level_filter(level));
    }
}

/// The `LevelFilter` numbered `level` (0 is `Off`, 5 is `Trace`).
fn level_filter(level: u8) -> LevelFilter {
    LevelFilter::iter()
        .nth(level as usize)
        .unwrap_or(LevelFilter::Trace)
}

/// The longest message sent, in bytes; a longer one is cut at a character boundary.
const MAX_MESSAGE: usize = 64 * 1024;

fn cut(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

impl Log for Forward {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level() && channel().and_then(|c| c.running()).is_some()
    }

    fn log(&self, record: &Record<'_>) {
        if record.level() > log::max_level() {
            return;
        }
        let Some(channel) = channel() else {
            return;
        };
        let Some(id) = channel.running() else {
            return;
        };
        let header = FromWorker::Log {
            id,
            record: LogRecord {
                level: record.level() as u8,
                target: record.target().to_owned(),
                message: cut(record.args().to_string()),
                module_path: record.module_path().map(str::to_owned),
                file: record.file().map(str::to_owned),
                line: record.line(),
            },
        };
        channel.report(id, &header, &[]);
    }

    fn flush(&self) {}
}
