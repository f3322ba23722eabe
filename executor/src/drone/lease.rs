//! The drone's side of a key lease (docs/design/backends-and-leases.md#key-leases-and-fencing):
//! when to renew, and when a drone that cannot renew must stop the backend itself so the key is
//! never served twice.
//!
//! Everything is measured on the drone's monotonic clock from the *send time* of the last renewal
//! the controller confirmed: the controller extends the lease no earlier than it receives the
//! request, so the drone's deadlines are always ahead of the controller's expiry, whatever the
//! network delay or the skew between wall clocks.
//!
//! A controller that cannot reach its store may answer a renewal *deferred*; one that arrives
//! before the soft deadline moves both deadlines later by the grace the controller promised, and
//! the store holds the key that much longer for it
//! (docs/design/backends-and-leases.md#store-outages). Only once per confirmation: the grace is
//! counted from the last confirmed renewal, however many deferrals follow.

use std::time::Duration;

use tokio::time::Instant;

/// When a key's lease was last confirmed: `ago` before `seen` on the monotonic clock. A drone
/// learns some confirmations only as an age: a Spawn says how much of the lease it spent on the
/// way, and a restarted drone reads its last renewal from the journal. The two are kept apart
/// because such a confirmation may precede the clock's origin (a drone started soon after boot),
/// which no `Instant` can hold; a deadline before `seen` is taken as `seen`, when it is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Confirmation {
    seen: Instant,
    ago: Duration,
}

impl Confirmation {
    /// Confirmed at `at` (a renewal's send time, or now for a lease nothing has spent yet).
    pub fn at(at: Instant) -> Self {
        Confirmation { seen: at, ago: Duration::ZERO }
    }

    /// Confirmed `ago` before `seen`.
    pub fn ago(ago: Duration, seen: Instant) -> Self {
        Confirmation { seen, ago }
    }

    /// `offset` after the confirmation, or `seen` if that is earlier.
    pub(super) fn after(&self, offset: Duration) -> Instant {
        self.seen + offset.saturating_sub(self.ago)
    }

    fn is_before(&self, at: Instant) -> bool {
        self.seen < at + self.ago
    }
}

/// One backend's key lease. The renewals themselves go out in batches for every key of the drone
/// (`super::renewer`); this keeps the deadlines they move.
#[derive(Debug)]
pub struct KeyLease {
    duration: Duration,
    /// The last confirmed renewal's send time (or the lease's start, as the Spawn told it).
    confirmed: Confirmation,
    /// Added to both deadlines: a renewal since `confirmed` was deferred in time.
    grace: Duration,
    soft_done: bool,
    hard_done: bool,
}

impl KeyLease {
    /// A lease last confirmed at `confirmed`.
    pub fn new(duration: Duration, confirmed: Confirmation) -> Self {
        KeyLease { duration, confirmed, grace: Duration::ZERO, soft_done: false, hard_done: false }
    }

    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// A renewal sent at `sent` was confirmed. An older confirmation arriving late moves nothing
    /// back.
    pub fn renewed(&mut self, sent: Instant) {
        if self.confirmed.is_before(sent) {
            self.confirmed = Confirmation::at(sent);
            self.grace = Duration::ZERO;
        }
    }

    /// A renewal was answered deferred at `at`, with `grace`: the deadlines move by the grace if
    /// the answer came before the soft deadline (after it, the backend is already stopping, and
    /// the store may have let the key go). Whether they moved.
    pub fn deferred(&mut self, at: Instant, grace: Duration) -> bool {
        let in_time = !self.soft_done && at < self.confirmed.after(self.duration / 2);
        if in_time && grace > self.grace {
            self.grace = grace;
            return true;
        }
        false
    }

    /// When the backend must be soft-terminated unless a renewal is confirmed first.
    pub fn soft_deadline(&self) -> Option<Instant> {
        (!self.soft_done).then(|| self.confirmed.after(self.duration / 2 + self.grace))
    }

    /// When the backend must be killed unless a renewal is confirmed first.
    pub fn hard_deadline(&self) -> Option<Instant> {
        (!self.hard_done).then(|| self.confirmed.after(self.duration * 3 / 4 + self.grace))
    }

    pub fn soft_fired(&mut self) {
        self.soft_done = true;
    }

