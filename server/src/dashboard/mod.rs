//! The live dashboard on the controller's admin listener (docs/operations.md, "Dashboard"): a
//! page at `/` and the JSON and server-sent-events API it reads.
//!
//! - `GET /api/nodes`, `GET /api/backends`: snapshots, each at one revision. Nodes come from the
//!   hub's node view with the live heartbeat times of the nodes attached here, as `ListNodes`
//!   serves them; backends from one snapshot transaction, as `WatchBackends` starts.
//! - `GET /api/backends/{id}`: one backend and its status history.
//! - `GET /api/events`: every node and backend change after a revision, as server-sent events
//!   whose `id:` is the change's revision. The stream is a hub subscription with the live phase
//!   of `WatchNodes` and `WatchBackends` ([`ChangeWatch`]), so a dashboard costs the controller
//!   what one watcher costs. A reconnect sends `Last-Event-ID` and misses nothing; a revision
//!   compaction has dropped answers 410, and the page loads a fresh snapshot.
//!
//! The assets are compiled in: no build step, nothing fetched at run time. The page sets every
//! value with `textContent` (keys and labels are user input) and its Content-Security-Policy
//! allows only its own script and style.
//!
//! Authorization is the gRPC API's: with an auth file, each route asks the [`Authenticator`]
//! about the methods it stands for (`ListNodes`, `WatchNodes`, …) with the request's
//! `Authorization: Bearer` header, so the roles that may read through gRPC are exactly the ones
//! that may read here (reader and above). The page itself is open: it holds no data.

use crate::api::ApiError;
use crate::auth::authenticator::method_name;
use crate::auth::{Authenticator, Principal, audit};
use crate::controller::NodeRegistry;
use crate::store::{BackendFilter, ChangeKind, DynStore, Revision, StoreError};
use crate::watch::{ChangeWatch, HubChange, WatchHub, Watched};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use hangar::domain::{Backend, BackendState, BackendStatus, Node, NodeFilter, NodeState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");
const FAVICON_SVG: &str = include_str!("assets/favicon.svg");

/// Nodes per read of the hub's node view while building a snapshot.
const NODE_PAGE: usize = 500;

/// A quiet event stream sends a bookmark this often, so that a reconnect resumes from a recent
/// revision rather than replaying from the one the page loaded at.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(10);

/// The page's own script, style and icon only; data is fetched from this origin.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The gRPC methods each API route stands for: a caller may use the route when the
/// authorization table lets it call every one of them.
const NODES: &[&str] = &["/hangar.v1.NodeService/ListNodes"];
const BACKENDS: &[&str] = &["/hangar.v1.BackendService/ListBackends"];
const BACKEND: &[&str] = &["/hangar.v1.BackendService/GetBackend", "/hangar.v1.BackendService/WatchBackend"];
const EVENTS: &[&str] = &["/hangar.v1.NodeService/WatchNodes", "/hangar.v1.BackendService/WatchBackends"];

/// What the dashboard reads: the controller's store, watch hub and registry (for live
/// heartbeat times), and its authenticator.
#[derive(Clone)]
pub struct Dashboard {
    pub store: DynStore,
    pub hub: WatchHub,
    pub registry: Arc<NodeRegistry>,
    pub authenticator: Arc<Authenticator>,
    pub controller_id: String,
}

/// The page, its assets and its API.
pub fn router(dashboard: Dashboard) -> Router {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/style.css", get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }))
        .route("/favicon.svg", get(|| async { asset("image/svg+xml", FAVICON_SVG) }))
        .route("/api/nodes", get(nodes))
        .route("/api/backends", get(backends))
        .route("/api/backends/{id}", get(backend))
        .route("/api/events", get(events))
        .fallback(|| async { HttpError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such page or API route") })
        .with_state(dashboard)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, content_type),
            // The assets change with the binary: revalidate rather than keep a stale page.
            (CACHE_CONTROL, "no-cache"),
            (HeaderName::from_static("content-security-policy"), CONTENT_SECURITY_POLICY),
            (HeaderName::from_static("x-content-type-options"), "nosniff"),
            (HeaderName::from_static("referrer-policy"), "no-referrer"),
        ],
        body,
    )
        .into_response()
}

impl Dashboard {
    /// The caller, when it may call every one of `methods`; the refusal (401 or 403, audited
    /// like a refused gRPC call) otherwise.
    fn admit(&self, headers: &HeaderMap, methods: &[&str]) -> Result<Arc<Principal>, HttpError> {
        let mut admitted = None;
        for method in methods {
            match self.authenticator.admit(method, headers.get(AUTHORIZATION), None) {
                Ok(principal) => admitted = Some(principal),
                Err(refusal) => {
                    let status = tonic::Status::from(refusal.error);
                    audit::refused(refusal.principal.as_ref(), &method_name(method), None, &status);
                    return Err(HttpError::from_status(&status));
                }
            }
        }
        Ok(admitted.expect("every route stands for at least one method"))
    }

