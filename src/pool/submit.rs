//! How a task is submitted: its call (what runs in the worker, how its result is read), its
//! `Run` frame, encoded on the caller's thread, and the job that carries both to the queue.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::ProcessPool;
use crate::error::TaskError;
use crate::func::trampoline::{entry_of, entry_of_async};
use crate::func::{func_name, AsyncTaskFn, TaskFn};
use crate::protocol::{frame, Run, ToWorker, RUN_CAPTURE};
use crate::task::args::{ArgsLayout, EncodedArgs};
use crate::task::hand_end_to_driver;
use crate::task::options::TaskOptions;
use crate::task::shared::{decode_value, report_end, AnyTask, Decoder, Shared};
use crate::task::stream::{ItemSink, StreamItems, DEFAULT_WINDOW};
use crate::task::{ProcessStream, ProcessTask};

/// One task on its way to a worker.
pub(crate) struct Job {
    pub(crate) id: u64,
    /// The complete `Run` frame, arguments included; the task's metadata shares it.
    pub(crate) frame: Arc<Vec<u8>>,
    pub(crate) task: Arc<dyn AnyTask>,
}

/// A call on its way to a pool: what to run in the worker, and how to read its result.
pub(crate) struct Call<T> {
    pub(crate) entry: u64,
    pub(crate) func_name: &'static str,
    pub(crate) decode: Decoder<T>,
    /// How the arguments sit in the frame, to print them.
    pub(crate) layout: ArgsLayout,
    pub(crate) options: TaskOptions,
    /// `Run` flags beside those the options imply ([`RUN_ITEM_PROGRESS`](crate::protocol::RUN_ITEM_PROGRESS) for a chunk).
    pub(crate) flags: u8,
    /// For a stream: where its items go, and its window.
    pub(crate) stream: Option<(Arc<dyn ItemSink>, u64)>,
}

/// A call of the task function `F`.
pub(crate) fn call_of<F: TaskFn<M>, M>(options: TaskOptions) -> Call<F::Output> {
    Call {
        entry: entry_of::<F, M>(),
        func_name: func_name::<F>(),
        decode: decode_value::<F::Output>,
        layout: ArgsLayout::Value,
        options,
        flags: 0,
        stream: None,
    }
}

/// A call of the async task function `F`.
pub(crate) fn async_call_of<F: AsyncTaskFn<M>, M>(options: TaskOptions) -> Call<F::Output> {
    Call {
        entry: entry_of_async::<F, M>(),
        func_name: func_name::<F>(),
        decode: decode_value::<F::Output>,
        layout: ArgsLayout::Value,
        options,
        flags: 0,
        stream: None,
    }
}

/// Writes `args` as the payload of a `Run` frame.
pub(crate) fn encode_args<A: Serialize>(
    args: &A,
) -> impl FnOnce(&mut Vec<u8>) -> Result<(), String> + '_ {
    move |frame| frame::push(frame, args)
}

/// Task ids, unique across all pools of the process.
static NEXT_TASK_ID: AtomicU64 = AtomicU64::new(1);

/// Queues `call` on `pool`, with the payload `write_payload` appends to the frame, or returns
/// the task already failed if that is impossible.
pub(crate) fn submit<T: Send + 'static>(
    pool: Result<&ProcessPool, TaskError>,
    call: Call<T>,
    write_payload: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
) -> ProcessTask<T> {
    let id = NEXT_TASK_ID.fetch_add(1, Ordering::Relaxed);
    let pool = match pool {
        Ok(pool) => pool,
        Err(err) => {
            let shared = Arc::new(Shared::new(
                id,
                call.func_name,
                None,
                call.decode,
                call.options,
                None,
            ));
            shared.finish_with_error(err);
            report_end(&*shared);
            return ProcessTask::new(shared, None);
        }
    };
    let state = &pool.inner.state;
    let mut frame = Vec::with_capacity(64);
    let flags = call.flags | if call.options.capture { RUN_CAPTURE } else { 0 };
    let (items, window) = match call.stream {
        Some((items, window)) => (Some(items), window),
        None => (None, 0),
    };
    let encoded = frame::begin(
        &mut frame,
        &ToWorker::Run(Run {
            id,
            entry: call.entry,
            flags,
            window,
        }),
    )
    .map(|()| frame.len())
    .and_then(|args_start| write_payload(&mut frame).map(|()| args_start))
    .and_then(|args_start| frame::finish(&mut frame).map(|()| args_start));
    let (frame, args) = match encoded {
        Ok(args_start) => {
            let frame = Arc::new(frame);
            let args = EncodedArgs::new(frame.clone(), args_start, call.layout);
            (Ok(frame), Some(args))
        }
        Err(msg) => (Err(msg), None),
    };
    let shared = Shared::new(
        id,
        call.func_name,
        args,
        call.decode,
        call.options,
        Some(state.tally.clone()),
    );
    let shared = Arc::new(match items {
        Some(items) => shared.with_items(items),
        None => shared,
    });
    let any: Arc<dyn AnyTask> = shared.clone();
    let task = ProcessTask::new(shared, Some((any.clone(), state.notices().clone())));
    let frame = match frame {
        Ok(frame) => frame,
        Err(msg) => {
            any.finish_with_error(TaskError::Encode(format!("arguments: {msg}")));
            hand_end_to_driver(&any, state.notices());
            return task;
        }
    };
    state.register(any.clone());
    let job = Job {
        id,
        frame,
        task: any.clone(),
    };
    if pool.inner.jobs.try_send(job).is_err() {
        any.finish_with_error(TaskError::PoolClosed);
        state.report_end(&*any);
    }
    // Only elastic slots without a worker listen: a fixed pool pays one atomic load.
    state.demand.notify(usize::MAX);
    task
}

/// Queues a call of the stream trampoline at `entry` (its result is the number of items) on
/// `pool`, with the payload `write_payload` appends, and returns its stream.
pub(crate) fn submit_stream<T: DeserializeOwned + Send + 'static>(
    pool: Result<&ProcessPool, TaskError>,
    entry: u64,
    func_name: &'static str,
    options: TaskOptions,
    write_payload: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
) -> ProcessStream<T> {
    let window = options.window.unwrap_or(DEFAULT_WINDOW);
    let items = Arc::new(StreamItems::<T>::new(window));
    let call = Call {
        entry,
        func_name,
        decode: decode_value::<u64>,
        layout: ArgsLayout::Value,
        options,
        flags: 0,
        stream: Some((items.clone(), window)),
    };
    ProcessStream::new(submit(pool, call, write_payload), items)
}
