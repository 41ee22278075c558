//! Shared memory between a parent and one local worker, for frames too large for the pipe to
//! carry quickly: a memfd per direction, reused for every large frame, so that a frame costs
//! one copy into it and one out, into pages that stay allocated between frames.
//!
//! The parent creates both memfds, sealed against shrinking, before the worker knows of them;
//! the worker opens them through `/proc/<parent>/fd/<n>`. The sender writes a frame body after
//! the header and says so on the pipe; the receiver copies it out and then writes the frame's
//! number into the header (`taken`). The sender writes the region again only once `taken`
//! says the last frame was copied out; until then a large frame goes through the pipe.
//!
//! Neither side maps the memfd: bodies and the header move with `pwrite` and `pread`. So
//! nothing the other side does to the memfd (growing it, punching holes in it, writing over a
//! frame) can fault this process: a hole reads as zeros, memory that runs out is an error of
//! the write (and the frame goes through the pipe), and a frame overwritten while it is read
//! is garbage that the decoder rejects.
//!
//! A region gives the pages past [`KEPT`] back once its sender has sent [`TRIM_AFTER`] small
//! frames in a row and the large frame was taken, or when the worker has been idle for a
//! while ([`Region::give_back`]): a
//! worker that once carried 256 MiB does not hold it for the rest of its life, and large
//! frames with a few small ones between them (progress, a benchmark's sizes) find their pages
//! allocated.

use std::io;
use std::mem::MaybeUninit;

use rustix::fd::{AsRawFd, OwnedFd};
use rustix::fs::{FallocateFlags, MemfdFlags, SealFlags};

/// Bytes at the front of a region: the `taken` counter (a little-endian `u64`).
const HEADER: u64 = 4096;

/// Frame bodies of at least this many bytes go through a region (smaller ones are faster
/// through the pipe; docs/performance.md has the measurements).
pub(crate) const MIN_FRAME: usize = 64 * 1024;

/// How much of a region stays allocated once small frames follow large ones, as the pipe's
/// frame buffers keep.
pub(crate) const KEPT: usize = 1 << 20;

/// How many small frames in a row its sender sends before a region gives back what a large
/// one grew.
const TRIM_AFTER: u32 = 64;

/// One direction of shared memory, as one side sees it.
pub(crate) struct Region {
    fd: OwnedFd,
    /// The number of the last frame put in (sender) or copied out (receiver).
    count: u64,
    /// The sender: small frames sent through the pipe since the last large one.
    small: u32,
    /// Whether a frame reached past [`KEPT`] since the region last gave memory back.
    grown: bool,
}

impl Region {
    /// Creates a region for the other side to open (the parent side): a memfd that can grow
    /// and never shrink.
    pub(crate) fn create() -> io::Result<Region> {
        let fd = rustix::fs::memfd_create(
            "offload-frames",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        rustix::fs::ftruncate(&fd, HEADER)?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::SEAL)?;
        Ok(Region::of(fd))
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
        Ok(Region::of(fd))
    }

    fn of(fd: OwnedFd) -> Region {
        Region {
            fd,
            count: 0,
            small: 0,
            grown: false,
        }
    }

    /// This side's descriptor number, for the other side to open.
    pub(crate) fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// The number of the last frame the receiver copied out; 0 if it cannot be read.
    fn taken(&self) -> u64 {
        let mut taken = [0; 8];
        match rustix::io::pread(&self.fd, &mut taken, 0) {
            Ok(8) => u64::from_le_bytes(taken),
            _ => 0,
        }
    }

    /// The sender: whether the receiver took the last frame, so that the next may be put in.
    pub(crate) fn is_free(&self) -> bool {
        self.taken() == self.count
    }

