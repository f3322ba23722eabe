//! Token → backend routes, looked up through the controllers and cached briefly.
//!
//! Lookups go to one controller at a time, round-robin, and fail over at once: a lookup that a
//! controller does not answer (refused, reset, timed out, unavailable) is sent to the next one in
//! the same request, and the controller that failed is tried last by later lookups for a
//! cooldown that doubles while it keeps failing (the SDK's cooldown: `hangar_client::failover`).
//! One of two controllers dying therefore costs no request
//! an error, only the first one a failed try. While no controller answers at all, a route to a
//! READY backend that is cached but past its ttl is still served for up to [`STALE_GRACE`] (never
//! past the token's expiry): the backend does not depend on the control plane to keep serving.
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
use hangar_client::failover::{Health, try_order};
use http::header::{HeaderName, HeaderValue};
use http::uri::Authority;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Header naming the backend a request was routed to; set by the proxy, never taken from the
/// client.
pub const BACKEND_ID_HEADER: &str = "x-hangar-backend-id";

/// How long past its ttl a cached READY route is still served while no controller answers a
/// lookup for it (never past the token's expiry). The backend keeps serving while the control
/// plane is away — through a store outage for up to the controllers' outage grace, 120 s by
/// default (docs/design/backends-and-leases.md#store-outages), which this matches; a route the
/// controllers would have invalidated in that time is dropped by the first request whose
/// forwarding fails, as any stale route is.
pub const STALE_GRACE: Duration = Duration::from_secs(120);

