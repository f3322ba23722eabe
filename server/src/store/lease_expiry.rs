//! When an expired key lease may be freed, so that a store outage ends no session and a key still
//! never has two holders (docs/design/backends-and-leases.md#store-outages).
//!
//! A controller that cannot reach the store answers a drone's renewal *deferred*, and the drone
//! may then keep the backend for the outage grace past its lease deadlines. Nobody can free a key
//! while nobody reaches the store; what must not happen is a controller that *does* reach it
//! freeing a key whose drone was told to wait. So an expired key is freed at once only when the
//! store shows that no such promise can cover it:
//!
//! - every running controller has recorded a tick *after* the key expired (its tick carries every
//!   deferral it made before it, and a deferral that covers the key was made before the key
//!   expired: the drone accepts one only before its own soft deadline, which comes before the
//!   expiry), and
//! - no controller deferred since the key was last renewed.
//!
//! Otherwise the key waits out the grace: a drone's deadlines, however deferred, end before
//! `expires_at + grace`. Every bound is widened by [`CLOCK_SKEW`], since these times come from
//! different controllers' clocks.

use chrono::{DateTime, Utc};
use std::time::Duration;

/// How far apart controllers' wall clocks may be. Times written by one controller are compared
/// with another's here, so each bound above is moved by this much to the safe side.
pub const CLOCK_SKEW: Duration = Duration::from_secs(1);

/// One controller's record of reaching the store (a row of `controller_ticks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerTick {
    pub controller_id: String,
    /// When, on the controller's clock, it last reached the store; read before the deferral below.
    pub seen_at: DateTime<Utc>,
    /// The last time it told a drone that a renewal was deferred, if ever.
    pub last_deferral_at: Option<DateTime<Utc>>,
    /// The grace it promised with those deferrals (sent to drones in `Welcome`).
    pub outage_grace: Duration,
    /// Set by its last tick on a clean shutdown: it defers nothing more.
    pub stopped_at: Option<DateTime<Utc>>,
}

/// Which expired leases a sweep may free now, from every controller's tick: as bounds on a key's
/// `lease_expires_at` in milliseconds, so the store can select them with one condition
/// (`expires < now AND (expires < slow_before OR (expires > fast_after AND expires < fast_before))`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiryRule {
    pub now: i64,
    /// Any expiry before this is past every grace.
    pub slow_before: i64,
    /// The fast path needs an expiry after this: no deferral since the key's last renewal.
    pub fast_after: i64,
    /// The fast path needs an expiry before this: every running controller ticked after it.
    pub fast_before: i64,
}

impl ExpiryRule {
    /// The rule at `now` for leases of `lease`, given every controller's tick. Without any tick
    /// (a store no controller ticks, as in the store's own tests) an expired lease is freed at once.
    pub fn new(ticks: &[ControllerTick], now: DateTime<Utc>, lease: Duration) -> ExpiryRule {
        let skew = millis(CLOCK_SKEW);
        let grace = ticks.iter().map(|t| millis(t.outage_grace)).max().unwrap_or(0);
        let fast_after = ticks
            .iter()
            .filter_map(|t| t.last_deferral_at)
            .max()
            .map(|at| at.timestamp_millis().saturating_add(millis(lease)).saturating_add(skew))
            .unwrap_or(i64::MIN);
        let fast_before = ticks
            .iter()
            .filter(|t| t.stopped_at.is_none())
            .map(|t| t.seen_at.timestamp_millis().saturating_sub(skew))
            .min()
            .unwrap_or(i64::MAX);
        let now = now.timestamp_millis();
        ExpiryRule { now, slow_before: now.saturating_sub(grace).saturating_sub(skew), fast_after, fast_before }
    }

    /// Whether a lease that expires at `expires_at` (milliseconds) may be freed now.
    pub fn frees(&self, expires_at: i64) -> bool {
        expires_at < self.now
            && (expires_at < self.slow_before || (expires_at > self.fast_after && expires_at < self.fast_before))
    }
}

