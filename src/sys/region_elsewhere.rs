//! Shared memory for large frames where there is no memfd: none, so every frame goes through
//! the pipe (see the Linux version, `region.rs`).

use std::convert::Infallible;
use std::io;

/// As on Linux; unused, since no region is ever made here.
pub(crate) const MIN_FRAME: usize = 64 * 1024;

/// As on Linux: what the pipe's frame buffers keep.
pub(crate) const KEPT: usize = 1 << 20;

/// No region can exist here.
pub(crate) struct Region(Infallible);

impl Region {
    pub(crate) fn create() -> io::Result<Region> {
        Err(io::ErrorKind::Unsupported.into())
    }

    pub(crate) fn open(_pid: u32, _fd: i32) -> io::Result<Region> {
        Err(io::ErrorKind::Unsupported.into())
    }

    pub(crate) fn raw_fd(&self) -> i32 {
        match self.0 {}
    }

    pub(crate) fn is_free(&self) -> bool {
        match self.0 {}
    }

    pub(crate) fn write(&mut self, _at: u64, _bytes: &[u8]) -> io::Result<()> {
        match self.0 {}
    }

    pub(crate) fn commit(&mut self) -> u64 {
        match self.0 {}
    }

    pub(crate) fn check(&self, _number: u64, _len: usize) -> io::Result<()> {
        match self.0 {}
    }

    pub(crate) fn read(&mut self, _at: u64, _len: usize, _buf: &mut Vec<u8>) -> io::Result<()> {
        match self.0 {}
    }

    pub(crate) fn taken_up_to(&mut self, _number: u64) -> io::Result<()> {
        match self.0 {}
    }

    pub(crate) fn trim(&mut self) {
        match self.0 {}
    }

    pub(crate) fn grown(&self) -> bool {
        match self.0 {}
    }

    pub(crate) fn give_back(&mut self) {
        match self.0 {}
    }
}
