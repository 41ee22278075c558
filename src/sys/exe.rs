//! The path this executable is started from again, for a worker.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The executable a local worker is started from: `/proc/self/exe` where it exists, which
/// still names this process's file after a rebuild replaced it on disk.
pub(crate) fn current_program() -> &'static Path {
    static PROGRAM: OnceLock<PathBuf> = OnceLock::new();
    PROGRAM.get_or_init(|| {
        let proc_exe = Path::new("/proc/self/exe");
        if proc_exe.exists() {
            proc_exe.to_path_buf()
        } else {
            std::env::current_exe().unwrap_or_else(|_| proc_exe.to_path_buf())
        }
    })
}
