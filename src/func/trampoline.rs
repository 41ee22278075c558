//! The trampolines a worker calls: decode the arguments, call the task function, encode the
//! result; one per function type, for plain, async and `map` chunk calls.

use std::cell::Cell;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{AsyncStreamFn, AsyncTaskFn, InitFn, InitOutput, StreamFn, TaskFn};
use crate::inside::{self, progress, stream::Items};
use crate::protocol::chunk::{
    begin_segment, end_segment, Segments, ITEM_DECODE, ITEM_ENCODE, ITEM_OK, ITEM_PANICKED,
};
use crate::protocol::codec;
use crate::protocol::entry::entry_for;
use crate::protocol::{CodecFailure, RUN_ITEM_PROGRESS};
use crate::sys::panic::catch;

/// The entry of `F`'s trampoline.
pub(crate) fn entry_of<F: TaskFn<M>, M>() -> u64 {
    const { assert_zero_sized::<F>() };
    entry_for(trampoline::<F, M>)
}

/// The entry of async `F`'s trampoline.
pub(crate) fn entry_of_async<F: AsyncTaskFn<M>, M>() -> u64 {
    const { assert_zero_sized::<F>() };
    entry_for(async_trampoline::<F, M>)
}

/// The entry of the trampoline that runs `F` on every item of a `map` chunk.
pub(crate) fn chunk_entry_of<F: TaskFn<M>, M>() -> u64 {
    const { assert_zero_sized::<F>() };
    entry_for(chunk_trampoline::<F, M>)
}

/// The entry of the trampoline that runs the worker initializer `F`.
pub(crate) fn init_entry_of<F: InitFn<M>, M>() -> u64 {
    const { assert_zero_sized::<F>() };
    entry_for(init_trampoline::<F, M>)
}

/// The entry of the trampoline that runs the stream function `F`.
pub(crate) fn stream_entry_of<F: StreamFn<M>, M>() -> u64 {
    const { assert_zero_sized::<F>() };
    entry_for(stream_trampoline::<F, M>)
}

/// The entry of the trampoline that runs the async stream function `F`.
pub(crate) fn async_stream_entry_of<F: AsyncStreamFn<M>, M>() -> u64 {
    const { assert_zero_sized::<F>() };
    entry_for(async_stream_trampoline::<F, M>)
}

/// Decodes the arguments of a task.
fn decode_args<A: DeserializeOwned>(args: &[u8]) -> Result<A, CodecFailure> {
    codec::decode(args).map_err(|e| CodecFailure::Decode(format!("arguments: {e}")))
}

/// Appends one encoded result.
fn encode_output(out: &mut Vec<u8>, output: &impl Serialize) -> Result<(), CodecFailure> {
    codec::encode(out, output).map_err(CodecFailure::Encode)
}

fn trampoline<F: TaskFn<M>, M>(args: &[u8], out: &mut Vec<u8>) -> Result<(), CodecFailure> {
    let args = decode_args(args)?;
    // SAFETY: `F: TaskFn<M>`, so `conjure`'s contract holds (see its proof).
    let f = unsafe { conjure::<F>() };
    encode_output(out, &f.call(args))
}

fn async_trampoline<F: AsyncTaskFn<M>, M>(
    args: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), CodecFailure> {
    let args = decode_args(args)?;
    // SAFETY: `F: AsyncTaskFn<M>`, so `conjure`'s contract holds (see its proof).
    let f = unsafe { conjure::<F>() };
    encode_output(out, &async_io::block_on(f.call(args)))
}

/// Calls the initializer `F` (its frame has no arguments) and encodes its outcome as
/// `Result<(), String>`.
fn init_trampoline<F: InitFn<M>, M>(_args: &[u8], out: &mut Vec<u8>) -> Result<(), CodecFailure> {
    // SAFETY: `F: InitFn<M>`, so `conjure`'s contract holds (see its proof).
    let f = unsafe { conjure::<F>() };
    encode_output(out, &f.call().into_result())
}

/// Calls the stream function `F` and sends its items as they come, within the credit the
/// parent grants; the result is the number of items. Every item produced before a panic (or
/// an item that does not encode) is written before the reply that reports it.
fn stream_trampoline<F: StreamFn<M>, M>(
    args: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), CodecFailure> {
    let args = decode_args(args)?;
    // SAFETY: `F: StreamFn<M>`, so `conjure`'s contract holds (see its proof).
    let f = unsafe { conjure::<F>() };
    send_items(out, |send| f.call(args).into_iter().try_for_each(send))
}

/// [`stream_trampoline`] for a function that returns a `Stream`, driven on
/// `async_io::block_on`; waiting for credit blocks the thread, which holds the stream still.
fn async_stream_trampoline<F: AsyncStreamFn<M>, M>(
    args: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), CodecFailure> {
    use futures_lite::StreamExt;
    let args = decode_args(args)?;
    // SAFETY: `F: AsyncStreamFn<M>`, so `conjure`'s contract holds (see its proof).
    let f = unsafe { conjure::<F>() };
    send_items(out, |send| {
        async_io::block_on(async {
            let items = f.call(args);
            let mut items = std::pin::pin!(items);
            while let Some(item) = items.next().await {
                send(item)?;
            }
            Ok(())
        })
    })
}

