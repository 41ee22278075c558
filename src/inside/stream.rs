//! The worker's side of a stream: items are encoded on the task's thread into a batch, which
//! a sender thread writes as `Items` frames while the task produces the next ones (so items
//! that come fast travel many to a frame, and an item that comes alone leaves at once). The
//! task may run at most the credit the parent granted ahead: it starts with the stream's
//! window and grows as the consumer takes items.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};

use super::{channel, lock, Channel};
use crate::protocol::{frame, FromWorker};

/// The credit of the stream that runs.
#[derive(Default)]
pub(crate) struct Credit {
    /// The stream's id; `None` while no stream runs.
    id: Option<u64>,
    /// How many items it may have sent in all.
    pub(super) granted: u64,
}

impl Credit {
    /// The credit of task `id` with the stream `window` of its `Run` frame.
    pub(super) fn open(id: u64, window: u64) -> Credit {
        Credit {
            id: Some(id),
            granted: window,
        }
    }

    /// Adds `items` if they are for stream `id`; returns whether they were.
    pub(super) fn grant(&mut self, id: u64, items: u64) -> bool {
        if self.id != Some(id) {
            return false;
        }
        self.granted = self.granted.saturating_add(items);
        true
    }
}

/// Bytes of encoded items after which the task waits for the sender to take the batch, so
/// that a batch stays far below the frame cap.
const BATCH_BYTES: usize = 16 << 20;

/// The batch between the task's thread and the sender thread.
struct Batch {
    /// The stream the items belong to.
    id: u64,
    /// The items: `u32` length and bytes each.
    items: Vec<u8>,
    count: u32,
    /// The sender is writing a batch it took.
    writing: bool,
}

struct Batching {
    batch: Mutex<Batch>,
    /// Notified when items are added (for the sender) and when a batch was written (for the
    /// task).
    changed: Condvar,
}

impl Batching {
    /// Locks the batch and waits while `busy` holds for it.
    fn wait_while(&self, busy: impl FnMut(&mut Batch) -> bool) -> MutexGuard<'_, Batch> {
        self.changed
            .wait_while(lock(&self.batch), busy)
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Locks the batch once every item of the last stream was written.
    fn drained(&self) -> MutexGuard<'_, Batch> {
        self.wait_while(|batch| batch.count > 0 || batch.writing)
    }
}

/// The sender thread's batching, started with the first stream.
static BATCHING: OnceLock<Arc<Batching>> = OnceLock::new();

fn batching() -> Result<&'static Arc<Batching>, String> {
    if let Some(batching) = BATCHING.get() {
        return Ok(batching);
    }
    let batching = Arc::new(Batching {
        batch: Mutex::new(Batch {
            id: 0,
            items: Vec::new(),
            count: 0,
            writing: false,
        }),
        changed: Condvar::new(),
    });
    let shared = batching.clone();
    std::thread::Builder::new()
        .name("offload-stream".into())
        .spawn(move || send_batches(&shared))
        .map_err(|e| format!("could not start its stream thread: {e}"))?;
    Ok(BATCHING.get_or_init(|| batching))
}

/// The sender thread: writes each batch as one `Items` frame.
fn send_batches(batching: &Batching) {
    let Some(channel) = channel() else {
        return;
    };
    let mut spare = Vec::new();
    loop {
        let (id, mut items, count) = {
            let mut batch = batching.wait_while(|batch| batch.count == 0);
            batch.writing = true;
            let count = std::mem::replace(&mut batch.count, 0);
            (batch.id, std::mem::replace(&mut batch.items, spare), count)
        };
        write(channel, id, &items, count);
        items.clear();
        frame::shrink_for(&mut items, 0);
        spare = items;
        lock(&batching.batch).writing = false;
        batching.changed.notify_all();
    }
}

/// Writes `count` encoded `items` of stream `id` as one frame.
fn write(channel: &Channel, id: u64, items: &[u8], count: u32) {
    channel.report(id, &FromWorker::Items { id, count }, items);
}

/// The items of the stream that runs, as its trampoline sends them.
pub(crate) struct Items {
    id: u64,
    sent: u64,
    /// The credit last seen: items it may send without looking again.
    allowed: u64,
    /// Where an item is encoded before it joins the batch.
    scratch: Vec<u8>,
    batching: &'static Batching,
    channel: &'static Channel,
}

impl Items {
    /// The items of the stream that runs; an error outside a worker's task.
    pub(crate) fn open() -> Result<Items, String> {
        let channel = channel().ok_or("a stream runs only in a worker")?;
        let id = channel.running().ok_or("no stream runs")?;
        let batching = batching()?;
        // Every stream waits for its items to be written before it ends; this is the guard.
        batching.drained().id = id;
        Ok(Items {
            id,
            sent: 0,
            allowed: 0,
            scratch: Vec::new(),
            batching,
            channel,
        })
    }

    /// Waits for credit, then encodes `item` (unguarded: a panic of its `Serialize` goes to
    /// the caller, and nothing is added) and adds it to the batch.
    pub(crate) fn send(&mut self, item: &impl serde::Serialize) -> Result<(), String> {
        if self.sent == self.allowed {
            self.allowed = self.channel.wait_for_credit(self.id, self.sent);
        }
        self.scratch.clear();
        rmp_serde::encode::write(&mut self.scratch, item).map_err(|e| e.to_string())?;
        let len = self.scratch.len();
        if len > frame::MAX_FRAME_LEN / 2 {
            return Err(format!(
                "an item of {len} bytes is over the limit of {} bytes",
                frame::MAX_FRAME_LEN / 2
            ));
        }
        let mut batch = self
            .batching
            .wait_while(|batch| batch.items.len() >= BATCH_BYTES);
        batch.items.extend_from_slice(&(len as u32).to_le_bytes());
        batch.items.extend_from_slice(&self.scratch);
        batch.count += 1;
        self.sent += 1;
        if batch.count == 1 && !batch.writing {
            self.batching.changed.notify_all();
        }
        drop(batch);
        frame::shrink_for(&mut self.scratch, 0);
        Ok(())
    }

    /// Waits until every item was written; returns how many there were.
    pub(crate) fn finish(self) -> u64 {
        drop(self.batching.drained());
        self.sent
    }
}
