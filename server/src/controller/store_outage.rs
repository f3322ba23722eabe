//! This controller's side of key leases across store outages
//! (docs/design/backends-and-leases.md#store-outages): it records a tick in the store once a
//! second, and while it cannot reach the store it may answer a drone's renewal *deferred* — only
//! within its outage grace of its last tick, and each deferral is carried by its next tick, so
//! that no controller that reaches the store frees a key whose drone was told to wait.

use crate::store::{ControllerTick, DynStore, forget_before};
use chrono::{DateTime, Utc};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often a controller records its tick.
pub const TICK_INTERVAL: Duration = Duration::from_secs(1);

/// A tick the store has not taken within this is given up (and tried again at the next one).
const TICK_TIMEOUT: Duration = Duration::from_secs(5);

/// A controller whose last tick the store took is older than this no longer reaches its store
/// (three missed ticks).
const OUT_OF_REACH: Duration = Duration::from_secs(3);

/// Whether, and since when, this controller reaches its store; and the deferrals it made.
#[derive(Debug)]
pub struct StoreContact {
    controller_id: String,
    grace: Duration,
    lease: Duration,
    state: Mutex<Contact>,
}

#[derive(Debug, Default)]
struct Contact {
    /// When the last tick the store took was taken (its `seen_at`, on the monotonic clock).
    last_tick: Option<Instant>,
    last_deferral_at: Option<DateTime<Utc>>,
    /// The store failed since the last tick it took: logged once per outage.
    failing: bool,
    /// The first tick of the run of ticks the store took without a miss since (none yet).
    reached_since: Option<Instant>,
}

impl StoreContact {
    /// `grace`: how long past their deadlines drones may keep a deferred key (zero: never defer).
    /// `lease`: the key lease, to know how long other controllers' ticks matter.
    pub fn new(controller_id: String, grace: Duration, lease: Duration) -> Arc<StoreContact> {
        Arc::new(StoreContact { controller_id, grace, lease, state: Mutex::new(Contact::default()) })
    }

    /// Whether this controller reaches its store now: the store took a tick within the last
    /// [`OUT_OF_REACH`] (or none was tried yet).
    pub fn reaches_store(&self) -> bool {
        self.state.lock().unwrap().last_tick.is_none_or(|at| at.elapsed() < OUT_OF_REACH)
    }

    /// How long this controller has reached its store without a missed tick: zero before its
    /// first tick and after a miss. Right after an outage every controller has just come back,
    /// and what none could write meanwhile (its nodes' heartbeats) is not yet a sign that it is
    /// gone (the stale-node sweep, [`NodeRegistry::sweep_stale`]).
    ///
    /// [`NodeRegistry::sweep_stale`]: super::NodeRegistry::sweep_stale
    pub fn in_reach_for(&self) -> Duration {
        self.state.lock().unwrap().reached_since.map(|since| since.elapsed()).unwrap_or_default()
    }

    /// The grace promised with a deferral (sent to drones in `Welcome`).
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// A renewal could not be stored: whether this controller may answer it deferred. It may
    /// while its last tick the store took is younger than the grace (so that what it defers is
    /// covered by that tick's row, which other controllers keep that long); the deferral is then
    /// recorded, for the next tick to carry.
    pub fn defer(&self) -> bool {
        let mut state = self.state.lock().unwrap();
        match state.last_tick {
            Some(at) if !self.grace.is_zero() && at.elapsed() < self.grace => {
                // Under the lock the tick reads its time with: a deferral is either carried by a
                // tick or made after that tick's `seen_at`.
                state.last_deferral_at = Some(Utc::now());
                true
            }
            _ => false,
        }
    }

    /// The tick to record now, and when it was read.
    fn tick(&self, stopped: bool) -> (ControllerTick, Instant) {
        let state = self.state.lock().unwrap();
        let (read_at, seen_at) = (Instant::now(), Utc::now());
        let tick = ControllerTick {
            controller_id: self.controller_id.clone(),
            seen_at,
            last_deferral_at: state.last_deferral_at,
            outage_grace: self.grace,
            stopped_at: stopped.then_some(seen_at),
        };
        (tick, read_at)
    }

    /// Records one tick; whether the store took it.
    pub async fn record(&self, store: &DynStore, stopped: bool) -> bool {
        let (tick, read_at) = self.tick(stopped);
        let forget = forget_before(tick.seen_at, self.grace, self.lease);
        let error = match tokio::time::timeout(TICK_TIMEOUT, store.record_controller_tick(&tick, forget)).await {
            Ok(Ok(())) => {
                self.taken(read_at);
                return true;
            }
            Ok(Err(err)) => err.to_string(),
            Err(_) => format!("no answer within {TICK_TIMEOUT:?}"),
        };
        self.missed(&error);
        false
    }