    /// The sender: writes `bytes` at `at` in the body of the next frame.
    pub(crate) fn write(&mut self, mut at: u64, mut bytes: &[u8]) -> io::Result<()> {
        self.grown |= at + bytes.len() as u64 > KEPT as u64;
        while !bytes.is_empty() {
            match rustix::io::pwrite(&self.fd, bytes, HEADER + at) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    bytes = &bytes[n..];
                    at += n as u64;
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(())
    }

    /// The sender: the body written is the next frame; returns its number, for the marker.
    pub(crate) fn commit(&mut self) -> u64 {
        self.count += 1;
        self.small = 0;
        self.count
    }

    /// The receiver: checks that frame `number` is the next one, and that the region holds
    /// memory for its `len` bytes: as through the pipe, a sender cannot make the receiver
    /// allocate more than it wrote (a hole would read as zeros without costing it anything).
    pub(crate) fn check(&self, number: u64, len: usize) -> io::Result<()> {
        let invalid = |msg| Err(io::Error::new(io::ErrorKind::InvalidData, msg));
        if number != self.count + 1 {
            let expected = self.count + 1;
            return invalid(format!(
                "shared-memory frame {number} announced, {expected} expected"
            ));
        }
        let held = held(&rustix::fs::fstat(&self.fd)?);
        if held < len as u64 {
            return invalid(format!(
                "a shared-memory frame of {len} bytes, in a region that holds {held}"
            ));
        }
        Ok(())
    }

    /// The receiver: appends `len` bytes from `at` in the body of the next frame to `buf`.
    pub(crate) fn read(&mut self, mut at: u64, len: usize, buf: &mut Vec<u8>) -> io::Result<()> {
        self.grown |= at + len as u64 > KEPT as u64;
        buf.reserve_exact(len);
        let end = buf.len() + len;
        while buf.len() < end {
            let want = end - buf.len();
            let spare: &mut [MaybeUninit<u8>] = &mut buf.spare_capacity_mut()[..want];
            let read = match rustix::io::pread(&self.fd, spare, HEADER + at) {
                Ok((init, _)) => init.len(),
                Err(rustix::io::Errno::INTR) => continue,
                Err(err) => return Err(err.into()),
            };
            if read == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a shared-memory frame runs past the end of its region",
                ));
            }
            // SAFETY: `pread` initialised the first `read` bytes of the spare capacity (the
            // slice it returned is those bytes), and `read <= want`, which is within the
            // capacity reserved above; so the first `len() + read` elements are initialised.
            unsafe { buf.set_len(buf.len() + read) };
            at += read as u64;
        }
        Ok(())
    }

    /// The receiver: frame `number` was copied out; the sender may write the next.
    pub(crate) fn taken_up_to(&mut self, number: u64) -> io::Result<()> {
        self.count = number;
        match rustix::io::pwrite(&self.fd, &number.to_le_bytes(), 0)? {
            8 => Ok(()),
            _ => Err(io::ErrorKind::WriteZero.into()),
        }
    }

    /// The sender, as it sends a small frame through the pipe: after [`TRIM_AFTER`] of them
    /// in a row, gives back what a large frame grew, and tries again at each one after until
    /// it could (the receiver may not have taken the large frame yet).
    pub(crate) fn trim(&mut self) {
        if self.small < TRIM_AFTER {
            self.small += 1;
        }
        if self.small == TRIM_AFTER && self.grown {
            self.give_back();
        }
    }

    /// Whether a frame reached past [`KEPT`] since the region last gave memory back.
    pub(crate) fn grown(&self) -> bool {
        self.grown
    }

    /// Gives back the pages past [`KEPT`], if the last frame was taken (until then they may
    /// still be read). The parent calls it for both regions of a worker that has been idle
    /// for a while: an idle worker writes neither.
    pub(crate) fn give_back(&mut self) {
        if self.taken() != self.count {
            return;
        }
        let Ok(stat) = rustix::fs::fstat(&self.fd) else {
            return;
        };
        self.grown = false;
        let kept = HEADER + KEPT as u64;
        if held(&stat) <= kept || stat.st_size as u64 <= kept {
            return;
        }
        // A failure leaves the pages allocated; the next chance tries again.
        let _ = rustix::fs::fallocate(
            &self.fd,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            kept,
            // To the end of the last page, which a punch that ends inside it would only zero.
            (stat.st_size as u64 - kept).next_multiple_of(4096),
        );
    }

    /// Bytes of memory the region holds.
    #[cfg(test)]
    fn held(&self) -> u64 {
        held(&rustix::fs::fstat(&self.fd).expect("fstat of a memfd"))
    }
}

