//! Task functions: what may run in a worker ([`TaskFn`], [`AsyncTaskFn`]), how it is named
//! in metadata, and the trampolines that call it there.
//!
//! A task function is a zero-sized `Copy` type: a function item or a closure that captures
//! nothing (or only zero-sized `Copy` values). Such a value carries no data, so the worker can
//! produce it from nothing. What the parent sends is the entry of a trampoline monomorphised
//! for that function type (see `protocol::entry`): the trampoline decodes the arguments, calls
//! the function and encodes the result.

use std::future::Future;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub(crate) mod trampoline;

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
/// A closure that captures data is refused when the program is built (the captured data
/// would not exist in the worker); pass such values as arguments instead. Closures need their
/// parameter types written out (`|x: u64| x * 2`), as nothing else tells the compiler.
///
/// A closure that captures only zero-sized `Copy` values (a unit struct, a `PhantomData`)
/// builds, and has those values *recreated out of nothing* in the worker. That is harmless
/// for plain markers, but a zero-sized value whose existence means something (a token
/// proving that a lock is held, that a library was initialised, that a capability was
/// granted) proves nothing there: don't capture such values.
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
    pub trait SealedInit<M> {}
    pub trait SealedOutput {}
    pub trait SealedStream<M> {}
    pub trait SealedAsyncStream<M> {}
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

/// A worker initializer: a function of no arguments, run once in every worker before its
/// first task (see [`PoolBuilder::init`](crate::PoolBuilder::init)).
///
/// It is implemented for every function item and non-capturing closure of no parameters that
/// returns `()` or `Result<(), E>` with `E: Display` (see [`InitOutput`]). As for
/// [`TaskFn`], a capturing closure is refused when the program is built.
///
/// This trait is sealed: only the blanket implementation exists.
///
/// # Examples
///
/// ```no_run
/// # offload::init();
/// use std::sync::OnceLock;
///
/// static TABLE: OnceLock<Vec<u64>> = OnceLock::new();
///
/// fn load_table() -> Result<(), String> {
///     TABLE.set((0..1000).collect()).map_err(|_| "loaded twice".to_string())
/// }
///
/// let pool = offload::ProcessPool::builder().init(load_table).build()?;
/// # Ok::<(), offload::Error>(())
/// ```
pub trait InitFn<M>: sealed::SealedInit<M> + Copy + Send + Sync + 'static {
    /// What the function returns.
    type Output: InitOutput;

    /// Calls the function.
    #[doc(hidden)]
    fn call(self) -> Self::Output;
}

impl<F, R> sealed::SealedInit<fn() -> R> for F where F: Fn() -> R {}
impl<F, R> InitFn<fn() -> R> for F
where
    F: Fn() -> R + Copy + Send + Sync + 'static,
    R: InitOutput,
{
    type Output = R;

    fn call(self) -> R {
        self()
    }
}

/// What a worker initializer may return: `()`, or `Result<(), E>` whose error is shown with
/// `Display` in [`TaskError::InitFailed`](crate::TaskError::InitFailed).
///
/// This trait is sealed: only the implementations below exist.
///
/// # Examples
///
/// ```
/// use offload::InitOutput;
///
/// assert_eq!(().into_result(), Ok(()));
/// assert_eq!(Err::<(), _>("no GPU").into_result(), Err("no GPU".to_string()));
/// ```
pub trait InitOutput: sealed::SealedOutput {
    /// The outcome, with the error as its `Display` text.
    fn into_result(self) -> Result<(), String>;
}