    /// The store took the tick read at `read_at`.
    fn taken(&self, read_at: Instant) {
        let mut state = self.state.lock().unwrap();
        state.last_tick = Some(state.last_tick.map_or(read_at, |t| t.max(read_at)));
        state.reached_since.get_or_insert(read_at);
        if std::mem::take(&mut state.failing) {
            tracing::info!(deferred_since = ?state.last_deferral_at, "the store is reachable again");
        }
    }

    /// The store did not take a tick.
    fn missed(&self, error: &str) {
        let mut state = self.state.lock().unwrap();
        state.reached_since = None;
        if !std::mem::replace(&mut state.failing, true) {
            tracing::warn!(%error, grace = ?self.grace, "the store is unreachable; key renewals are deferred within the grace");
        }
    }

    /// Ticks every [`TICK_INTERVAL`] until `shutdown`. The last tick, marking the controller
    /// stopped, is the owner's to record once its drone sessions have ended
    /// ([`record`](Self::record) with `stopped`).
    pub async fn run(self: Arc<Self>, store: DynStore, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(TICK_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            self.record(&store, false).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    async fn store() -> (DynStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&crate::store::sqlite_url(&dir.path().join("hangar.db"))).await.unwrap();
        (Arc::new(store), dir)
    }

    #[tokio::test]
    async fn a_controller_defers_only_after_a_tick_and_its_next_tick_carries_the_deferral() {
        let (store, _dir) = store().await;
        let contact = StoreContact::new("ctl-a".into(), Duration::from_secs(120), Duration::from_secs(30));
        assert!(!contact.defer(), "no tick yet: no row would carry the deferral");
        assert!(contact.record(&store, false).await);
        assert!(contact.defer());
        let deferred = contact.state.lock().unwrap().last_deferral_at.unwrap();
        assert!(contact.record(&store, false).await);
        let ticks = store.controller_ticks().await.unwrap();
        assert_eq!(ticks.len(), 1);
        assert_eq!(ticks[0].last_deferral_at.map(|t| t.timestamp_millis()), Some(deferred.timestamp_millis()));
        assert!(ticks[0].seen_at.timestamp_millis() >= deferred.timestamp_millis(), "read after the deferral");
        assert_eq!(ticks[0].stopped_at, None);
        assert!(contact.record(&store, true).await);
        assert!(store.controller_ticks().await.unwrap()[0].stopped_at.is_some());
    }

    #[tokio::test]
    async fn a_controller_stops_deferring_once_its_last_tick_is_older_than_the_grace() {
        let (store, _dir) = store().await;
        let grace = Duration::from_secs(120);
        let contact = StoreContact::new("ctl-a".into(), grace, Duration::from_secs(30));
        assert!(contact.record(&store, false).await);
        let ticked_ago = |ago: Duration| contact.state.lock().unwrap().last_tick = Instant::now().checked_sub(ago);
        ticked_ago(grace - Duration::from_secs(1));
        assert!(contact.defer());
        ticked_ago(grace + Duration::from_secs(1));
        assert!(!contact.defer(), "past the grace of its last tick: drones must keep their deadlines");
        let never = StoreContact::new("ctl-b".into(), Duration::ZERO, Duration::from_secs(30));
        assert!(never.record(&store, false).await);
        assert!(!never.defer(), "no grace: never defers");
    }

    #[test]
    fn time_in_reach_of_the_store_counts_from_the_first_tick_after_the_last_miss() {
        let contact = StoreContact::new("ctl-a".into(), Duration::from_secs(120), Duration::from_secs(30));
        let ago = |seconds: u64| Instant::now().checked_sub(Duration::from_secs(seconds)).unwrap();
        assert_eq!(contact.in_reach_for(), Duration::ZERO, "no tick yet");
        contact.taken(ago(10));
        contact.taken(ago(0));
        assert!(contact.in_reach_for() >= Duration::from_secs(10), "from the first tick, not the last");

        contact.missed("the database is down");
        assert_eq!(contact.in_reach_for(), Duration::ZERO);
        contact.taken(ago(2));
        let back = contact.in_reach_for();
        assert!(back >= Duration::from_secs(2) && back < Duration::from_secs(3), "counted from the return: {back:?}");
    }
}