    pub fn hard_fired(&mut self) {
        self.soft_done = true;
        self.hard_done = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deadlines_follow_the_send_time_of_the_last_confirmed_renewal() {
        let start = Instant::now();
        let mut lease = KeyLease::new(Duration::from_secs(30), Confirmation::at(start));
        assert_eq!(lease.soft_deadline(), Some(start + Duration::from_secs(15)));
        assert_eq!(lease.hard_deadline(), Some(start + Duration::from_millis(22_500)));

        let sent = start + Duration::from_secs(10);
        lease.renewed(sent);
        assert_eq!(lease.soft_deadline(), Some(sent + Duration::from_secs(15)));
        // A late answer to an earlier batch moves nothing back.
        lease.renewed(start + Duration::from_secs(5));
        assert_eq!(lease.soft_deadline(), Some(sent + Duration::from_secs(15)));
        lease.soft_fired();
        assert_eq!(lease.soft_deadline(), None);
        assert_eq!(lease.hard_deadline(), Some(sent + Duration::from_millis(22_500)));
    }

    #[tokio::test]
    async fn a_deferral_before_the_soft_deadline_moves_both_deadlines_by_the_grace_once() {
        let start = Instant::now();
        let grace = Duration::from_secs(120);
        let mut lease = KeyLease::new(Duration::from_secs(30), Confirmation::at(start));
        assert!(lease.deferred(start + Duration::from_secs(14), grace));
        assert_eq!(lease.soft_deadline(), Some(start + Duration::from_secs(15) + grace));
        assert_eq!(lease.hard_deadline(), Some(start + Duration::from_millis(22_500) + grace));
        // More deferrals during the outage add nothing: the grace counts from the confirmation.
        assert!(!lease.deferred(start + Duration::from_secs(20), grace));
        assert_eq!(lease.soft_deadline(), Some(start + Duration::from_secs(15) + grace));
        // The store is back: a confirmation puts the deadlines back on the lease alone.
        let sent = start + Duration::from_secs(70);
        lease.renewed(sent);
        assert_eq!(lease.soft_deadline(), Some(sent + Duration::from_secs(15)));
    }

    #[tokio::test]
    async fn a_deferral_that_comes_after_the_soft_deadline_moves_nothing() {
        let start = Instant::now();
        let mut lease = KeyLease::new(Duration::from_secs(30), Confirmation::at(start));
        assert!(!lease.deferred(start + Duration::from_secs(15), Duration::from_secs(120)));
        assert_eq!(lease.soft_deadline(), Some(start + Duration::from_secs(15)));
        lease.soft_fired();
        assert!(!lease.deferred(start + Duration::from_secs(1), Duration::from_secs(120)), "already stopping");
        assert_eq!(lease.hard_deadline(), Some(start + Duration::from_millis(22_500)));
    }

    #[tokio::test]
    async fn a_lease_confirmed_before_it_arrived_keeps_the_deadlines_it_had_left() {
        let arrived = Instant::now();
        // 10 s of a 30 s lease spent on the way.
        let mut lease = KeyLease::new(Duration::from_secs(30), Confirmation::ago(Duration::from_secs(10), arrived));
        assert_eq!(lease.soft_deadline(), Some(arrived + Duration::from_secs(5)));
        assert_eq!(lease.hard_deadline(), Some(arrived + Duration::from_millis(12_500)));
        // A renewal sent on arrival is later than the confirmation: it counts.
        lease.renewed(arrived);
        assert_eq!(lease.soft_deadline(), Some(arrived + Duration::from_secs(15)));
    }

    #[tokio::test]
    async fn deadlines_already_past_on_arrival_are_due_at_once() {
        let arrived = Instant::now();
        // Confirmed longer ago than the clock may reach back.
        let lease = KeyLease::new(Duration::from_secs(30), Confirmation::ago(Duration::from_secs(1 << 40), arrived));
        assert_eq!(lease.soft_deadline(), Some(arrived));
        assert_eq!(lease.hard_deadline(), Some(arrived));
        let mut lease = KeyLease::new(Duration::from_secs(30), Confirmation::ago(Duration::from_secs(20), arrived));
        assert_eq!(lease.soft_deadline(), Some(arrived), "15 s of the lease were due 5 s ago");
        assert_eq!(lease.hard_deadline(), Some(arrived + Duration::from_millis(2_500)));
        // A deferral cannot save a backend whose soft deadline has passed.
        assert!(!lease.deferred(arrived, Duration::from_secs(120)));
    }
}
