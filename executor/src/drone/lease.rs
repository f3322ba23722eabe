//! The drone's side of a key lease (docs/design/backends-and-leases.md#key-leases-and-fencing):
//! when to renew, and when a drone that cannot renew must stop the backend itself so the key is
//! never served twice.
//!
//! Everything is measured on the drone's monotonic clock from the *send time* of the last renewal
//! the controller confirmed: the controller extends the lease no earlier than it receives the
//! request, so the drone's deadlines are always ahead of the controller's expiry, whatever the
//! network delay or the skew between wall clocks.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// How soon to try again when a renewal could not even be sent (no controller attached).
const RETRY_UNSENT: Duration = Duration::from_millis(250);

#[derive(Debug)]
pub struct KeyLease {
    duration: Duration,
    /// Send time of the last confirmed renewal (or of the spawn's arrival).
    confirmed: Instant,
    /// Renewals sent and not yet answered: (stream generation, send time), oldest first. The
    /// controller answers on the same stream in order; answers from a dead stream never come.
    in_flight: VecDeque<(u64, Instant)>,
    next_renewal: Instant,
    soft_done: bool,
    hard_done: bool,
}

/// What a renewal answer means for the backend.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// The lease was extended; the renewal was sent at this instant.
    Renewed(Instant),
    /// The controller refused: the key is no longer this backend's (KEY_EXPIRED).
    Lost,
    /// No renewal of that stream is outstanding (a late answer after a reconnect).
    Stale,
}

impl KeyLease {
    /// A lease last confirmed at `confirmed`.
    pub fn new(duration: Duration, confirmed: Instant) -> Self {
        KeyLease {
            duration,
            confirmed,
            in_flight: VecDeque::new(),
            next_renewal: confirmed + duration / 3,
            soft_done: false,
            hard_done: false,
        }
    }

    pub fn next_renewal(&self) -> Instant {
        self.next_renewal
    }

    /// A renewal went out on the stream of `generation` at `now`, or could not be sent (`None`).
    pub fn sent(&mut self, generation: Option<u64>, now: Instant) {
        match generation {
            Some(generation) => {
                self.in_flight.push_back((generation, now));
                self.next_renewal = now + self.duration / 3;
            }
            None => self.next_renewal = now + RETRY_UNSENT.min(self.duration / 10),
        }
    }

    /// The answer to the oldest outstanding renewal of stream `generation`.
    pub fn answered(&mut self, generation: u64, renewed: bool) -> Answer {
        // Renewals sent on earlier streams will never be answered.
        while self.in_flight.front().is_some_and(|(g, _)| *g < generation) {
            self.in_flight.pop_front();
        }
        match self.in_flight.front() {
            Some((g, sent)) if *g == generation => {
                let sent = *sent;
                self.in_flight.pop_front();
                if renewed {
                    self.confirmed = self.confirmed.max(sent);
                    Answer::Renewed(sent)
                } else {
                    Answer::Lost
                }
            }
            _ if !renewed => Answer::Lost,
            _ => Answer::Stale,
        }
    }

    /// When the backend must be soft-terminated unless a renewal is confirmed first.
    pub fn soft_deadline(&self) -> Option<Instant> {
        (!self.soft_done).then(|| self.confirmed + self.duration / 2)
    }

    /// When the backend must be killed unless a renewal is confirmed first.
    pub fn hard_deadline(&self) -> Option<Instant> {
        (!self.hard_done).then(|| self.confirmed + self.duration * 3 / 4)
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
        let mut lease = KeyLease::new(Duration::from_secs(30), start);
        assert_eq!(lease.next_renewal(), start + Duration::from_secs(10));
        assert_eq!(lease.soft_deadline(), Some(start + Duration::from_secs(15)));
        assert_eq!(lease.hard_deadline(), Some(start + Duration::from_millis(22_500)));

        let sent = start + Duration::from_secs(10);
        lease.sent(Some(1), sent);
        assert_eq!(lease.answered(1, true), Answer::Renewed(sent));
        assert_eq!(lease.soft_deadline(), Some(sent + Duration::from_secs(15)));
        assert_eq!(lease.answered(1, true), Answer::Stale);
    }

    #[tokio::test]
    async fn answers_from_an_old_stream_are_dropped_and_refusals_count() {
        let start = Instant::now();
        let mut lease = KeyLease::new(Duration::from_secs(3), start);
        lease.sent(Some(1), start);
        lease.sent(Some(2), start + Duration::from_secs(1));
        assert_eq!(lease.answered(2, true), Answer::Renewed(start + Duration::from_secs(1)));
        lease.sent(None, start + Duration::from_secs(2));
        assert!(lease.next_renewal() < start + Duration::from_secs(3));
        assert_eq!(lease.answered(2, false), Answer::Lost);
    }
}
