//! Which backends carried traffic lately: the forwarder records every request and every open
//! upgraded connection here, and the attach stream reports the set to the controller in batches,
//! for its idle sweep.
//!
//! Each report starts a new epoch; a cached route remembers the epoch its backend was last
//! recorded in, so a request through it takes the lock only for the first request of an epoch.

use super::routes::CachedRoute;
use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Backends that carried traffic since the last report.
#[derive(Default)]
pub struct Traffic {
    seen: Mutex<HashSet<String>>,
    epoch: AtomicU64,
}

impl Traffic {
    pub fn record(&self, backend_id: &str) {
        let mut seen = self.seen.lock().unwrap();
        if !seen.contains(backend_id) {
            seen.insert(backend_id.to_string());
        }
    }

    /// [`Traffic::record`] for a request through `route`, once per epoch.
    pub fn record_route(&self, route: &CachedRoute) {
        let epoch = self.epoch.load(Ordering::Acquire);
        if route.reported.load(Ordering::Relaxed) == epoch {
            return;
        }
        self.record(&route.route.backend_id);
        route.reported.store(epoch, Ordering::Relaxed);
    }

    /// Everything recorded since the last call.
    pub fn take(&self) -> Vec<String> {
        let mut seen = self.seen.lock().unwrap();
        // Under the lock: a route that records after this sees the new epoch and records again.
        self.epoch.fetch_add(1, Ordering::AcqRel);
        std::mem::take(&mut *seen).into_iter().collect()
    }

    /// A report that could not be sent goes into the next one.
    pub fn restore(&self, ids: Vec<String>) {
        self.seen.lock().unwrap().extend(ids);
    }
}
