//! The build identity: what a worker and its parent must share before an entry means the same
//! function in both.

use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

use super::entry::layout_fingerprint;

/// Protocol revision: bumped whenever the wire format changes.
pub(crate) const PROTOCOL_VERSION: u32 = 1;

/// This executable's identity: the protocol, the crate version, the code layout and the file
/// itself (device, inode, size, modification time).
///
/// Two processes with the same identity run the same file, so an entry means the same function
/// in both. A worker started from another build, or a copy of the file, does not match.
pub(crate) fn build_id() -> u64 {
    static ID: OnceLock<u64> = OnceLock::new();
    *ID.get_or_init(|| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        PROTOCOL_VERSION.hash(&mut hasher);
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        layout_fingerprint().hash(&mut hasher);
        match rustix::fs::stat(crate::sys::exe::current_program()) {
            Ok(st) => {
                (st.st_dev, st.st_ino, st.st_size).hash(&mut hasher);
                (st.st_mtime, st.st_mtime_nsec).hash(&mut hasher);
            }
            // Without a file to compare, the layout alone must match.
            Err(_) => 0u8.hash(&mut hasher),
        }
        hasher.finish()
    })
}