    /// `node` with the live heartbeat time when it is attached here (the store's copy may be a
    /// refresh interval old).
    fn live(&self, node: &Node) -> NodeJson {
        let mut node = node.clone();
        if let Some(at) = self.registry.live_heartbeat_times(std::iter::once(&node)).pop() {
            node.last_heartbeat_at = at;
        }
        NodeJson(node)
    }
}

/// A node as the API shows it: every field of the stored node (none is secret), with the live
/// heartbeat time.
#[derive(Serialize)]
struct NodeJson(Node);

/// A backend as the API shows it: what an operator looks at, and not its spawn config beyond
/// the image (environment values and the static token are credentials).
#[derive(Serialize)]
struct BackendJson<'a> {
    id: &'a str,
    /// `namespace/name@tag`; `None` for a backend without a key.
    key: Option<String>,
    state: BackendState,
    status: &'a BackendStatus,
    drone_id: &'a str,
    cluster: &'a str,
    pool: &'a str,
    labels: &'a BTreeMap<String, String>,
    image: &'a str,
    address: &'a str,
    fencing_token: u64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    last_activity_at: DateTime<Utc>,
}

impl<'a> From<&'a Backend> for BackendJson<'a> {
    fn from(b: &'a Backend) -> Self {
        BackendJson {
            id: &b.id,
            key: b.key.as_ref().map(ToString::to_string),
            state: b.status.state,
            status: &b.status,
            drone_id: &b.drone_id,
            cluster: &b.cluster,
            pool: &b.pool,
            labels: &b.labels,
            image: &b.spawn_config.executable.image,
            address: &b.address,
            fencing_token: b.fencing_token,
            created_at: b.created_at,
            updated_at: b.updated_at,
            last_activity_at: b.last_activity_at,
        }
    }
}

/// Filters of the snapshot routes: `?cluster=…&pool=…&state=READY,DRAINING`.
#[derive(Debug, Default, Deserialize)]
struct SnapshotQuery {
    cluster: Option<String>,
    pool: Option<String>,
    /// Comma-separated states, any case.
    state: Option<String>,
    /// `/api/nodes` only: the revision to read at (a backend snapshot's, for one consistent
    /// picture); the current one when absent.
    at: Option<Revision>,
}

impl SnapshotQuery {
    fn name(value: &Option<String>) -> Option<String> {
        value.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_string)
    }

    fn states<S: std::str::FromStr<Err = hangar::domain::ParseEnumError>>(&self) -> Result<Vec<S>, HttpError> {
        let Some(states) = &self.state else { return Ok(Vec::new()) };
        states
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().map_err(|err: hangar::domain::ParseEnumError| HttpError::bad_request("state", err)))
            .collect()
    }
}

#[derive(Serialize)]
struct NodesResponse {
    /// Every node listed is as of this revision; events after it follow on `/api/events`.
    revision: Revision,
    /// The controller's clock, so the page can tell heartbeat ages however its own clock is off.
    now: DateTime<Utc>,
    controller_id: String,
    nodes: Vec<NodeJson>,
}

async fn nodes(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Query(query): Query<SnapshotQuery>,
) -> Result<Response, HttpError> {
    dashboard.admit(&headers, NODES)?;
    let filter = NodeFilter {
        states: query.states::<NodeState>()?,
        cluster: SnapshotQuery::name(&query.cluster),
        pool: SnapshotQuery::name(&query.pool),
        ..NodeFilter::default()
    };
    // Pages of the hub's node view (as ListNodes reads it), all at the first page's revision.
    let mut at = query.at;
    let mut after: Option<String> = None;
    let mut nodes = Vec::new();
    loop {
        let page =
            dashboard.hub.list_nodes(&filter, at, after.as_deref(), NODE_PAGE).await.map_err(|err| match err {
                StoreError::FutureRevision { requested, current } => HttpError::bad_request(
                    "at",
                    format!("revision {requested} is ahead of this cluster's current revision {current}"),
                ),
                other => HttpError::from(ApiError::from(other)),
            })?;
        at = Some(page.revision);
        for change in &page.nodes {
            if let Watched::Node { node, .. } = &change.object {
                after = Some(node.id.clone());
                nodes.push(dashboard.live(node));
            }
        }
        if !page.more || page.nodes.is_empty() {
            break;
        }
    }
    let response = NodesResponse {
        revision: at.unwrap_or_default(),
        now: Utc::now(),
        controller_id: dashboard.controller_id.clone(),
        nodes,
    };
    Ok(json(&response))
}

