//! The controller's admin listener (`--admin-listen`, docs/operations.md): the routes every Hangar
//! process serves (`/metrics`, `/healthz`, `/readyz`, from [`hangar_agent::admin`]) and the
//! controller's own, the live dashboard ([`crate::dashboard`]). Readiness is the store answering
//! a read.

use crate::auth::Authenticator;
use crate::controller::NodeRegistry;
use crate::dashboard::{self, Dashboard};
use crate::store::DynStore;
use crate::watch::WatchHub;
use axum::Router;
use hangar_agent::admin::{self, Check, Readiness};
use std::sync::Arc;
use std::time::Duration;

/// How long `/readyz` waits for the store before calling it unreachable.
const STORE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What the controller's admin routes read.
#[derive(Clone)]
pub struct AdminContext {
    pub store: DynStore,
    pub hub: WatchHub,
    pub controller_id: String,
    /// Live heartbeat times of the nodes attached here, for the dashboard.
    pub registry: Arc<NodeRegistry>,
    /// The gRPC API's authenticator: the dashboard's API admits the same callers, by the same
    /// table.
    pub authenticator: Arc<Authenticator>,
    /// Readiness conditions of what runs next to the controller in this process (dev).
    pub more_readiness: Option<Readiness>,
}

/// Every route of the controller's admin listener.
pub fn controller_router(context: AdminContext) -> Router {
    let store = context.store.clone();
    let readiness = Readiness::new(move || {
        let store = store.clone();
        async move { vec![store_check(&store).await] }
    });
    let readiness = match context.more_readiness.clone() {
        Some(more) => readiness.and(more),
        None => readiness,
    };
    let scrape = crate::metrics::scrape(context.store.clone(), context.hub.clone());
    let dashboard = Dashboard {
        store: context.store,
        hub: context.hub,
        registry: context.registry,
        authenticator: context.authenticator,
        controller_id: context.controller_id,
    };
    admin::router_with_scrape(readiness, scrape).merge(dashboard::router(dashboard))
}

async fn store_check(store: &DynStore) -> Check {
    match tokio::time::timeout(STORE_CHECK_TIMEOUT, store.current_revision()).await {
        Ok(Ok(revision)) => Check::ok("store", format!("reachable at revision {revision}")),
        Ok(Err(err)) => Check::failed("store", format!("{err}")),
        Err(_) => Check::failed("store", format!("no answer within {STORE_CHECK_TIMEOUT:?}")),
    }
}
