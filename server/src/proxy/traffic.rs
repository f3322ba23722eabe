//! Which backends carried traffic lately: the forwarder records every request and every open
//! upgraded connection here, and the attach stream reports the set to the controller in batches,
//! for its idle sweep.

use std::collections::HashSet;
use std::sync::Mutex;

/// Backends that carried traffic since the last report.
#[derive(Default)]
pub struct Traffic(Mutex<HashSet<String>>);

impl Traffic {
    pub fn record(&self, backend_id: &str) {
        let mut seen = self.0.lock().unwrap();
        if !seen.contains(backend_id) {
            seen.insert(backend_id.to_string());
        }
    }

    /// Everything recorded since the last call.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap()).into_iter().collect()
    }

    /// A report that could not be sent goes into the next one.
    pub fn restore(&self, ids: Vec<String>) {
        self.0.lock().unwrap().extend(ids);
    }
}
