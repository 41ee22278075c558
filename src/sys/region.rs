//! Shared memory between a parent and one local worker, for frames too large for the pipe to
//! carry quickly: a memfd that both map, one per direction, reused for every large frame.
//!
//! The parent creates both memfds and seals them against shrinking (`F_SEAL_SHRINK`) before
//! the worker knows of them; the worker opens them through `/proc/<parent>/fd/<n>`. The
//! sender copies a frame body in after the header and says so on the pipe; the receiver
//! copies it out and then stores the frame's number in the header's `taken`. The sender
//! writes again only once `taken` says the last frame was copied out; until then a large
//! frame goes through the pipe. So neither side ever reads bytes the other writes at the
//! same time, unless the other breaks the protocol, and then the reader copies garbage into
//! its own buffer (which the decoder rejects) but never touches memory it did not check
//! (below).
//!
//! Since a memfd never shrinks, memory is only touched below a size that `fstat` (or this
//! side's own growth) showed: no access can fault with `SIGBUS` for a truncated file. The
//! sender reserves the pages with `fallocate` before it writes, so memory that runs out is
//! an error of `put` (and the frame goes through the pipe), not a `SIGBUS` on a write.
//! A region that a large frame grew gives its pages past [`KEPT`] back once its sender has
//! sent [`TRIM_AFTER`] small frames in a row (see [`Region::trim`]): a worker that once
//! carried 256 MiB does not hold it for the rest of its life, and large frames with a few
//! small ones between them (progress, the sizes of a benchmark) find their pages warm.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fd::{AsFd, AsRawFd, OwnedFd};
use rustix::fs::{FallocateFlags, MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

/// Bytes at the front of a region: the `taken` counter, alone on its cache line.
const HEADER: usize = 64;

/// Frame bodies of at least this many bytes go through a region (smaller ones are faster
/// through the pipe; docs/performance.md has the measurements).
pub(crate) const MIN_FRAME: usize = 64 * 1024;

/// How much of a region stays allocated once small frames follow large ones: pages beyond it
/// are given back, so that a worker that once carried 256 MiB does not hold it for the rest
/// of its life (the same as the pipe's frame buffers keep).
pub(crate) const KEPT: usize = 1 << 20;

/// How many small frames in a row its sender sends before a region gives back what a large
/// one grew.
const TRIM_AFTER: u32 = 64;

/// Size a region starts with (the header and its first data page).
const INITIAL: usize = 4096;

/// One direction of shared memory, as one side sees it.
pub(crate) struct Region {
    fd: OwnedFd,
    /// The start of this side's mapping of the memfd.
    base: NonNull<u8>,
    /// The length of the mapping; the memfd is at least this long (it never shrinks).
    mapped: usize,
    /// The number of the last frame put in (sender) or copied out (receiver).
    count: u64,
    /// The sender: how many bytes from the start it reserved with `fallocate` (and did not
    /// give back since).
    reserved: usize,
    /// The sender: small frames sent through the pipe since the last large one.
    small: u32,
}

// SAFETY: a `Region` owns its mapping (no other value refers to it, and it is unmapped only
// in `Drop` or `remap`, which take `&mut self`), so moving it to another thread moves the only
// handle to that memory; the memory itself is plain bytes and one atomic.
unsafe impl Send for Region {}

impl Region {
    /// Creates a region for the other side to open (the parent side): a memfd that can grow
    /// and never shrink.
    pub(crate) fn create() -> io::Result<Region> {
        let fd = rustix::fs::memfd_create(
            "offload-frames",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        rustix::fs::ftruncate(&fd, INITIAL as u64)?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::SEAL)?;
        Region::map(fd)
    }

    /// Opens the region that process `pid` created as its descriptor `fd` (the worker side).
    /// Fails unless it is a memfd sealed against shrinking.
    pub(crate) fn open(pid: u32, fd: i32) -> io::Result<Region> {
        let fd = rustix::fs::open(
            format!("/proc/{pid}/fd/{fd}").as_str(),
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        if !rustix::fs::fcntl_get_seals(&fd)?.contains(SealFlags::SHRINK) {
            return Err(io::Error::other(
                "the region is not sealed against shrinking",
            ));
        }
        Region::map(fd)
    }

    /// Maps all of `fd`, whose size is at least [`INITIAL`].
    fn map(fd: OwnedFd) -> io::Result<Region> {
        let size = file_size(&fd)?;
        if size < INITIAL {
            return Err(io::Error::other(format!(
                "the region is {size} bytes, less than {INITIAL}"
            )));
        }
        let base = map_shared(&fd, size)?;
        Ok(Region {
            fd,
            base,
            mapped: size,
            count: 0,
            reserved: 0,
            small: 0,
        })
    }

    /// This side's descriptor number, for the other side to open.
    pub(crate) fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    fn taken(&self) -> &AtomicU64 {
        // SAFETY: the mapping is at least `INITIAL` bytes (checked in `map`, and it only
        // grows), so its first 8 bytes are in it; mmap returns page-aligned memory, so they
        // are aligned for a `u64`; the memfd never shrinks, so they stay backed (no `SIGBUS`);
        // and they are only ever accessed atomically, by both processes. The reference lives
        // no longer than `&self`, during which the mapping is not unmapped.
        unsafe { AtomicU64::from_ptr(self.base.as_ptr().cast()) }
    }

    /// Makes this side's mapping cover `size` bytes of the memfd, which is at least that long.
    fn cover(&mut self, size: usize) -> io::Result<()> {
        if self.mapped >= size {
            return Ok(());
        }
        let base = map_shared(&self.fd, size)?;
        // SAFETY: `base`/`mapped` are the mapping this region made and nothing else refers
        // to (no reference into it outlives a method call); it is replaced right after.
        unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.mapped)? };
        self.base = base;
        self.mapped = size;
        Ok(())
    }

    /// The sender: puts the frame body made of `parts` in the region, and returns its number,
    /// if the receiver took the one before; `Ok(None)` if it did not yet (send this frame
    /// through the pipe). An error (no memory for it) also means the pipe.
    pub(crate) fn put(&mut self, parts: &[&[u8]]) -> io::Result<Option<u64>> {
        if self.taken().load(Ordering::Acquire) != self.count {
            return Ok(None);
        }
        let len: usize = parts.iter().map(|part| part.len()).sum();
        let need = HEADER + len;
        let size = file_size(&self.fd)?;
        if size < need {
            let grown = need.max(size.saturating_mul(2)).next_multiple_of(INITIAL);
            rustix::fs::ftruncate(&self.fd, grown as u64)?;
        }
        if self.reserved < need {
            // Reserves the pages, so that running out of memory is this error and not a
            // `SIGBUS` on a write below. Only the sender gives pages back (`trim`), so they
            // stay reserved until it does.
            rustix::fs::fallocate(&self.fd, FallocateFlags::KEEP_SIZE, 0, need as u64)?;
            self.reserved = need;
        }
        self.cover(file_size(&self.fd)?.max(need))?;
        let mut at = HEADER;
        for part in parts {
            // SAFETY: `at + part.len() <= need <= mapped`, so the destination is inside the
            // mapping, which the memfd backs (it is at least `need` long, and never shrinks)
            // with pages just reserved; the receiver does not read it until the frame is
            // announced (it took the last frame, `taken == count`); `part` is this process's
            // own memory, so the two do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(part.as_ptr(), self.base.as_ptr().add(at), part.len())
            };
            at += part.len();
        }
        self.count += 1;
        self.small = 0;
        Ok(Some(self.count))
    }

    /// The receiver: copies frame `number`, `len` bytes, into `buf` (cleared first), and tells
    /// the sender it was taken.
    pub(crate) fn take(&mut self, number: u64, len: usize, buf: &mut Vec<u8>) -> io::Result<()> {
        if number != self.count + 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "shared-memory frame {number} announced, {} expected",
                    self.count + 1
                ),
            ));
        }
        let need = HEADER
            .checked_add(len)
            .filter(|&need| need <= file_size(&self.fd).unwrap_or(0))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("shared-memory frame of {len} bytes, past the end of the region"),
                )
            })?;
        self.cover(need)?;
        buf.clear();
        buf.reserve_exact(len);
        // SAFETY: the source, `HEADER..need`, is inside the mapping (`cover`) and backed by
        // the memfd, which is at least `need` long (checked above) and never shrinks (its
        // seal); holes read as zeros. The sender does not write it until `taken` says this
        // frame was copied (below); a sender that breaks that only changes which bytes are
        // copied. The destination is `buf`'s spare capacity, at least `len` bytes, this
        // process's own memory; `set_len` follows the copy that initialised those bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(self.base.as_ptr().add(HEADER), buf.as_mut_ptr(), len);
            buf.set_len(len);
        }
        self.count = number;
        self.taken().store(number, Ordering::Release);
        Ok(())
    }

    /// The sender, as it sends a small frame through the pipe: after [`TRIM_AFTER`] of them
    /// in a row, gives back the pages past [`KEPT`] that a large frame reserved, once the
    /// receiver took it (until then they may still be read).
    pub(crate) fn trim(&mut self) {
        let kept = (HEADER + KEPT).next_multiple_of(INITIAL);
        if self.reserved <= kept {
            return;
        }
        self.small = self.small.saturating_add(1);
        if self.small < TRIM_AFTER || self.taken().load(Ordering::Acquire) != self.count {
            return;
        }
        let punched = rustix::fs::fallocate(
            &self.fd,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            kept as u64,
            (self.reserved.next_multiple_of(INITIAL) - kept) as u64,
        );
        // A failure leaves them reserved, and they are tried again with the next small frame.
        if punched.is_ok() {
            self.reserved = kept;
        }
    }

    /// The sender: bytes of memory the region holds (reserved, not given back).
    #[cfg(test)]
    fn held(&self) -> usize {
        let blocks = rustix::fs::fstat(&self.fd)
            .expect("fstat of a memfd")
            .st_blocks;
        blocks as usize * 512
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the mapping this region made, referred to by nothing else (see `cover`).
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.mapped) };
    }
}

