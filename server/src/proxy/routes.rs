//! Token → backend routes, looked up through the controller and cached briefly.

use chrono::{DateTime, Utc};
use hangar::domain::{BackendState, timestamp_from_proto};
use hangar::v1::{LookupRouteRequest, proxy_service_client::ProxyServiceClient};
use hangar_client::HangarChannel;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(Route),
    /// No such token, or it expired.
    NotFound,
    /// No controller answered.
    Unavailable(String),
}

pub struct RouteCache {
    client: ProxyServiceClient<HangarChannel>,
    ttl: Duration,
    entries: Mutex<HashMap<String, (Route, Instant)>>,
}

impl RouteCache {
    pub fn new(channel: HangarChannel, ttl: Duration) -> Self {
        RouteCache { client: ProxyServiceClient::new(channel), ttl, entries: Mutex::new(HashMap::new()) }
    }

    /// The route for `token`: from the cache while fresh, else from the controller. Only routes
    /// to READY backends are cached; a starting backend is looked up again each time.
    pub async fn get(&self, token: &str) -> Lookup {
        if let Some(route) = self.cached(token) {
            return Lookup::Found(route);
        }
        let lookup = self.fetch(token).await;
        if let Lookup::Found(route) = &lookup
            && route.state == BackendState::Ready
        {
            self.entries.lock().unwrap().insert(token.to_string(), (route.clone(), Instant::now()));
        }
        lookup
    }

    fn cached(&self, token: &str) -> Option<Route> {
        let mut entries = self.entries.lock().unwrap();
        let (route, at) = entries.get(token)?;
        let expired = route.expires_at.is_some_and(|t| t <= Utc::now());
        if at.elapsed() < self.ttl && !expired {
            return Some(route.clone());
        }
        entries.remove(token);
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
                Lookup::Found(Route {
                    backend_id: r.backend_id,
                    state,
                    address: r.address,
                    user: r.user,
                    auth: r.auth.into_iter().collect(),
                    expires_at: r.expires_at.as_ref().and_then(timestamp_from_proto),
                })
            }
            Err(status) if status.code() == tonic::Code::NotFound => Lookup::NotFound,
            Err(status) => Lookup::Unavailable(format!("{}: {}", status.code(), status.message())),
        }
    }

    /// The controller said the backend went away, or forwarding to it failed.
    pub fn invalidate_backend(&self, backend_id: &str) {
        self.entries.lock().unwrap().retain(|_, (route, _)| route.backend_id != backend_id);
    }

    pub fn invalidate_token(&self, token: &str) {
        self.entries.lock().unwrap().remove(token);
    }
}
