//! The jobs waiting for a worker: the pool's queue, and in front of it the jobs given back
//! unstarted by a worker that held them ahead (withdrawn from behind a slow task, or left
//! behind by a worker that died or was stopped).

use std::cell::RefCell;
use std::collections::VecDeque;

use async_channel::Receiver;
use event_listener::Event;
use futures_lite::future;

use super::submit::Job;

/// The jobs waiting for a worker, shared by a driver's slots.
pub(crate) struct Backlog {
    queue: Receiver<Job>,
    /// Jobs given back, oldest first; taken before the queue's.
    returned: RefCell<VecDeque<Job>>,
    /// Notified when a job is given back.
    returned_event: Event,
}

impl Backlog {
    pub(crate) fn new(queue: Receiver<Job>) -> Backlog {
        Backlog {
            queue,
            returned: RefCell::new(VecDeque::new()),
            returned_event: Event::new(),
        }
    }

    /// Waits for the next job; `None` once the queue is closed and nothing waits.
    pub(crate) async fn recv(&self) -> Option<Job> {
        loop {
            if let Some(job) = self.returned.borrow_mut().pop_front() {
                return Some(job);
            }
            let returned = self.returned_event.listen();
            if let Some(job) = self.returned.borrow_mut().pop_front() {
                return Some(job);
            }
            // `recv` loses nothing when dropped unfinished.
            let next = future::or(async { Some(self.queue.recv().await.ok()) }, async {
                returned.await;
                None
            });
            match next.await {
                Some(job) => return job.or_else(|| self.returned.borrow_mut().pop_front()),
                None => continue,
            }
        }
    }

    /// The next job, if one waits.
    pub(crate) fn try_recv(&self) -> Option<Job> {
        let returned = self.returned.borrow_mut().pop_front();
        returned.or_else(|| self.queue.try_recv().ok())
    }

    /// Gives back jobs that never started. They go before every job of the queue, and among
    /// those given back in the order they were spawned (ids grow with it).
    pub(crate) fn give_back(&self, jobs: impl IntoIterator<Item = Job>) {
        let mut returned = self.returned.borrow_mut();
        let before = returned.len();
        for job in jobs {
            let at = returned.partition_point(|other| other.id < job.id);
            returned.insert(at, job);
        }
        if returned.len() > before {
            self.returned_event.notify(usize::MAX);
        }
    }

    /// How many jobs wait.
    pub(crate) fn len(&self) -> usize {
        self.returned.borrow().len() + self.queue.len()
    }

    /// Whether the queue is closed (no task can be added).
    pub(crate) fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }

    /// Whether the queue is closed and no job waits.
    pub(crate) fn is_drained(&self) -> bool {
        self.queue.is_closed() && self.len() == 0
    }
}
