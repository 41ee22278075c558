//! The crash-loop breaker: how a pool reacts when its workers cannot start.
//!
//! Start-ups (launch, handshake, `init`) are counted pool-wide. A failure is retried after a
//! short pause (20 ms, then 40 ms); the third failure in a row *trips* the breaker: every
//! queued task fails with the start-up error, and no worker is started for a back-off (1 s,
//! doubling on every trip up to 60 s). After the back-off, one slot, holding a task that
//! arrived meanwhile, makes one attempt (the *probe*); the others wait for its outcome. A
//! success closes the breaker and resets the back-off.
//!
//! So a worker that cannot start never burns the CPU in respawns, never leaves a task waiting
//! for ever, and never breaks the pool for good.

use std::cell::Cell;
use std::time::{Duration, Instant};

use event_listener::{Event, EventListener};

/// Consecutive start-up failures that trip the breaker.
pub(crate) const TRIP_AFTER: u32 = 3;

/// The first back-off after a trip; it doubles with every trip that follows.
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// The longest back-off.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What a slot does after a failed start-up.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AfterFailure {
    /// Try again after this pause.
    Retry(Duration),
    /// The breaker tripped: fail the queued tasks, start nothing until the back-off ends.
    Tripped,
    /// The breaker was already open (an attempt begun before it tripped): start nothing
    /// until the back-off ends.
    Open,
}

/// The start-up state of one pool, shared by its slots on the driver thread.
#[derive(Default)]
pub(crate) struct Breaker {
    /// Start-ups that failed since the last success.
    failures: Cell<u32>,
    /// Trips since the last success: how long the back-off is.
    trips: Cell<u32>,
    /// While the breaker is open: when the next attempt may be made.
    open_until: Cell<Option<Instant>>,
    /// Whether a slot has taken the next attempt on itself.
    probing: Cell<bool>,
    /// Notified when the breaker closes, trips, or its probe gives up.
    changed: Event,
}

impl Breaker {
    /// Records a worker that started: the breaker closes.
    pub(crate) fn succeeded(&self) {
        self.failures.set(0);
        self.trips.set(0);
        self.probing.set(false);
        if self.open_until.take().is_some() {
            self.changed.notify(usize::MAX);
        }
    }

    /// Records a failed start-up, the probe's or another, and says what to do next.
    pub(crate) fn failed(&self, probe: bool) -> AfterFailure {
        if self.open_until.get().is_some() && !probe {
            return AfterFailure::Open;
        }
        let failures = self.failures.get() + 1;
        self.failures.set(failures);
        if failures < TRIP_AFTER {
            return AfterFailure::Retry(Duration::from_millis(10 << failures));
        }
        let trips = self.trips.get();
        self.trips.set(trips + 1);
        let backoff = FIRST_BACKOFF
            .saturating_mul(1 << trips.min(16))
            .min(MAX_BACKOFF);
        self.open_until.set(Some(Instant::now() + backoff));
        self.probing.set(false);
        self.changed.notify(usize::MAX);
        AfterFailure::Tripped
    }

    /// When the next attempt may be made, while the breaker is open.
    pub(crate) fn open_until(&self) -> Option<Instant> {
        self.open_until.get()
    }

    /// Takes the next attempt on the calling slot, unless another slot has; returns whether it
    /// did.
    pub(crate) fn take_probe(&self) -> bool {
        !self.probing.replace(true)
    }

    /// Gives the probe up without an attempt (the queue closed).
    pub(crate) fn drop_probe(&self) {
        self.probing.set(false);
        self.changed.notify(usize::MAX);
    }

    /// A listener for the next change; check the state again after creating it.
    pub(crate) fn listen(&self) -> EventListener {
        self.changed.listen()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_third_failure_in_a_row_trips_and_a_success_resets() {
        let breaker = Breaker::default();
        assert_eq!(
            breaker.failed(false),
            AfterFailure::Retry(Duration::from_millis(20))
        );
        assert_eq!(
            breaker.failed(false),
            AfterFailure::Retry(Duration::from_millis(40))
        );
        assert!(breaker.open_until().is_none());
        let before = Instant::now();
        assert_eq!(breaker.failed(false), AfterFailure::Tripped);
        let first = breaker.open_until().unwrap() - before;
        assert!(first >= FIRST_BACKOFF && first < FIRST_BACKOFF * 2);
        // An attempt begun before the trip changes nothing; the probe's failure doubles the
        // back-off.
        assert_eq!(breaker.failed(false), AfterFailure::Open);
        assert!(breaker.take_probe());
        assert!(!breaker.take_probe(), "one probe at a time");
        assert_eq!(breaker.failed(true), AfterFailure::Tripped);
        let second = breaker.open_until().unwrap() - Instant::now();
        assert!(second > FIRST_BACKOFF && second <= FIRST_BACKOFF * 2);
        assert!(breaker.take_probe(), "a trip ends the probe");
        breaker.succeeded();
        assert!(breaker.open_until().is_none());
        assert_eq!(
            breaker.failed(false),
            AfterFailure::Retry(Duration::from_millis(20))
        );
    }

    #[test]
    fn the_back_off_stops_growing_at_its_bound() {
        let breaker = Breaker::default();
        for _ in 0..40 {
            breaker.failed(true);
        }
        let left = breaker.open_until().unwrap() - Instant::now();
        assert!(left <= MAX_BACKOFF && left > MAX_BACKOFF - Duration::from_secs(1));
    }
}
