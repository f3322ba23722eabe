//! One async lock per backend id, so that a start, a stop and a remove of the same backend never
//! interleave (a stop that arrives during a start waits for the start to finish, then stops what
//! it started), while different backends proceed in parallel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

#[derive(Default)]
pub(crate) struct BackendLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl BackendLocks {
    pub(crate) async fn lock(&self, backend_id: &str) -> OwnedMutexGuard<()> {
        let lock = self.locks.lock().unwrap().entry(backend_id.to_string()).or_default().clone();
        lock.lock_owned().await
    }
}
