//! The two ways the crate waits: for a future with a deadline, and for a condition that an
//! [`Event`] announces.

use std::future::Future;
use std::time::Duration;

use event_listener::Event;
use futures_lite::future;

/// `future`'s output if it comes within `limit`, else `None` (and `future` is dropped).
pub(crate) async fn within<T>(limit: Duration, future: impl Future<Output = T>) -> Option<T> {
    future::or(async { Some(future.await) }, async {
        super::reactor::sleep(limit).await;
        None
    })
    .await
}

/// Waits until `done()` holds; `event` is notified whenever it may have become true.
///
/// The condition is checked again after the listener is registered, so a notification that
/// comes between the first check and the registration is not missed.
pub(crate) async fn until(event: &Event, done: impl Fn() -> bool) {
    loop {
        if done() {
            return;
        }
        let listener = event.listen();
        if done() {
            return;
        }
        listener.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn within_gives_the_output_or_none() {
        future::block_on(async {
            assert_eq!(within(Duration::from_secs(5), async { 7 }).await, Some(7));
            let never = within(Duration::from_millis(1), future::pending::<()>()).await;
            assert_eq!(never, None);
        });
    }

    #[test]
    fn until_sees_a_notification_from_another_thread() {
        let event = Arc::new(Event::new());
        let flag = Arc::new(AtomicBool::new(false));
        let (e, f) = (event.clone(), flag.clone());
        let setter = std::thread::spawn(move || {
            f.store(true, Ordering::SeqCst);
            e.notify(usize::MAX);
        });
        future::block_on(until(&event, || flag.load(Ordering::SeqCst)));
        setter.join().unwrap();
    }
}