/// Ticks older than this at `now` can be forgotten: a controller defers only within its grace of
/// its last tick, so what it deferred covers keys renewed before then, and every such key is past
/// its grace (the slow path) by twice the grace and a lease after the tick.
pub fn forget_before(now: DateTime<Utc>, grace: Duration, lease: Duration) -> DateTime<Utc> {
    let keep = grace * 2 + lease + CLOCK_SKEW * 2;
    now - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(30);
    const GRACE: Duration = Duration::from_secs(120);

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn ms(seconds: i64) -> i64 {
        at(seconds).timestamp_millis()
    }

    fn tick(id: &str, seen: i64, deferral: Option<i64>) -> ControllerTick {
        ControllerTick {
            controller_id: id.into(),
            seen_at: at(seen),
            last_deferral_at: deferral.map(at),
            outage_grace: GRACE,
            stopped_at: None,
        }
    }

    #[test]
    fn without_ticks_an_expired_lease_is_freed_at_once_as_before() {
        let rule = ExpiryRule::new(&[], at(100), LEASE);
        assert!(rule.frees(ms(99)));
        assert!(!rule.frees(ms(100)), "not expired yet");
    }

    #[test]
    fn a_lease_is_freed_at_once_only_after_every_running_controller_ticked_past_its_expiry() {
        let ticks = [tick("a", 100, None), tick("b", 95, None)];
        let rule = ExpiryRule::new(&ticks, at(100), LEASE);
        assert!(rule.frees(ms(90)), "both ticked well after it expired");
        assert!(!rule.frees(ms(94)), "b's last tick, less the skew, is not after it");
        // b stopped cleanly: it defers nothing more, so its old tick holds nothing back.
        let stopped = [tick("a", 100, None), ControllerTick { stopped_at: Some(at(95)), ..tick("b", 95, None) }];
        assert!(ExpiryRule::new(&stopped, at(100), LEASE).frees(ms(94)));
    }

    #[test]
    fn a_deferral_since_the_last_renewal_holds_the_lease_for_the_grace() {
        // A store outage from 40 to 100: a deferred at 50; the key was last renewed at 45, so it
        // expired at 75.
        let ticks = [tick("a", 101, Some(50)), tick("b", 101, None)];
        let rule = ExpiryRule::new(&ticks, at(102), LEASE);
        assert!(!rule.frees(ms(75)), "its drone may still serve it in the grace");
        assert!(rule.frees(ms(81) + 1), "renewed after the deferral (and the skew): not covered by it");
        let later = ExpiryRule::new(&ticks, at(75 + 120 + 2), LEASE);
        assert!(later.frees(ms(75)), "past the grace and the skew");
        assert!(!ExpiryRule::new(&ticks, at(75 + 120), LEASE).frees(ms(75)), "not before the skew has passed too");
    }

    #[test]
    fn a_controller_that_stopped_ticking_holds_back_every_lease_expiring_after_its_last_tick() {
        // b died (or lost the store) at 60: it may have deferred any renewal since.
        let ticks = [tick("a", 200, None), tick("b", 60, None)];
        let rule = ExpiryRule::new(&ticks, at(150), LEASE);
        assert!(rule.frees(ms(58)), "expired before b's last tick: b's tick covers it");
        assert!(!rule.frees(ms(70)));
        assert!(rule.frees(ms(150 - 122)), "past the grace and the skew");
        assert!(forget_before(at(150), GRACE, LEASE) < at(60), "b's tick is kept while it may matter");
        assert!(forget_before(at(60 + 272 + 1), GRACE, LEASE) > at(60));
    }

    #[test]
    fn the_longest_grace_of_any_controller_applies() {
        let long = ControllerTick { outage_grace: Duration::from_secs(300), ..tick("b", 10, Some(10)) };
        let rule = ExpiryRule::new(&[tick("a", 400, None), long], at(400), LEASE);
        assert!(!rule.frees(ms(200)), "b promised 300 s");
        assert!(rule.frees(ms(98)));
    }
}