/// Bytes of memory a file holds (its allocated 512-byte blocks), by its `stat`.
fn held(stat: &rustix::fs::Stat) -> u64 {
    stat.st_blocks as u64 * 512
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

    /// Sends `body` whole, if the region is free; returns its number.
    fn put(sender: &mut Region, body: &[u8]) -> Option<u64> {
        if !sender.is_free() {
            return None;
        }
        let half = body.len() / 2;
        sender.write(0, &body[..half]).unwrap();
        sender.write(half as u64, &body[half..]).unwrap();
        Some(sender.commit())
    }

    fn take(receiver: &mut Region, number: u64, len: usize) -> io::Result<Vec<u8>> {
        receiver.check(number, len)?;
        let mut buf = b"kept".to_vec();
        receiver.read(0, len, &mut buf)?;
        receiver.taken_up_to(number)?;
        Ok(buf.split_off(4))
    }

    #[test]
    fn frames_cross_in_order_and_the_region_grows() {
        let (mut sender, mut receiver) = pair();
        for len in [10, 5000, 3 << 20, 100] {
            let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let number = put(&mut sender, &body).unwrap();
            assert_eq!(take(&mut receiver, number, len).unwrap(), body);
        }
    }

    #[test]
    fn a_frame_not_taken_yet_keeps_the_next_one_out() {
        let (mut sender, mut receiver) = pair();
        let first = put(&mut sender, b"first").unwrap();
        assert_eq!(put(&mut sender, b"second"), None);
        take(&mut receiver, first, 5).unwrap();
        assert!(put(&mut sender, b"second").is_some());
    }

    #[test]
    fn a_frame_out_of_turn_or_past_the_end_is_refused() {
        let (mut sender, mut receiver) = pair();
        let number = put(&mut sender, b"body").unwrap();
        assert!(take(&mut receiver, number + 1, 4).is_err());
        assert!(take(&mut receiver, number, 1 << 20).is_err());
        assert_eq!(take(&mut receiver, number, 4).unwrap(), b"body");
    }

    #[test]
    fn small_frames_after_a_large_one_give_its_pages_back_once_taken() {
        let (mut sender, mut receiver) = pair();
        let large = vec![7; 3 * KEPT];
        let number = put(&mut sender, &large).unwrap();
        assert!(sender.held() >= large.len() as u64);
        for _ in 0..TRIM_AFTER {
            sender.trim();
        }
        assert!(
            sender.held() >= large.len() as u64,
            "kept until the receiver took it"
        );
        take(&mut receiver, number, large.len()).unwrap();
        // The next small frame tries again, now that it was taken.
        sender.trim();
        assert!(
            sender.held() <= HEADER + KEPT as u64,
            "{} bytes held",
            sender.held()
        );
        // The region still serves, and frames past the kept part arrive whole.
        let number = put(&mut sender, &large).unwrap();
        assert_eq!(take(&mut receiver, number, large.len()).unwrap(), large);
        // A few small frames between large ones keep the pages.
        for _ in 0..TRIM_AFTER - 1 {
            sender.trim();
        }
        assert!(sender.held() >= large.len() as u64);
        sender.trim();
        assert!(sender.held() <= HEADER + KEPT as u64);
    }

    #[test]
    fn what_the_other_side_does_to_the_memfd_only_spoils_the_frame() {
        let (mut sender, mut receiver) = pair();
        let first = put(&mut sender, &vec![1; 2 * KEPT]).unwrap();
        // The other side grows the memfd far past memory, and punches a page out of the frame.
        rustix::fs::ftruncate(&receiver.fd, 1 << 46).unwrap();
        rustix::fs::fallocate(
            &receiver.fd,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            HEADER + 4096,
            4096,
        )
        .unwrap();
        // A frame announced past what the region holds is refused before it is read.
        let err = take(&mut receiver, first, 1 << 30).unwrap_err();
        assert!(err.to_string().contains("holds"), "{err}");
        // One it holds memory for reads as what is there, the hole as zeros.
        let mut expected = vec![1; 2 * KEPT - 4096];
        expected[4096..8192].fill(0);
        assert_eq!(
            take(&mut receiver, first, expected.len()).unwrap(),
            expected
        );
        let number = put(&mut sender, b"next").unwrap();
        assert_eq!(take(&mut receiver, number, 4).unwrap(), b"next");
    }

    #[test]
    fn a_memfd_that_may_shrink_is_not_opened() {
        let fd = rustix::fs::memfd_create("offload-test", MemfdFlags::CLOEXEC).unwrap();
        assert!(Region::open(std::process::id(), fd.as_raw_fd()).is_err());
    }
}
