//! [`TaskScope`]: a group of tasks that all end with it.

use std::fmt;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::TaskError;
use crate::executor::Executor;
use crate::func::TaskFn;
use crate::task::ProcessTask;

/// A group of tasks that cannot outlive it, in the spirit of aiotools' `TaskScope`.
///
/// Tasks spawned into (or added to) a scope are awaited together with
/// [`join`](TaskScope::join), or one by one as they finish with [`next`](TaskScope::next).
/// When the scope is dropped, or the future that owns it is dropped or cancelled, every task
/// still in it is cancelled and its worker stopped: no work is left running behind it.
///
/// # Examples
///
/// All tasks finish before `join` returns:
///
/// ```no_run
/// fn fib(n: u64) -> u64 { if n < 2 { n } else { fib(n - 1) + fib(n - 2) } }
///
/// # offload::init();
/// # futures_lite::future::block_on(async {
/// let pool = offload::ProcessPool::new(2)?;
/// let mut scope = offload::TaskScope::new();
/// for n in [20, 25, 30] {
///     scope.spawn(&pool, fib, n);
/// }
/// let results = scope.join().await; // in the order spawned
/// assert_eq!(results[0].as_ref().ok(), Some(&6765));
/// # Ok::<(), offload::Error>(()) }).unwrap();
/// ```
///
/// A race: the first result wins, dropping the scope kills the rest.
///
/// ```no_run
/// fn solve_slowly(seed: u64) -> u64 { seed }
/// fn solve_quickly(seed: u64) -> u64 { seed }
///
/// # offload::init();
/// # futures_lite::future::block_on(async {
/// let pool = offload::ProcessPool::new(2)?;
/// let mut scope = offload::TaskScope::new();
/// scope.spawn(&pool, solve_slowly, 7);
/// scope.spawn(&pool, solve_quickly, 7);
/// let (winner, answer) = scope.next().await.expect("two tasks ran");
/// drop(scope); // the loser's worker is stopped and replaced
/// println!("solver {winner} answered {}", answer?);
/// # Ok::<(), offload::Error>(()) }).unwrap();
/// ```
#[must_use = "dropping a scope cancels its tasks"]
pub struct TaskScope<T> {
    /// In the order added; `None` once a task's result was handed out.
    tasks: Vec<Option<ProcessTask<T>>>,
}

impl<T> TaskScope<T> {
    /// An empty scope.
    pub fn new() -> Self {
        TaskScope { tasks: Vec::new() }
    }

    /// Runs `f(args)` on `executor` as part of this scope; returns its index in the scope.
    pub fn spawn<E, F, M>(&mut self, executor: &E, f: F, args: F::Args) -> usize
    where
        E: Executor,
        F: TaskFn<M, Output = T>,
    {
        self.add(executor.spawn(f, args))
    }

    /// Makes `task` part of this scope; returns its index in the scope.
    pub fn add(&mut self, task: ProcessTask<T>) -> usize {
        self.tasks.push(Some(task));
        self.tasks.len() - 1
    }

    /// How many tasks were added, finished or not.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether no task was added.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The tasks whose results were not handed out yet, with their indices.
    pub fn tasks(&self) -> impl Iterator<Item = (usize, &ProcessTask<T>)> {
        self.tasks
            .iter()
            .enumerate()
            .filter_map(|(i, task)| Some((i, task.as_ref()?)))
    }

    /// Cancels every task still in the scope; returns how many it cancelled.
    pub fn cancel_all(&self) -> usize {
        self.tasks().filter(|(_, task)| task.cancel()).count()
    }

    /// The next task to finish, with its index; `None` once every result was handed out.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future loses no result.
    pub async fn next(&mut self) -> Option<(usize, Result<T, TaskError>)> {
        poll_fn(|cx| self.poll_next_finished(cx)).await
    }

    fn poll_next_finished(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<(usize, Result<T, TaskError>)>> {
        let mut any = false;
        for (index, slot) in self.tasks.iter_mut().enumerate() {
            let Some(task) = slot else { continue };
            any = true;
            if let Poll::Ready(result) = Pin::new(task).poll(cx) {
                *slot = None;
                return Poll::Ready(Some((index, result)));
            }
        }
        if any {
            Poll::Pending
        } else {
            Poll::Ready(None)
        }
    }

    /// Waits for every task; returns their results in the order they were added (a task
    /// whose result [`next`](TaskScope::next) already handed out is not in the list).
    ///
    /// If the returned future is dropped before it completes, the scope goes with it and its
    /// remaining tasks are cancelled.
    pub async fn join(mut self) -> Vec<Result<T, TaskError>> {
        let mut results: Vec<Option<(usize, Result<T, TaskError>)>> =
            std::iter::repeat_with(|| None)
                .take(self.tasks.len())
                .collect();
        while let Some((index, result)) = self.next().await {
            results[index] = Some((index, result));
        }
        results.into_iter().flatten().map(|(_, r)| r).collect()
    }
}

impl<T> Default for TaskScope<T> {
    fn default() -> Self {
        TaskScope::new()
    }
}

impl<T> fmt::Debug for TaskScope<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.tasks().map(|(_, task)| task))
            .finish()
    }
}
