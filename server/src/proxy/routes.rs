//! Token → backend routes, looked up through the controller and cached briefly.
//!
//! A cached route carries what forwarding needs ready-made (the backend's authority and `Host`,
//! the identity headers), so a request through a cached route allocates nothing for them. The
//! cache is shared by every connection (an `RwLock`ed map, written only on a miss or an
//! invalidation); each client connection also remembers its last route (`ConnRoute`), so the
//! usual keep-alive connection that sends every request to one token finds its route without
//! touching the shared map. A route that is dropped (invalidated, or failed) is flagged, so the
//! connections holding it see that at once.

use chrono::{DateTime, Utc};
use hangar::domain::{BackendState, timestamp_from_proto};
use hangar::v1::{LookupRouteRequest, proxy_service_client::ProxyServiceClient};
use hangar_client::HangarChannel;
use http::header::{HeaderName, HeaderValue};
use http::uri::Authority;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Header naming the backend a request was routed to; set by the proxy, never taken from the
/// client.
pub const BACKEND_ID_HEADER: &str = "x-hangar-backend-id";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub backend_id: String,
    pub state: BackendState,
    /// host:port of the backend, as its drone sees it.
    pub address: String,
    pub user: String,
    pub auth: BTreeMap<String, String>,
    /// After this the token no longer opens the route (absent for static tokens).
    pub expires_at: Option<DateTime<Utc>>,
}

/// A looked-up route with what forwarding to it needs, made once.
#[derive(Debug)]
pub struct CachedRoute {
    pub route: Route,
    /// The backend's address as a URI authority; `None` when the controller sent one that is not.
    pub authority: Option<Authority>,
    /// `Host` for requests to the backend.
    pub host: Option<HeaderValue>,
    /// `x-hangar-backend-id`, `x-verified-user` (when set) and `x-verified-<name>` per auth entry.
    pub identity: Vec<(HeaderName, HeaderValue)>,
    fresh_until: Instant,
    dropped: AtomicBool,
    /// The traffic epoch this route's backend was last recorded in (see `Traffic`).
    pub(super) reported: AtomicU64,
}

impl CachedRoute {
    pub fn new(route: Route, ttl: Duration) -> CachedRoute {
        let authority = route.address.parse::<Authority>().ok();
        let host = authority.as_ref().and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        let mut identity = Vec::with_capacity(2 + route.auth.len());
        if let Ok(value) = HeaderValue::from_str(&route.backend_id) {
            identity.push((HeaderName::from_static(BACKEND_ID_HEADER), value));
        }
        if !route.user.is_empty()
            && let Ok(value) = HeaderValue::from_str(&route.user)
        {
            identity.push((HeaderName::from_static("x-verified-user"), value));
        }
        for (key, value) in &route.auth {
            let name = format!("x-verified-{}", key.to_ascii_lowercase());
            if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
                identity.push((name, value));
            }
        }
        // Never trusted past the token's expiry.
        let now = Instant::now();
        let mut fresh_until = now + ttl;
        if let Some(expires_at) = route.expires_at {
            let left = (expires_at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            fresh_until = fresh_until.min(now + left);
        }
        CachedRoute {
            route,
            authority,
            host,
            identity,
            fresh_until,
            dropped: AtomicBool::new(false),
            reported: AtomicU64::new(u64::MAX),
        }
    }

    /// Still usable: not dropped, within the ttl and the token's expiry.
    pub fn is_fresh(&self) -> bool {
        !self.dropped.load(Ordering::Acquire) && Instant::now() < self.fresh_until
    }

    fn drop_route(&self) {
        self.dropped.store(true, Ordering::Release);
    }
}

/// What a lookup found.
#[derive(Debug, Clone)]
pub enum Lookup {
    Found(Arc<CachedRoute>),
    /// No such token, or it expired.
    NotFound,
    /// No controller answered.
    Unavailable(String),
}

/// One client connection's last route, checked before the shared cache.
#[derive(Default)]
pub struct ConnRoute(arc_swap::ArcSwapOption<(Box<str>, Arc<CachedRoute>)>);

impl ConnRoute {
    fn get(&self, token: &str) -> Option<Arc<CachedRoute>> {
        let last = self.0.load();
        let (last_token, route) = last.as_deref()?;
        (**last_token == *token && route.is_fresh()).then(|| route.clone())
    }

    fn set(&self, token: &str, route: Arc<CachedRoute>) {
        self.0.store(Some(Arc::new((token.into(), route))));
    }
}