fn file_size(fd: impl AsFd) -> io::Result<usize> {
    Ok(rustix::fs::fstat(fd)?.st_size as usize)
}

/// Maps `len` bytes of `fd`, shared and writable.
fn map_shared(fd: &OwnedFd, len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: a new mapping at an address the kernel picks (null hint), so it replaces no
    // existing memory of this process.
    let base = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            fd,
            0,
        )?
    };
    NonNull::new(base.cast()).ok_or_else(|| io::Error::other("mmap returned null"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ends in one process: the second through `/proc/self/fd`, as a worker opens it.
    fn pair() -> (Region, Region) {
        let sender = Region::create().unwrap();
        let receiver = Region::open(std::process::id(), sender.raw_fd()).unwrap();
        (sender, receiver)
    }

    #[test]
    fn frames_cross_in_order_and_the_region_grows() {
        let (mut sender, mut receiver) = pair();
        let mut buf = Vec::new();
        for len in [10, 5000, 3 << 20, 100] {
            let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let number = sender
                .put(&[&body[..len / 2], &body[len / 2..]])
                .unwrap()
                .unwrap();
            receiver.take(number, len, &mut buf).unwrap();
            assert_eq!(buf, body);
        }
    }

    #[test]
    fn a_frame_not_taken_yet_keeps_the_next_one_out() {
        let (mut sender, mut receiver) = pair();
        let first = sender.put(&[b"first"]).unwrap().unwrap();
        assert_eq!(sender.put(&[b"second"]).unwrap(), None);
        let mut buf = Vec::new();
        receiver.take(first, 5, &mut buf).unwrap();
        assert!(sender.put(&[b"second"]).unwrap().is_some());
    }

    #[test]
    fn a_frame_out_of_order_or_past_the_end_is_refused() {
        let (mut sender, mut receiver) = pair();
        let number = sender.put(&[b"body"]).unwrap().unwrap();
        let mut buf = Vec::new();
        assert!(receiver.take(number + 1, 4, &mut buf).is_err());
        assert!(receiver.take(number, 1 << 40, &mut buf).is_err());
        receiver.take(number, 4, &mut buf).unwrap();
        assert_eq!(buf, b"body");
    }

    #[test]
    fn small_frames_after_a_large_one_give_its_pages_back_once_taken() {
        let (mut sender, mut receiver) = pair();
        let large = vec![7; 3 * KEPT];
        let number = sender.put(&[&large]).unwrap().unwrap();
        assert!(sender.held() >= large.len());
        for _ in 0..TRIM_AFTER {
            sender.trim();
        }
        assert!(
            sender.held() >= large.len(),
            "kept until the receiver took it"
        );
        let mut buf = Vec::new();
        receiver.take(number, large.len(), &mut buf).unwrap();
        sender.trim();
        let kept = (HEADER + KEPT).next_multiple_of(INITIAL);
        assert!(sender.held() <= kept, "{} bytes held", sender.held());
        // The region still serves, and frames past the kept part arrive whole.
        let number = sender.put(&[&large]).unwrap().unwrap();
        receiver.take(number, large.len(), &mut buf).unwrap();
        assert_eq!(buf, large);
        // A few small frames between large ones keep the pages.
        for _ in 0..TRIM_AFTER - 1 {
            sender.trim();
        }
        assert!(sender.held() >= large.len());
    }

    #[test]
    fn a_memfd_that_may_shrink_is_not_opened() {
        let fd = rustix::fs::memfd_create("offload-test", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, INITIAL as u64).unwrap();
        assert!(Region::open(std::process::id(), fd.as_raw_fd()).is_err());
    }
}