/// How long one controller may take to answer a lookup before it is sent to the next one. The
/// last controller tried gets [`LAST_TRY_TIMEOUT`]: a slow answer beats none.
const TRY_TIMEOUT: Duration = Duration::from_secs(1);
const LAST_TRY_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a lookup asks a controller to hold its answer for a starting backend (the
/// controller's own bound); a request that may wait longer asks again.
const MAX_READY_WAIT: Duration = Duration::from_secs(30);

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
    /// Served until then when no controller answers a lookup (see [`STALE_GRACE`]).
    usable_until: Instant,
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
        let mut usable_until = fresh_until + STALE_GRACE;
        if let Some(expires_at) = route.expires_at {
            let expiry = now + (expires_at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            fresh_until = fresh_until.min(expiry);
            usable_until = usable_until.min(expiry);
        }
        CachedRoute {
            route,
            authority,
            host,
            identity,
            fresh_until,
            usable_until,
            dropped: AtomicBool::new(false),
            reported: AtomicU64::new(u64::MAX),
        }
    }

    /// Still usable: not dropped, within the ttl and the token's expiry.
    pub fn is_fresh(&self) -> bool {
        !self.dropped.load(Ordering::Acquire) && Instant::now() < self.fresh_until
    }

    /// Past its ttl but still servable while no controller answers: not dropped, within
    /// [`STALE_GRACE`] of the ttl and the token's expiry.
    fn is_usable_stale(&self) -> bool {
        !self.dropped.load(Ordering::Acquire) && Instant::now() < self.usable_until
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

/// One controller lookups go to, and how it has been answering (the cooldown the SDK's calls
/// use too: `hangar_client::failover`).
struct LookupTarget {
    url: String,
    client: ProxyServiceClient<HangarChannel>,
    health: Health,
}

impl LookupTarget {
    fn answered(&self) {
        if self.health.answered() {
            tracing::info!(controller = %self.url, "route lookups answered again");
        }
    }

    fn failed(&self, why: &str) {
        let cooldown = self.health.failed();
        tracing::warn!(controller = %self.url, ?cooldown, "route lookup failed, trying the next controller: {why}");
    }
}

/// What the shared cache holds for a token.
enum Cached {
    Fresh(Arc<CachedRoute>),
    /// Past its ttl, still usable if no controller answers.
    Stale(Arc<CachedRoute>),
    None,
}

pub struct RouteCache {
    controllers: Vec<LookupTarget>,
    /// Where the next lookup starts (round-robin over the controllers).
    next: AtomicUsize,
    ttl: Duration,
    entries: RwLock<HashMap<Box<str>, Arc<CachedRoute>>>,
}

impl RouteCache {
    /// Lookups over `controllers` (URL and channel of each, tried in turn; at least one).
    pub fn new(controllers: Vec<(String, HangarChannel)>, ttl: Duration) -> Self {
        assert!(!controllers.is_empty(), "route lookups need at least one controller");
        let controllers = controllers
            .into_iter()
            .map(|(url, channel)| LookupTarget {
                url,
                client: ProxyServiceClient::new(channel),
                health: Health::default(),
            })
            .collect();
        RouteCache { controllers, next: AtomicUsize::new(0), ttl, entries: RwLock::new(HashMap::new()) }
    }

    /// The route for `token`: from the connection's last route or the cache while fresh, else
    /// from a controller. Only routes to READY backends are cached; a starting backend is
    /// looked up again each time. When no controller answers, a cached route past its ttl is
    /// served for up to [`STALE_GRACE`] more.
    pub async fn get(&self, token: &str, conn: &ConnRoute) -> Lookup {
        if let Some(route) = conn.get(token) {
            return Lookup::Found(route);
        }
        let stale = match self.cached(token) {
            Cached::Fresh(route) => {
                conn.set(token, route.clone());
                return Lookup::Found(route);
            }
            Cached::Stale(route) => Some(route),
            Cached::None => None,
        };
        // With a stale route in hand, nobody waits on controllers known to be failing: the route
        // is served at once while they all cool down, and a lookup that does go out gives each
        // controller the short timeout only.
        if let Some(route) = &stale
            && self.all_cooling()
            && route.is_usable_stale()
        {
            return Lookup::Found(route.clone());
        }
        let lookup = self.fetch(token, stale.is_none(), Duration::ZERO).await;
        self.keep(token, conn, lookup, stale)
    }

    /// The route for `token` once its backend is READY (or has ended), asking a controller to
    /// answer as soon as it is rather than at once (`LookupRoute.wait_for_ready`), for up to
    /// `wait`: for a request that arrived while its backend was starting. A controller that
    /// predates the field answers at once, with the backend still starting.
    pub async fn wait_ready(&self, token: &str, conn: &ConnRoute, wait: Duration) -> Lookup {
        let lookup = self.fetch(token, true, wait.min(MAX_READY_WAIT)).await;
        self.keep(token, conn, lookup, None)
    }

    /// Caches what a controller answered (a READY route), or serves `stale` when none answered.
    fn keep(&self, token: &str, conn: &ConnRoute, lookup: Lookup, stale: Option<Arc<CachedRoute>>) -> Lookup {
        match &lookup {
            Lookup::Found(route) if route.route.state == BackendState::Ready => {
                self.entries.write().unwrap().insert(token.into(), route.clone());
                conn.set(token, route.clone());
            }
            Lookup::Unavailable(why) => {
                if let Some(route) = stale.filter(|route| route.is_usable_stale()) {
                    tracing::debug!(backend_id = %route.route.backend_id, "no controller answered ({why}); serving the cached route past its ttl");
                    return Lookup::Found(route);
                }
            }
            // Not READY any more, or gone: the stale route must not be served again.
            Lookup::Found(_) | Lookup::NotFound => self.forget(token),
        }
        lookup
    }

    fn cached(&self, token: &str) -> Cached {
        {
            let entries = self.entries.read().unwrap();
            let Some(route) = entries.get(token) else { return Cached::None };
            if route.is_fresh() {
                return Cached::Fresh(route.clone());
            }
            if route.is_usable_stale() {
                return Cached::Stale(route.clone());
            }
        }
        let mut entries = self.entries.write().unwrap();
        if entries.get(token).is_some_and(|route| !route.is_fresh() && !route.is_usable_stale()) {
            entries.remove(token);
        }
        Cached::None
    }

    fn forget(&self, token: &str) {
        let mut entries = self.entries.write().unwrap();
        if entries.get(token).is_some_and(|route| !route.is_fresh()) {
            entries.remove(token);
        }
    }

    /// Whether every controller failed lately (is in its cooldown).
    fn all_cooling(&self) -> bool {
        let now = Instant::now();
        self.controllers.iter().all(|target| target.health.is_cooling(now))
    }

    /// Asks the controllers in turn, starting with the next one round-robin and leaving those
    /// that failed lately for last, until one answers. `patient`: the last controller tried is
    /// given [`LAST_TRY_TIMEOUT`] (nothing else to serve). `wait`: how long a controller may hold
    /// the answer for a starting backend (each try's timeout grows by as much).
    async fn fetch(&self, token: &str, patient: bool, wait: Duration) -> Lookup {
        let n = self.controllers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let order = try_order(self.controllers.iter().map(|target| &target.health), start);
        let mut failures = Vec::new();
        for (tried, i) in order.into_iter().enumerate() {
            let target = &self.controllers[i];
            let timeout = wait + if patient && tried + 1 == n { LAST_TRY_TIMEOUT } else { TRY_TIMEOUT };
            let mut client = target.client.clone();
            let wait_for_ready = (!wait.is_zero()).then(|| prost_types::Duration::try_from(wait).unwrap_or_default());
            let request = client.lookup_route(LookupRouteRequest { token: token.to_string(), wait_for_ready });
            let status = match tokio::time::timeout(timeout, request).await {
                Ok(Ok(response)) => {
                    target.answered();
                    return self.found(response.into_inner());
                }
                Ok(Err(status)) => status,
                Err(_) => tonic::Status::deadline_exceeded(format!("no answer within {timeout:?}")),
            };
            if !fails_over(status.code()) {
                target.answered();
                return match status.code() {
                    tonic::Code::NotFound => Lookup::NotFound,
                    code => Lookup::Unavailable(format!("{code}: {}", status.message())),
                };
            }
            let why = format!("{}: {}", status.code(), status.message());
            target.failed(&why);
            failures.push(format!("{}: {why}", target.url));
        }
        Lookup::Unavailable(failures.join("; "))
    }

    fn found(&self, r: hangar::v1::LookupRouteResponse) -> Lookup {
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

/// Whether a lookup that failed with `code` goes to the next controller: the controller did not
/// answer (or cannot now), as opposed to an answer about the token (NOT_FOUND) or about the
/// caller (UNAUTHENTICATED, PERMISSION_DENIED), which every controller would give alike.
fn fails_over(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(code, Unavailable | Unknown | DeadlineExceeded | Cancelled | Aborted | Internal | ResourceExhausted)
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

/// Lookups against real gRPC servers on loopback: one that answers, one that is gone.
#[cfg(test)]
mod failover {
    use super::*;
    use hangar::v1::proxy_service_server::{ProxyService, ProxyServiceServer};
    use hangar::v1::{self, LookupRouteResponse};
    use hangar_client::Credentials;
    use hangar_testkit::eventually;
    use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
    use tonic::{Request, Response, Status, Streaming};

    /// A controller that knows one token (while `known` says so) and counts its lookups.
    #[derive(Clone, Default)]
    struct OneToken {
        known: Arc<AtomicBool>,
        lookups: Arc<AtomicU64>,
    }

    #[tonic::async_trait]
    impl ProxyService for OneToken {
        type AttachStream = ReceiverStream<Result<v1::ProxyAttachResponse, Status>>;

        async fn attach(
            &self,
            _: Request<Streaming<v1::ProxyAttachRequest>>,
        ) -> Result<Response<Self::AttachStream>, Status> {
            Err(Status::unimplemented("lookups only"))
        }

        async fn lookup_route(
            &self,
            req: Request<v1::LookupRouteRequest>,
        ) -> Result<Response<LookupRouteResponse>, Status> {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            if req.into_inner().token != "tok" || !self.known.load(Ordering::SeqCst) {
                return Err(Status::not_found("no such token"));
            }
            Ok(Response::new(LookupRouteResponse {
                backend_id: "bk-1".into(),
                state: BackendState::Ready.to_proto() as i32,
                address: "127.0.0.1:8080".into(),
                ..Default::default()
            }))
        }
    }

    /// A live controller: its URL, what it answers, and the sender that stops it.
    async fn controller() -> (String, OneToken, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let service = OneToken { known: Arc::new(AtomicBool::new(true)), ..OneToken::default() };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .add_service(ProxyServiceServer::new(service.clone()))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            });
        tokio::spawn(server);
        (url, service, stop)
    }

    /// A URL nothing listens on: its port was just free.
    async fn dead_controller() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    }

    fn cache(urls: &[&str], ttl: Duration) -> RouteCache {
        let channels = urls
            .iter()
            .map(|url| {
                let channel = tonic::transport::Endpoint::from_shared(url.to_string()).unwrap().connect_lazy();
                (url.to_string(), Credentials::default().authorize(channel).unwrap())
            })
            .collect();
        RouteCache::new(channels, ttl)
    }

    fn failures(cache: &RouteCache, i: usize) -> u32 {
        cache.controllers[i].health.failures()
    }

    #[tokio::test]
    async fn a_lookup_the_first_controller_cannot_answer_goes_to_the_next_at_once_and_the_dead_one_cools_down() {
        let (live, service, _stop) = controller().await;
        let dead = dead_controller().await;
        // ttl 0: every get is a lookup.
        let cache = cache(&[&dead, &live], Duration::ZERO);
        for i in 0..6 {
            let lookup = cache.get("tok", &ConnRoute::default()).await;
            assert!(matches!(lookup, Lookup::Found(_)), "lookup {i}: {lookup:?}");
        }
        assert_eq!(service.lookups.load(Ordering::SeqCst), 6, "every lookup answered by the live controller");
        assert_eq!(failures(&cache, 0), 1, "the dead controller was tried once, then left for last while it cools");
        assert_eq!(failures(&cache, 1), 0);
    }

    #[tokio::test]
    async fn a_cached_ready_route_is_served_past_its_ttl_only_while_no_controller_answers() {
        let (live, service, stop) = controller().await;
        let cache = cache(&[&live], Duration::ZERO);
        assert!(matches!(cache.get("tok", &ConnRoute::default()).await, Lookup::Found(_)));

        stop.send(()).unwrap();
        let served = eventually_unanswered(&cache, &service).await;
        let cached = cache.entries.read().unwrap().get("tok").cloned().expect("still cached");
        assert!(Arc::ptr_eq(&served, &cached), "the cached route is served past its ttl while no controller answers");
        assert!(!served.is_fresh());

        // A route dropped (its backend went away) is never served stale.
        cache.invalidate(&served);
        let lookup = cache.get("tok", &ConnRoute::default()).await;
        assert!(matches!(lookup, Lookup::Unavailable(_)), "{lookup:?}");
    }

    #[tokio::test]
    async fn a_controller_that_no_longer_knows_the_token_ends_its_stale_route() {
        let (live, service, _stop) = controller().await;
        let cache = cache(&[&live], Duration::ZERO);
        assert!(matches!(cache.get("tok", &ConnRoute::default()).await, Lookup::Found(_)));
        service.known.store(false, Ordering::SeqCst);
        assert!(matches!(cache.get("tok", &ConnRoute::default()).await, Lookup::NotFound));
        assert!(cache.entries.read().unwrap().is_empty(), "the stale route is forgotten");
    }

    #[tokio::test]
    async fn while_every_controller_cools_down_a_stale_route_is_served_without_asking_them() {
        let (live, _service, stop) = controller().await;
        let cache = cache(&[&live], Duration::ZERO);
        assert!(matches!(cache.get("tok", &ConnRoute::default()).await, Lookup::Found(_)));
        stop.send(()).unwrap();
        // Until the stopped controller has failed a lookup, lookups reach it.
        eventually(Duration::from_secs(10), "a lookup the stopped controller fails", async || {
            let lookup = cache.get("tok", &ConnRoute::default()).await;
            assert!(matches!(lookup, Lookup::Found(_)), "{lookup:?}");
            failures(&cache, 0) > 0
        })
        .await;
        for _ in 0..5 {
            assert!(matches!(cache.get("tok", &ConnRoute::default()).await, Lookup::Found(_)));
        }
        assert_eq!(failures(&cache, 0), 1, "served from the cache while the controller cools down, not asked again");
    }

    #[test]
    fn a_stale_route_is_never_served_past_its_grace_or_its_tokens_expiry() {
        let stale = CachedRoute::new(route(), Duration::ZERO);
        assert!(stale.is_usable_stale() && !stale.is_fresh());
        let mut expiring = route();
        expiring.expires_at = Some(Utc::now() - chrono::Duration::seconds(1));
        assert!(!CachedRoute::new(expiring, Duration::from_secs(60)).is_usable_stale());
        let mut past_grace = CachedRoute::new(route(), Duration::ZERO);
        past_grace.usable_until = Instant::now();
        assert!(!past_grace.is_usable_stale());
    }

    fn route() -> Route {
        Route {
            backend_id: "bk-1".into(),
            state: BackendState::Ready,
            address: "127.0.0.1:8080".into(),
            user: String::new(),
            auth: BTreeMap::new(),
            expires_at: None,
        }
    }

    /// Looks up until the stopped controller no longer answers (its graceful shutdown closes the
    /// connection), and returns what was served then.
    async fn eventually_unanswered(cache: &RouteCache, service: &OneToken) -> Arc<CachedRoute> {
        eventually(Duration::from_secs(10), "a lookup the stopped controller does not answer", async || {
            let answered = service.lookups.load(Ordering::SeqCst);
            let lookup = cache.get("tok", &ConnRoute::default()).await;
            let Lookup::Found(route) = lookup else { panic!("served while unanswered: {lookup:?}") };
            let now_answered = service.lookups.load(Ordering::SeqCst);
            (now_answered == answered).then_some(route)
        })
        .await
    }
}
