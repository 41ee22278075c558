//! How a Rust function is named, sent and called in the child.
//!
//! A task function is a zero-sized `Copy` type: a function item or a closure that captures
//! nothing. Such a value carries no data, so the child can produce it from nothing. What the
//! parent sends is the offset, from an anchor function, of a trampoline monomorphised for that
//! function type: the trampoline decodes the arguments, calls the function and encodes the
//! result. The child is the same executable file (checked by the build handshake), so the same
//! offset from the same anchor is the same trampoline there (the approach of the mitosis crate).

use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::wire::CodecFailure;

/// A function that can run in a worker process.
///
/// It is implemented for every function item and non-capturing closure whose parameters and
/// result are `Serialize + DeserializeOwned + Send + 'static`, with up to eight parameters.
/// The marker `M` is the function's signature (`fn(A, B) -> R`); it is inferred, never written.
///
/// How arguments are passed ([`TaskFn::Args`]):
///
/// | function | `Args` | call |
/// | --- | --- | --- |
/// | `fn() -> R` | `()` | `pool.spawn(f, ())` |
/// | `fn(A) -> R` | `A` | `pool.spawn(f, a)` |
/// | `fn(A, B, ..) -> R` | `(A, B, ..)` | `pool.spawn(f, (a, b, ..))` |
///
/// A closure that captures anything is refused when the program is built (the captured data
/// would not exist in the worker); pass such values as arguments instead. Closures need their
/// parameter types written out (`|x: u64| x * 2`), as nothing else tells the compiler.
///
/// This trait is sealed: only the blanket implementations above exist.
///
/// # Examples
///
/// ```no_run
/// # offload::init();
/// fn add(a: i64, b: i64) -> i64 { a + b }
///
/// # futures_lite::future::block_on(async {
/// let pool = offload::ProcessPool::new(2)?;
/// assert_eq!(pool.spawn(add, (1, 2)).await?, 3);
/// assert_eq!(pool.spawn(|x: u64| x * 2, 21).await?, 42);
/// # Ok::<(), offload::Error>(()) }).unwrap();
/// ```
///
/// A capturing closure does not build:
///
/// ```compile_fail,E0080
/// # fn main() -> Result<(), offload::Error> {
/// let pool = offload::ProcessPool::new(1)?;
/// let offset = 10;
/// let task = pool.spawn(move |x: u64| x + offset, 1);
/// # Ok(()) }
/// ```
pub trait TaskFn<M>: sealed::Sealed<M> + Copy + Send + Sync + 'static {
    /// What the caller passes: the argument itself, a tuple of them, or `()`.
    type Args: Serialize + DeserializeOwned + Send + 'static;
    /// What the function returns.
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// Calls the function.
    #[doc(hidden)]
    fn call(self, args: Self::Args) -> Self::Output;
}

mod sealed {
    pub trait Sealed<M> {}
    pub trait SealedAsync<M> {}
}

/// An async function that can run in a worker process, on `async_io::block_on` there.
///
/// The same as [`TaskFn`], for `async fn`s and non-capturing closures that return a future:
/// the future runs inside the worker, so async-io based code (timers, sockets) works in it.
/// The future need not be `Send`. Spawn one with
/// [`ProcessPool::spawn_async`](crate::ProcessPool::spawn_async).
///
/// # Examples
///
/// ```no_run
/// # offload::init();
/// async fn delayed_double(x: u64) -> u64 {
///     async_io::Timer::after(std::time::Duration::from_millis(10)).await;
///     x * 2
/// }
///
/// # futures_lite::future::block_on(async {
/// let pool = offload::ProcessPool::new(1)?;
/// assert_eq!(pool.spawn_async(delayed_double, 21).await?, 42);
/// # Ok::<(), offload::Error>(()) }).unwrap();
/// ```
pub trait AsyncTaskFn<M>: sealed::SealedAsync<M> + Copy + Send + Sync + 'static {
    /// What the caller passes: the argument itself, a tuple of them, or `()`.
    type Args: Serialize + DeserializeOwned + Send + 'static;
    /// What the future resolves to.
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// The future the function returns.
    type Future: Future<Output = Self::Output>;

    /// Calls the function.
    #[doc(hidden)]
    fn call(self, args: Self::Args) -> Self::Future;
}

