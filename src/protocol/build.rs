//! The build identity: what a worker and its parent must share before an entry means the same
//! function in both.
//!
//! A local worker runs the very file of its parent (`/proc/self/exe`), so its identity is that
//! file's place and version (device, inode, size, modification time). A worker started by any
//! other launcher runs a file of its own, elsewhere, so its identity is the file's *content*:
//! the ELF build-id note where the linker wrote one (reading it costs a few small reads), else
//! a hash of the whole file.

use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

use super::entry::layout_fingerprint;

/// Protocol revision: bumped whenever the wire format changes.
pub(crate) const PROTOCOL_VERSION: u32 = 2;

/// The hash every identity starts from: protocol, crate version, code layout.
fn base_hasher() -> std::collections::hash_map::DefaultHasher {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    PROTOCOL_VERSION.hash(&mut hasher);
    env!("CARGO_PKG_VERSION").hash(&mut hasher);
    layout_fingerprint().hash(&mut hasher);
    hasher
}

/// This executable's identity for a local worker: the protocol, the crate version, the code
/// layout and the file itself (device, inode, size, modification time).
///
/// Two processes with the same identity run the same file, so an entry means the same function
/// in both. A worker started from another build, or a copy of the file, does not match.
pub(crate) fn build_id() -> u64 {
    static ID: OnceLock<u64> = OnceLock::new();
    *ID.get_or_init(|| {
        let mut hasher = base_hasher();
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

/// This executable's identity for a worker started by another launcher: the protocol, the
/// crate version, the code layout and the file's content (its ELF build-id, else a hash of
/// the whole file), so that a copy of the same build matches and any other build does not.
pub(crate) fn content_id() -> u64 {
    static ID: OnceLock<u64> = OnceLock::new();
    *ID.get_or_init(|| {
        let mut hasher = base_hasher();
        match content_of(crate::sys::exe::current_program()) {
            Ok(content) => content.hash(&mut hasher),
            Err(_) => 0u8.hash(&mut hasher),
        }
        hasher.finish()
    })
}

/// What identifies the content of the executable at `path`.
#[derive(Hash)]
enum Content {
    /// The ELF build-id note.
    BuildId(Vec<u8>),
    /// A hash of every byte, where there is no build-id.
    Hash(u64),
}

fn content_of(path: &std::path::Path) -> std::io::Result<Content> {
    let file = File::open(path)?;
    if let Some(id) = elf_build_id(&file) {
        return Ok(Content::BuildId(id));
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut reader = std::io::BufReader::with_capacity(1 << 16, file);
    let mut chunk = vec![0; 1 << 16];
    loop {
        let n = reader.read(&mut chunk)?;
        if n == 0 {
            return Ok(Content::Hash(hasher.finish()));
        }
        hasher.write(&chunk[..n]);
    }
}

/// The `NT_GNU_BUILD_ID` note of an ELF file, read from its program headers' note segments.
fn elf_build_id(file: &File) -> Option<Vec<u8>> {
    let mut ident = [0u8; 64];
    file.read_exact_at(&mut ident, 0).ok()?;
    if &ident[..4] != b"\x7fELF" {
        return None;
    }
    let wide = match ident[4] {
        1 => false,
        2 => true,
        _ => return None,
    };
    let big = match ident[5] {
        1 => false,
        2 => true,
        _ => return None,
    };
    let read = |bytes: &[u8]| -> u64 {
        let mut value = 0u64;
        for (i, &b) in bytes.iter().enumerate() {
            let shift = if big {
                (bytes.len() - 1 - i) * 8
            } else {
                i * 8
            };
            value |= u64::from(b) << shift;
        }
        value
    };
    // e_phoff, e_phentsize, e_phnum
    let (phoff, phentsize, phnum) = match wide {
        true => (
            read(&ident[32..40]),
            read(&ident[54..56]),
            read(&ident[56..58]),
        ),
        false => (
            read(&ident[28..32]),
            read(&ident[42..44]),
            read(&ident[44..46]),
        ),
    };
    for i in 0..phnum.min(256) {
        let mut header = [0u8; 56];
        let size = (phentsize as usize).min(header.len());
        file.read_exact_at(&mut header[..size], phoff + i * phentsize)
            .ok()?;
        const PT_NOTE: u64 = 4;
        if read(&header[..4]) != PT_NOTE {
            continue;
        }
        let (offset, filesz) = match wide {
            true => (read(&header[8..16]), read(&header[32..40])),
            false => (read(&header[4..8]), read(&header[16..20])),
        };
        let mut notes = vec![0u8; filesz.min(1 << 16) as usize];
        file.read_exact_at(&mut notes, offset).ok()?;
        let mut at = 0;
        while at + 12 <= notes.len() {
            let namesz = read(&notes[at..at + 4]) as usize;
            let descsz = read(&notes[at + 4..at + 8]) as usize;
            let kind = read(&notes[at + 8..at + 12]);
            let name_at = at + 12;
            let desc_at = name_at + namesz.div_ceil(4) * 4;
            let end = desc_at + descsz.div_ceil(4) * 4;
            if desc_at + descsz > notes.len() {
                break;
            }
            const NT_GNU_BUILD_ID: u64 = 3;
            if kind == NT_GNU_BUILD_ID && notes.get(name_at..name_at + namesz) == Some(b"GNU\0") {
                return Some(notes[desc_at..desc_at + descsz].to_vec());
            }
            at = end;
        }
    }
    None
}

/// The platform this process runs on, as `os/arch`.
pub(crate) fn target() -> String {
    format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_executable_has_a_build_id_that_readelf_agrees_with() {
        let file = File::open(crate::sys::exe::current_program()).unwrap();
        let id = elf_build_id(&file).expect("the usual linkers write a build-id");
        assert!(id.len() >= 8, "{id:?}");
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        if let Ok(out) = std::process::Command::new("readelf")
            .arg("-n")
            .arg(std::env::current_exe().unwrap())
            .output()
        {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains(&hex), "readelf -n shows {hex}:\n{text}");
        }
    }

    #[test]
    fn a_file_without_a_build_id_is_identified_by_its_bytes() {
        let dir = std::env::temp_dir().join(format!("offload-build-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::write(&a, b"not an executable").unwrap();
        std::fs::write(&b, b"not an executable!").unwrap();
        let hash = |p: &std::path::Path| match content_of(p).unwrap() {
            Content::Hash(h) => h,
            Content::BuildId(_) => panic!("no build-id in a text file"),
        };
        assert_ne!(hash(&a), hash(&b));
        assert_eq!(hash(&a), hash(&a));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