/// Runs `produce`, which hands each item of the stream that runs to the sender it is given,
/// and leaves the number of items in `out`.
///
/// The production runs under one guard; `encoding` tells whether a panic came from an item's
/// `Serialize` (an [`Encode`](CodecFailure::Encode) failure) or from the function itself (a
/// panic of the task, which goes on to the worker's own `catch` once the items are out, with
/// the location its hook recorded).
fn send_items<T: Serialize>(
    out: &mut Vec<u8>,
    produce: impl FnOnce(&mut dyn FnMut(T) -> Result<(), String>) -> Result<(), String>,
) -> Result<(), CodecFailure> {
    let mut items = Items::open().map_err(CodecFailure::Encode)?;
    let encoding = Cell::new(false);
    let produced = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        produce(&mut |item: T| {
            encoding.set(true);
            let sent = items.send(&item);
            encoding.set(false);
            sent
        })
    }));
    let count = items.finish();
    match produced {
        Ok(Ok(())) => encode_output(out, &count),
        Ok(Err(msg)) => Err(CodecFailure::Encode(format!("item {count}: {msg}"))),
        Err(panic) if encoding.get() => Err(CodecFailure::Encode(format!(
            "item {count}: its Serialize panicked: {}",
            crate::sys::panic::panic_message(&*panic)
        ))),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Runs `F` on every item of a chunk, each under its own `catch`, so that one item's panic or
/// codec error is that item's outcome alone.
///
/// An item is decoded, called and encoded under one `catch` (a `catch` per step would keep
/// the codec of small values from being inlined, which cost a third of `map`'s throughput);
/// `step` tells which of the three a panic came from.
fn chunk_trampoline<F: TaskFn<M>, M>(
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), CodecFailure> {
    let items = Segments::new(payload, false).map_err(CodecFailure::Decode)?;
    let total = items.count as u64;
    out.extend_from_slice(&(items.count as u32).to_le_bytes());
    let report = inside::channel().is_some_and(|c| c.flags() & RUN_ITEM_PROGRESS != 0);
    // SAFETY: `F: TaskFn<M>`, so `conjure`'s contract holds (see its proof).
    let f = unsafe { conjure::<F>() };
    for (done, item) in items.enumerate() {
        let (_, item) = item.map_err(CodecFailure::Decode)?;
        if report {
            progress::report_items(done as u64, total);
        }
        let segment = begin_segment(out, ITEM_OK);
        let step = Cell::new(ITEM_DECODE);
        let outcome = catch(|| {
            let args =
                rmp_serde::from_slice::<F::Args>(item).map_err(|e| format!("arguments: {e}"))?;
            step.set(ITEM_PANICKED);
            let output = f.call(args);
            step.set(ITEM_ENCODE);
            rmp_serde::encode::write(&mut *out, &output).map_err(|e| format!("result: {e}"))
        });
        let (tag, failure) = match outcome {
            Ok(Ok(())) => (ITEM_OK, None),
            Ok(Err(msg)) => (step.get(), Some(msg)),
            Err(panic) => match step.get() {
                ITEM_PANICKED => {
                    out.truncate(segment + 5);
                    // A string pair always encodes.
                    let _ = rmp_serde::encode::write(out, &(panic.message, panic.location));
                    (ITEM_PANICKED, None)
                }
                ITEM_DECODE => (
                    ITEM_DECODE,
                    Some(format!(
                        "arguments: its Deserialize panicked: {}",
                        panic.message
                    )),
                ),
                _ => (
                    ITEM_ENCODE,
                    Some(format!("result: its Serialize panicked: {}", panic.message)),
                ),
            },
        };
        if let Some(msg) = failure {
            out.truncate(segment + 5);
            out.extend_from_slice(msg.as_bytes());
        }
        end_segment(out, segment, tag);
    }
    if report {
        progress::report_items(total, total);
    }
    Ok(())
}

/// Produces the value of a task function type out of nothing, in the worker.
///
/// # Safety
///
/// `F` must implement [`TaskFn`], [`AsyncTaskFn`] or [`InitFn`] (for some signature), and
/// the program must have held a value of `F`: every entry comes from a trampoline for `F`,
/// and every public way to make one (`spawn`, `spawn_async`, `task`, `map`, and those of
/// `Executor`, `process_fn` and `TaskScope`, and `PoolBuilder::init`) takes the function by
/// value.
unsafe fn conjure<F: Copy>() -> F {
    const { assert_zero_sized::<F>() };
    // SAFETY: `F` is zero-sized (checked at compile time above), so it has no bytes: the
    // all-zero value of its zero bytes is its only possible bit pattern. That bit pattern is a
    // valid `F` because `F` is inhabited (the caller's contract: the program held a value of
    // it). The three traits are sealed and implemented only for `Fn` types, and the zero-sized
    // `Fn` types are function items and closures whose captures are all zero-sized; since
    // `F: Copy`, every capture is `Copy` too, so no destructor can run twice and no ownership
    // is duplicated. What this cannot keep is a *meaning* a captured zero-sized value may
    // carry (a token proving that a lock is held): the `TaskFn` docs say so.
    unsafe { std::mem::zeroed::<F>() }
}

/// Fails the build when a task function carries data (a capturing closure, a function pointer).
const fn assert_zero_sized<F>() {
    assert!(
        std::mem::size_of::<F>() == 0,
        "offload: a task function must be a function item or a closure that captures nothing; \
         pass captured values as arguments instead"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::entry::resolve;

    fn double(x: u64) -> u64 {
        x * 2
    }

    fn entry_of_val<F: TaskFn<M>, M>(_f: F) -> u64 {
        entry_of::<F, M>()
    }

    #[test]
    fn entry_round_trips_to_the_same_trampoline() {
        // SAFETY: the entry was made in this very process, for a trampoline of `double`.
        let call = unsafe { resolve(entry_of_val(double)) };
        let mut args = Vec::new();
        codec::encode(&mut args, &21u64).unwrap();
        let mut out = Vec::new();
        call(&args, &mut out).unwrap();
        assert_eq!(rmp_serde::from_slice::<u64>(&out).unwrap(), 42);
    }
}
