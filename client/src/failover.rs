//! Choosing among several controllers: which to ask first, and how long one that failed is left
//! for last. Shared by the SDK's calls and the proxy's route lookups, so that both fail over the
//! same way.
//!
//! A controller that fails a call (it is unreachable, or answers that it cannot answer now) is
//! put in a cooldown: for that long it is tried only after the others. The cooldown starts at
//! [`FIRST_COOLDOWN`] and doubles with each failure in a row, up to [`MAX_COOLDOWN`]; any answer
//! ends it. A controller in its cooldown is never skipped outright: when every controller is
//! cooling down, they are all still tried, so a cluster that comes back is found at once.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The cooldown after a first failure.
pub const FIRST_COOLDOWN: Duration = Duration::from_millis(500);
/// The longest cooldown, reached after a few failures in a row.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(15);

/// How one controller has been answering. Shared between tasks (a `Mutex` held for a few
/// instructions only).
#[derive(Debug, Default)]
pub struct Health(Mutex<HealthState>);

#[derive(Debug, Default)]
struct HealthState {
    /// Failed calls in a row.
    failures: u32,
    /// Until then the controller is tried only after the others.
    cooling_until: Option<Instant>,
}

impl Health {
    /// Whether the controller failed lately and should be tried after the others.
    pub fn is_cooling(&self, now: Instant) -> bool {
        self.0.lock().unwrap().cooling_until.is_some_and(|until| now < until)
    }

    /// Failed calls in a row.
    pub fn failures(&self) -> u32 {
        self.0.lock().unwrap().failures
    }

    /// The controller answered: its cooldown ends. Returns whether it had been failing (worth a
    /// log line).
    pub fn answered(&self) -> bool {
        let mut state = self.0.lock().unwrap();
        let was_failing = state.failures > 0;
        *state = HealthState::default();
        was_failing
    }

    /// The controller failed a call: it cools down for [`FIRST_COOLDOWN`] doubled per failure in
    /// a row, at most [`MAX_COOLDOWN`]. Returns the cooldown.
    pub fn failed(&self) -> Duration {
        let mut state = self.0.lock().unwrap();
        let cooldown = FIRST_COOLDOWN.saturating_mul(1 << state.failures.min(8)).min(MAX_COOLDOWN);
        state.failures = state.failures.saturating_add(1);
        state.cooling_until = Some(Instant::now() + cooldown);
        cooldown
    }
}

/// The order in which to try `healths`: starting at `start` and going round, those not cooling
/// down first, then those cooling down (in the same rotation).
pub fn try_order<'a>(healths: impl ExactSizeIterator<Item = &'a Health>, start: usize) -> Vec<usize> {
    let now = Instant::now();
    let cooling: Vec<bool> = healths.map(|health| health.is_cooling(now)).collect();
    let n = cooling.len();
    let rotation = (0..n).map(|i| (start + i) % n.max(1));
    let (mut order, late): (Vec<usize>, Vec<usize>) = rotation.partition(|&i| !cooling[i]);
    order.extend(late);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_controller_cools_down_longer_each_time_until_it_answers() {
        let health = Health::default();
        assert!(!health.is_cooling(Instant::now()));
        assert_eq!(health.failed(), FIRST_COOLDOWN);
        assert!(health.is_cooling(Instant::now()));
        assert_eq!(health.failed(), FIRST_COOLDOWN * 2);
        for _ in 0..20 {
            health.failed();
        }
        assert_eq!(health.failed(), MAX_COOLDOWN);
        assert!(health.answered(), "it had been failing");
        assert!(!health.is_cooling(Instant::now()));
        assert!(!health.answered());
        assert_eq!(health.failed(), FIRST_COOLDOWN, "an answer resets the doubling");
    }

    #[test]
    fn controllers_cooling_down_are_tried_last_and_never_dropped() {
        let healths: Vec<Health> = (0..3).map(|_| Health::default()).collect();
        assert_eq!(try_order(healths.iter(), 0), [0, 1, 2]);
        assert_eq!(try_order(healths.iter(), 1), [1, 2, 0]);
        healths[1].failed();
        assert_eq!(try_order(healths.iter(), 0), [0, 2, 1]);
        assert_eq!(try_order(healths.iter(), 1), [2, 0, 1]);
        healths[0].failed();
        healths[2].failed();
        assert_eq!(try_order(healths.iter(), 0), [0, 1, 2], "all cooling: all still tried");
    }
}