impl sealed::SealedOutput for () {}
impl InitOutput for () {
    fn into_result(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: std::fmt::Display> sealed::SealedOutput for Result<(), E> {}
impl<E: std::fmt::Display> InitOutput for Result<(), E> {
    fn into_result(self) -> Result<(), String> {
        self.map_err(|e| e.to_string())
    }
}

/// A function whose result is a sequence of items, sent to the parent one by one as the
/// worker produces them: see [`ProcessPool::spawn_stream`](crate::ProcessPool::spawn_stream).
///
/// It is implemented for every function item and non-capturing closure whose parameters are
/// as for [`TaskFn`] and whose result is an [`IntoIterator`] of
/// `Serialize + DeserializeOwned + Send + 'static` items: a `Vec`, a range, an iterator
/// adapter (`impl Iterator<Item = T>`). The iterator runs in the worker, and need not be
/// `Send`.
///
/// This trait is sealed: only the blanket implementations exist.
///
/// # Examples
///
/// ```no_run
/// # offload::init();
/// use futures_lite::StreamExt;
///
/// fn squares(n: u64) -> impl Iterator<Item = u64> {
///     (0..n).map(|i| i * i)
/// }
///
/// # futures_lite::future::block_on(async {
/// let pool = offload::ProcessPool::new(1)?;
/// let all: Vec<u64> = pool.spawn_stream(squares, 4).map(Result::unwrap).collect().await;
/// assert_eq!(all, [0, 1, 4, 9]);
/// # Ok::<(), offload::Error>(()) }).unwrap();
/// ```
pub trait StreamFn<M>: sealed::SealedStream<M> + Copy + Send + Sync + 'static {
    /// What the caller passes: the argument itself, a tuple of them, or `()`.
    type Args: Serialize + DeserializeOwned + Send + 'static;
    /// What the function returns.
    type Items: IntoIterator<Item = Self::Item>;
    /// One item.
    type Item: Serialize + DeserializeOwned + Send + 'static;

    /// Calls the function.
    #[doc(hidden)]
    fn call(self, args: Self::Args) -> Self::Items;
}

/// The async twin of [`StreamFn`]: a function whose result is a
/// [`Stream`](futures_lite::Stream) of items, driven in the worker on `async_io::block_on`
/// (so async-io based code, timers and sockets, works in it) and sent to the parent one by
/// one as they come: see
/// [`ProcessPool::spawn_stream_async`](crate::ProcessPool::spawn_stream_async).
///
/// It is implemented for every function item and non-capturing closure whose parameters are
/// as for [`TaskFn`] and whose result is a `Stream` of
/// `Serialize + DeserializeOwned + Send + 'static` items; the stream need not be `Send`.
///
/// This trait is sealed: only the blanket implementations exist.
///
/// # Examples
///
/// ```no_run
/// # offload::init();
/// use std::time::Duration;
/// use futures_lite::{stream, Stream, StreamExt};
///
/// fn ticks(n: u64) -> impl Stream<Item = u64> {
///     stream::iter(0..n).then(|i| async move {
///         async_io::Timer::after(Duration::from_millis(1)).await;
///         i
///     })
/// }
///
/// # futures_lite::future::block_on(async {
/// let pool = offload::ProcessPool::new(1)?;
/// let all: Vec<u64> = pool.spawn_stream_async(ticks, 3).map(Result::unwrap).collect().await;
/// assert_eq!(all, [0, 1, 2]);
/// # Ok::<(), offload::Error>(()) }).unwrap();
/// ```
pub trait AsyncStreamFn<M>: sealed::SealedAsyncStream<M> + Copy + Send + Sync + 'static {
    /// What the caller passes: the argument itself, a tuple of them, or `()`.
    type Args: Serialize + DeserializeOwned + Send + 'static;
    /// What the function returns.
    type Items: futures_lite::Stream<Item = Self::Item>;
    /// One item.
    type Item: Serialize + DeserializeOwned + Send + 'static;

    /// Calls the function.
    #[doc(hidden)]
    fn call(self, args: Self::Args) -> Self::Items;
}

/// Implements [`TaskFn`], [`AsyncTaskFn`], [`StreamFn`] and [`AsyncStreamFn`] for functions of the given parameters, passed as
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

        impl<F, $($a,)* R> sealed::SealedStream<fn($($a),*) -> R> for F
        where
            F: Fn($($a),*) -> R,
        {
        }
        impl<F, $($a,)* R> StreamFn<fn($($a),*) -> R> for F
        where
            F: Fn($($a),*) -> R + Copy + Send + Sync + 'static,
            $($a: Serialize + DeserializeOwned + Send + 'static,)*
            R: IntoIterator,
            R::Item: Serialize + DeserializeOwned + Send + 'static,
        {
            type Args = $args;
            type Items = R;
            type Item = R::Item;

            #[allow(non_snake_case)]
            fn call(self, $pat: Self::Args) -> R {
                self($($arg),*)
            }
        }

        impl<F, $($a,)* S> sealed::SealedAsyncStream<fn($($a),*) -> S> for F
        where
            F: Fn($($a),*) -> S,
        {
        }
        impl<F, $($a,)* S> AsyncStreamFn<fn($($a),*) -> S> for F
        where
            F: Fn($($a),*) -> S + Copy + Send + Sync + 'static,
            $($a: Serialize + DeserializeOwned + Send + 'static,)*
            S: futures_lite::Stream,
            S::Item: Serialize + DeserializeOwned + Send + 'static,
        {
            type Args = $args;
            type Items = S;
            type Item = S::Item;

            #[allow(non_snake_case)]
            fn call(self, $pat: Self::Args) -> S {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn double(x: u64) -> u64 {
        x * 2
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