#[derive(Serialize)]
struct BackendsResponse<'a> {
    revision: Revision,
    now: DateTime<Utc>,
    backends: Vec<BackendJson<'a>>,
}

async fn backends(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Query(query): Query<SnapshotQuery>,
) -> Result<Response, HttpError> {
    dashboard.admit(&headers, BACKENDS)?;
    if query.at.is_some() {
        return Err(HttpError::bad_request("at", "backends are listed at the current revision only"));
    }
    let filter = BackendFilter {
        states: query.states::<BackendState>()?,
        cluster: SnapshotQuery::name(&query.cluster),
        pool: SnapshotQuery::name(&query.pool),
        ..BackendFilter::default()
    };
    // One transaction, exact at its revision, as WatchBackends' initial snapshot.
    let snapshot = dashboard.hub.store().backend_snapshot(&filter).await.map_err(ApiError::from)?;
    let response = BackendsResponse {
        revision: snapshot.revision,
        now: Utc::now(),
        backends: snapshot.backends.iter().map(BackendJson::from).collect(),
    };
    Ok(json(&response))
}

#[derive(Serialize)]
struct HistoryEntry<'a> {
    revision: Revision,
    #[serde(flatten)]
    status: &'a BackendStatus,
}

#[derive(Serialize)]
struct BackendResponse<'a> {
    now: DateTime<Utc>,
    backend: BackendJson<'a>,
    /// Every status the backend has had, oldest first, with the revision that recorded it.
    history: Vec<HistoryEntry<'a>>,
}

async fn backend(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    dashboard.admit(&headers, BACKEND)?;
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(HttpError::bad_request("id", "a backend id is like bk-0196…: letters, digits, '-' and '_'"));
    }
    let store = &dashboard.store;
    let backend = store.get_backend(&id).await.map_err(ApiError::from)?.ok_or(ApiError::BackendNotFound(id))?;
    let history = store.backend_history(&backend.id, 0).await.map_err(ApiError::from)?;
    let response = BackendResponse {
        now: Utc::now(),
        backend: BackendJson::from(&backend),
        history: history.iter().map(|(revision, status)| HistoryEntry { revision: *revision, status }).collect(),
    };
    Ok(json(&response))
}

#[derive(Debug, Default, Deserialize)]
struct EventsQuery {
    /// Every change after this revision (a snapshot's); `Last-Event-ID` wins when both are
    /// given, as it is what a reconnect sends.
    since: Option<String>,
}

/// What the stream says about a change.
#[derive(Serialize)]
struct ChangeJson<T: Serialize> {
    /// ADDED, MODIFIED or REMOVED (a node removed from the store, a backend removed by
    /// retention).
    r#type: &'static str,
    revision: Revision,
    #[serde(flatten)]
    object: T,
}

#[derive(Serialize)]
struct NodeChangeJson {
    node: NodeJson,
}

#[derive(Serialize)]
struct BackendChangeJson<'a> {
    backend: BackendJson<'a>,
    /// The state before this change; `None` for a new backend.
    previous_state: Option<BackendState>,
}

fn change_type(kind: ChangeKind) -> &'static str {
    match kind {
        ChangeKind::Added => "ADDED",
        ChangeKind::Modified => "MODIFIED",
        ChangeKind::Removed => "REMOVED",
    }
}

/// The resume point a request names: `Last-Event-ID` (a reconnect), else `?since=`.
fn since(headers: &HeaderMap, query: &EventsQuery) -> Result<Option<Revision>, HttpError> {
    let (field, value) = match headers.get("last-event-id") {
        Some(value) => ("Last-Event-ID", value.to_str().unwrap_or("").to_string()),
        None => match &query.since {
            Some(since) => ("since", since.clone()),
            None => return Ok(None),
        },
    };
    value.trim().parse::<Revision>().map(Some).map_err(|_| {
        HttpError::bad_request(field, format!("{value:?} is not a revision (a whole number, as the snapshots give)"))
    })
}

