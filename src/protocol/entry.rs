//! Entries: how a function is named on the wire.
//!
//! An entry is the offset of a [`Trampoline`] from a fixed anchor function of this crate. Two
//! processes that run the same executable file (or copies of the same content), with this
//! crate linked into it, have the same offset between any two of its functions, so the
//! parent's entry names the same trampoline in the worker (the approach of the mitosis crate).
//! The build handshake proves "same file" (or "same content", for a remote worker).

use super::CodecFailure;

/// What a worker calls for a task: decode the arguments in `args`, run, append the encoded
/// result to `out`.
pub(crate) type Trampoline = fn(args: &[u8], out: &mut Vec<u8>) -> Result<(), CodecFailure>;

/// The fixed point in the executable that entries are measured from.
#[inline(never)]
fn anchor() {}

/// The address of [`anchor`], always taken here: if a generic caller took it, rustc could give
/// that caller's crate its own copy of the small function, at another address.
#[inline(never)]
fn anchor_address() -> usize {
    anchor as fn() as usize
}

/// The entry of `trampoline`.
pub(crate) fn entry_for(trampoline: Trampoline) -> u64 {
    (trampoline as usize).wrapping_sub(anchor_address()) as u64
}

/// Turns an entry received from the parent back into the trampoline it names.
///
/// # Safety
///
/// `entry` must be the value [`entry_for`] returned, in a process running the same executable
/// file as this one (or a copy of its content), for one of the trampolines of `func` (the
/// task, async task, `map` chunk and initializer trampolines, each a `Trampoline`
/// monomorphised for a task function type). The
/// worker ensures the first part by refusing a parent whose build identity differs; the
/// second holds because the parent only ever sends entries it made with `entry_for`.
///
/// It also assumes what the build identity cannot check: that this crate is linked into the
/// executable itself (as Rust links crates by default), not loaded from a `dylib`, which the
/// loader may map at an address of its own, so that the anchor and the trampolines sit in one
/// mapping whose layout is the file's.
pub(crate) unsafe fn resolve(entry: u64) -> Trampoline {
    let address = anchor_address().wrapping_add(entry as usize);
    // SAFETY: by the caller's contract, `entry` is the offset of a `Trampoline` from `anchor`
    // in a process running this very executable file (or its content), and both functions
    // live in the one mapping of the file's code, which the loader maps as a block: the
    // offset between them is
    // the same in every process running the file, so `address` is that trampoline's address
    // here. A function pointer and a data pointer have the same size and representation on
    // every platform this crate supports (Unix, `compile_error!` elsewhere).
    unsafe { std::mem::transmute::<*const (), Trampoline>(address as *const ()) }
}

/// A function whose entry fingerprints the code layout of this build.
fn layout_probe(_args: &[u8], _out: &mut Vec<u8>) -> Result<(), CodecFailure> {
    Ok(())
}

/// The entry of [`layout_probe`]: differs between builds whose code is laid out differently.
pub(crate) fn layout_fingerprint() -> u64 {
    entry_for(layout_probe)
}