/// Implements [`TaskFn`] and [`AsyncTaskFn`] for functions of the given parameters, passed as
/// `$args` (a type) and taken apart by the pattern `$pat`.
macro_rules! impl_fns {
    (($($a:ident),*), $args:ty, $pat:pat, ($($arg:ident),*)) => {
        impl<F, $($a,)* R> sealed::Sealed<fn($($a),*) -> R> for F where F: Fn($($a),*) -> R {}
        impl<F, $($a,)* R> TaskFn<fn($($a),*) -> R> for F
        where
            F: Fn($($a),*) -> R + Copy + Send + Sync + 'static,
            $($a: Serialize + DeserializeOwned + Send + 'static,)*
            R: Serialize + DeserializeOwned + Send + 'static,
        {
            type Args = $args;
            type Output = R;

            #[allow(non_snake_case)]
            fn call(self, $pat: Self::Args) -> R {
                self($($arg),*)
            }
        }

        impl<F, $($a,)* Fut> sealed::SealedAsync<fn($($a),*) -> Fut> for F
        where
            F: Fn($($a),*) -> Fut,
        {
        }
        impl<F, $($a,)* Fut> AsyncTaskFn<fn($($a),*) -> Fut> for F
        where
            F: Fn($($a),*) -> Fut + Copy + Send + Sync + 'static,
            $($a: Serialize + DeserializeOwned + Send + 'static,)*
            Fut: Future,
            Fut::Output: Serialize + DeserializeOwned + Send + 'static,
        {
            type Args = $args;
            type Output = Fut::Output;
            type Future = Fut;

            #[allow(non_snake_case)]
            fn call(self, $pat: Self::Args) -> Fut {
                self($($arg),*)
            }
        }
    };
}

impl_fns!((), (), (), ());
impl_fns!((A), A, A, (A));
impl_fns!((A, B), (A, B), (A, B), (A, B));
impl_fns!((A, B, C), (A, B, C), (A, B, C), (A, B, C));
impl_fns!((A, B, C, D), (A, B, C, D), (A, B, C, D), (A, B, C, D));
impl_fns!(
    (A, B, C, D, E),
    (A, B, C, D, E),
    (A, B, C, D, E),
    (A, B, C, D, E)
);
impl_fns!(
    (A, B, C, D, E, G),
    (A, B, C, D, E, G),
    (A, B, C, D, E, G),
    (A, B, C, D, E, G)
);
impl_fns!(
    (A, B, C, D, E, G, H),
    (A, B, C, D, E, G, H),
    (A, B, C, D, E, G, H),
    (A, B, C, D, E, G, H)
);
impl_fns!(
    (A, B, C, D, E, G, H, I),
    (A, B, C, D, E, G, H, I),
    (A, B, C, D, E, G, H, I),
    (A, B, C, D, E, G, H, I)
);

/// What the child calls: decode the arguments in `args`, run, append the encoded result to `out`.
pub(crate) type Trampoline = fn(args: &[u8], out: &mut Vec<u8>) -> Result<(), CodecFailure>;

/// Decodes one argument value of a task.
pub(crate) fn decode_args<A: DeserializeOwned>(args: &[u8]) -> Result<A, CodecFailure> {
    rmp_serde::from_slice(args).map_err(|e| CodecFailure::Decode(format!("arguments: {e}")))
}

/// Appends one encoded result value.
pub(crate) fn encode_output(
    out: &mut Vec<u8>,
    output: &impl Serialize,
) -> Result<(), CodecFailure> {
    crate::wire::push(out, output).map_err(CodecFailure::Encode)
}

fn trampoline<F: TaskFn<M>, M>(args: &[u8], out: &mut Vec<u8>) -> Result<(), CodecFailure> {
    let args = decode_args(args)?;
    let output = conjure::<F, M>().call(args);
    encode_output(out, &output)
}

fn async_trampoline<F: AsyncTaskFn<M>, M>(
    args: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), CodecFailure> {
    let args = decode_args(args)?;
    const { assert_zero_sized::<F>() };
    // SAFETY: as in `conjure`: `F` is zero-sized (checked above), `AsyncTaskFn` is sealed and
    // implemented only for `Fn` types, whose zero-sized instances are function items and
    // closures without data, so `zeroed` is their only value; `F: Copy`.
    let f = unsafe { std::mem::zeroed::<F>() };
    let output = async_io::block_on(f.call(args));
    encode_output(out, &output)
}

/// Produces the value of a task function type out of nothing.
pub(crate) fn conjure<F: TaskFn<M>, M>() -> F {
    const { assert_zero_sized::<F>() };
    // SAFETY: `F` is zero-sized (checked at compile time above), so it has no bytes and
    // `zeroed` is its only value. `TaskFn` is sealed and implemented only for `Fn` types; the
    // only zero-sized `Fn` types on stable Rust are function items and closures whose captures
    // are all zero-sized `Copy` values, which have no validity invariant to break. `F: Copy`,
    // so producing a value duplicates no ownership.
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

/// The fixed point in the executable that entries are measured from.
#[inline(never)]
fn anchor() {}

/// The address of [`anchor`], always taken here: if a generic caller took it, rustc could give
/// that caller's crate its own copy of the small function, at another address.
#[inline(never)]
fn anchor_address() -> usize {
    anchor as fn() as usize
}

/// The address of `trampoline` as an offset from the anchor.
pub(crate) fn entry_for(trampoline: Trampoline) -> u64 {
    (trampoline as usize).wrapping_sub(anchor_address()) as u64
}

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

/// [`entry_of`] for the type of `f`.
pub(crate) fn entry_of_val<F: TaskFn<M>, M>(_f: F) -> u64 {
    entry_of::<F, M>()
}

/// A function whose entry fingerprints the code layout of this build.
fn layout_probe() -> u64 {
    u64::from(PROTOCOL_VERSION)
}

/// Turns an entry received from the parent back into the trampoline it names.
///
/// # Safety
///
/// `entry` must come from [`entry_of`] in a process running the same executable file as this
/// one, which the worker ensures by refusing a parent whose build identity differs.
pub(crate) unsafe fn resolve(entry: u64) -> Trampoline {
    let address = anchor_address().wrapping_add(entry as usize);
    // SAFETY: the caller guarantees `entry` is the offset of a `Trampoline` from `anchor` in
    // this very executable; the loader maps the executable's code as one block, so the offset
    // between two of its functions is the same in every process running it, and `address` is
    // that trampoline here. A function pointer and a data pointer have the same size on every
    // platform this crate supports.
    unsafe { std::mem::transmute::<*const (), Trampoline>(address as *const ()) }
}

/// The function's name as shown in metadata: its type name without the module path
/// (`fib`); for a closure, from the enclosing named function on (`main::{{closure}}`).
pub(crate) fn func_name<F>() -> &'static str {
    let full = std::any::type_name::<F>();
    // Drop generic arguments, which could themselves contain `::`.
    let path = full.split('<').next().unwrap_or(full);
    let mut start = path.len();
    for segment in path.rsplit("::") {
        start -= segment.len();
        if !segment.starts_with("{{") {
            break;
        }
        start = start.saturating_sub(2);
    }
    &path[start..]
}

/// Protocol revision: bumped whenever the wire format changes.
const PROTOCOL_VERSION: u32 = 1;

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
        entry_of_val(layout_probe).hash(&mut hasher);
        match rustix::fs::stat(crate::process::worker_program()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn double(x: u64) -> u64 {
        x * 2
    }

    #[test]
    fn entry_round_trips_to_the_same_trampoline() {
        // SAFETY: the entry was made in this very process.
        let call = unsafe { resolve(entry_of_val(double)) };
        let mut args = Vec::new();
        crate::wire::push(&mut args, &21u64).unwrap();
        let mut out = Vec::new();
        call(&args, &mut out).unwrap();
        assert_eq!(rmp_serde::from_slice::<u64>(&out).unwrap(), 42);
    }

    #[test]
    fn names_come_from_the_type() {
        fn name_of<F>(_: F) -> &'static str {
            func_name::<F>()
        }
        assert_eq!(name_of(double), "double");
        assert_eq!(name_of(|x: u8| x), "names_come_from_the_type::{{closure}}");
        let nested = || name_of(|x: u8| x);
        assert_eq!(
            nested(),
            "names_come_from_the_type::{{closure}}::{{closure}}"
        );
    }
}