async fn events(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> Result<Response, HttpError> {
    dashboard.admit(&headers, EVENTS)?;
    let store = dashboard.hub.store();
    let current = store.current_revision().await.map_err(ApiError::from)?;
    let start = match since(&headers, &query)? {
        None => current,
        Some(since) if since > current => {
            return Err(HttpError::bad_request(
                "since",
                format!("revision {since} is ahead of this cluster's current revision {current}"),
            ));
        }
        Some(since) => since,
    };
    // Refused with a status rather than in the stream, so the page knows at once to load a
    // fresh snapshot. (Compaction between here and the subscription ends the stream instead.)
    let oldest = store.compacted_revision().await.map_err(ApiError::from)?;
    if start < oldest {
        return Err(ApiError::RevisionCompacted { requested: start, oldest }.into());
    }

    let live = dashboard.clone();
    let changes = ChangeWatch::stream(
        dashboard.hub.clone(),
        start,
        Some(BOOKMARK_INTERVAL),
        move |change: &HubChange| Some(change_event(&live, change)),
        |revision| Event::default().event("bookmark").id(revision.to_string()).data(revision.to_string()),
    );
    let hello = serde_json::json!({ "revision": start, "controller_id": dashboard.controller_id });
    let hello = Event::default().event("hello").id(start.to_string()).data(hello.to_string());
    let stream = futures::stream::once(async move { hello }).chain(until_error(changes));
    let sse = Sse::new(stream.map(Ok::<_, Infallible>)).keep_alive(KeepAlive::default());
    Ok((
        [
            (CACHE_CONTROL, "no-store"),
            // nginx and friends buffer responses by default; an event stream must not wait.
            (HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        sse,
    )
        .into_response())
}

fn change_event(dashboard: &Dashboard, change: &HubChange) -> Event {
    let kind = change_type(change.kind);
    let (name, data) = match &change.object {
        Watched::Node { node, .. } => {
            let object = NodeChangeJson { node: dashboard.live(node) };
            ("node", serde_json::to_string(&ChangeJson { r#type: kind, revision: change.revision, object }))
        }
        Watched::Backend { backend, previous, .. } => {
            let object = BackendChangeJson { backend: BackendJson::from(backend), previous_state: *previous };
            ("backend", serde_json::to_string(&ChangeJson { r#type: kind, revision: change.revision, object }))
        }
    };
    let data = data.expect("dashboard JSON serializes");
    Event::default().event(name).id(change.revision.to_string()).data(data)
}

/// The stream's events; an error (the watch fell too far behind, the controller is shutting
/// down, the start revision was compacted meanwhile) becomes a last `end` event naming its
/// reason, and the stream ends.
fn until_error(
    changes: impl Stream<Item = Result<Event, ApiError>> + Send + 'static,
) -> impl Stream<Item = Event> + Send + 'static {
    changes
        .scan(false, |ended, item| {
            if *ended {
                return std::future::ready(None);
            }
            std::future::ready(Some(match item {
                Ok(event) => event,
                Err(err) => {
                    *ended = true;
                    let status = tonic::Status::from(err);
                    let error = HttpError::from_status(&status);
                    Event::default().event("end").data(error.body().to_string())
                }
            }))
        })
        .boxed()
}

fn json<T: Serialize>(value: &T) -> Response {
    let body = serde_json::to_vec(value).expect("dashboard JSON serializes");
    ([(CONTENT_TYPE, "application/json"), (CACHE_CONTROL, "no-store")], body).into_response()
}

/// An API error: its HTTP status, and a JSON body with the gRPC API's stable reason (e.g.
/// `ROLE_NOT_ALLOWED`) and a message saying what to do.
#[derive(Debug)]
pub struct HttpError {
    status: StatusCode,
    reason: String,
    message: String,
    field: Option<&'static str>,
}

impl HttpError {
    fn new(status: StatusCode, reason: &str, message: impl Into<String>) -> Self {
        HttpError { status, reason: reason.to_string(), message: message.into(), field: None }
    }

    fn bad_request(field: &'static str, message: impl ToString) -> Self {
        HttpError {
            field: Some(field),
            ..HttpError::new(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message.to_string())
        }
    }

    /// The HTTP reading of a gRPC status the API would have answered.
    fn from_status(status: &tonic::Status) -> Self {
        use tonic::Code;
        let http = match status.code() {
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::InvalidArgument => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            // A resume point older than the history kept: gone for good, load a snapshot.
            Code::OutOfRange => StatusCode::GONE,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let reason = hangar::error::error_info(status).map_or_else(|| format!("{:?}", status.code()), |(r, _)| r);
        HttpError::new(http, &reason, status.message())
    }

    fn body(&self) -> serde_json::Value {
        let mut body = serde_json::json!({ "reason": self.reason, "message": self.message });
        if let Some(field) = self.field {
            body["field"] = field.into();
        }
        body
    }
}

impl From<ApiError> for HttpError {
    fn from(err: ApiError) -> Self {
        if let ApiError::Store(store) = &err {
            // The store's own words can name a database; the log keeps them, the page gets less.
            tracing::warn!(error = %store, "dashboard request failed in the store");
        }
        HttpError::from_status(&tonic::Status::from(err))
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut response = (self.status, json(&self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"hangar\""));
        }
        response
    }
}