pub struct RouteCache {
    client: ProxyServiceClient<HangarChannel>,
    ttl: Duration,
    entries: RwLock<HashMap<Box<str>, Arc<CachedRoute>>>,
}

impl RouteCache {
    pub fn new(channel: HangarChannel, ttl: Duration) -> Self {
        RouteCache { client: ProxyServiceClient::new(channel), ttl, entries: RwLock::new(HashMap::new()) }
    }

    /// The route for `token`: from the connection's last route or the cache while fresh, else
    /// from the controller. Only routes to READY backends are cached; a starting backend is
    /// looked up again each time.
    pub async fn get(&self, token: &str, conn: &ConnRoute) -> Lookup {
        if let Some(route) = conn.get(token) {
            return Lookup::Found(route);
        }
        if let Some(route) = self.cached(token) {
            conn.set(token, route.clone());
            return Lookup::Found(route);
        }
        let lookup = self.fetch(token).await;
        if let Lookup::Found(route) = &lookup
            && route.route.state == BackendState::Ready
        {
            self.entries.write().unwrap().insert(token.into(), route.clone());
            conn.set(token, route.clone());
        }
        lookup
    }

    fn cached(&self, token: &str) -> Option<Arc<CachedRoute>> {
        {
            let entries = self.entries.read().unwrap();
            let route = entries.get(token)?;
            if route.is_fresh() {
                return Some(route.clone());
            }
        }
        let mut entries = self.entries.write().unwrap();
        if entries.get(token).is_some_and(|route| !route.is_fresh()) {
            entries.remove(token);
        }
        None
    }

    async fn fetch(&self, token: &str) -> Lookup {
        let mut client = self.client.clone();
        match client.lookup_route(LookupRouteRequest { token: token.to_string() }).await {
            Ok(response) => {
                let r = response.into_inner();
                let Some(state) = BackendState::from_proto(r.state) else {
                    return Lookup::Unavailable(format!("controller sent an unknown backend state {}", r.state));
                };
                let route = Route {
                    backend_id: r.backend_id,
                    state,
                    address: r.address,
                    user: r.user,
                    auth: r.auth.into_iter().collect(),
                    expires_at: r.expires_at.as_ref().and_then(timestamp_from_proto),
                };
                Lookup::Found(Arc::new(CachedRoute::new(route, self.ttl)))
            }
            Err(status) if status.code() == tonic::Code::NotFound => Lookup::NotFound,
            Err(status) => Lookup::Unavailable(format!("{}: {}", status.code(), status.message())),
        }
    }

    /// The controller said the backend went away (it reached TERMINATING or later): no request
    /// is sent to it from now on, not even by connections that hold its route.
    pub fn invalidate_backend(&self, backend_id: &str) {
        self.entries.write().unwrap().retain(|_, route| {
            let keep = route.route.backend_id != backend_id;
            if !keep {
                route.drop_route();
            }
            keep
        });
    }

    /// Forwarding through `route` failed: its address may be stale, look it up again next time.
    pub fn invalidate(&self, route: &Arc<CachedRoute>) {
        route.drop_route();
        self.entries.write().unwrap().retain(|_, cached| !Arc::ptr_eq(cached, route));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(expires_at: Option<DateTime<Utc>>) -> Route {
        Route {
            backend_id: "bk-1".into(),
            state: BackendState::Ready,
            address: "127.0.0.1:8080".into(),
            user: String::new(),
            auth: BTreeMap::new(),
            expires_at,
        }
    }

    #[test]
    fn a_cached_route_is_stale_after_its_ttl_its_tokens_expiry_or_being_dropped() {
        assert!(CachedRoute::new(route(None), Duration::from_secs(60)).is_fresh());
        assert!(!CachedRoute::new(route(None), Duration::ZERO).is_fresh());
        let expired = Some(Utc::now() - chrono::Duration::seconds(1));
        assert!(!CachedRoute::new(route(expired), Duration::from_secs(60)).is_fresh());
        let cached = CachedRoute::new(route(None), Duration::from_secs(60));
        assert_eq!(cached.host.as_ref().unwrap(), "127.0.0.1:8080");
        cached.drop_route();
        assert!(!cached.is_fresh());
    }

    #[test]
    fn a_connections_last_route_serves_only_its_token_and_only_while_fresh() {
        let conn = ConnRoute::default();
        let cached = Arc::new(CachedRoute::new(route(None), Duration::from_secs(60)));
        conn.set("tok", cached.clone());
        assert!(conn.get("tok").is_some());
        assert!(conn.get("other").is_none());
        cached.drop_route();
        assert!(conn.get("tok").is_none(), "a dropped route is not used by the connections holding it");
    }
}
