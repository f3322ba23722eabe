//! One trace follows a client's Connect through the controller, the drone and the executor:
//! an in-process OTLP collector (the real `TraceService` over gRPC) receives the spans of a
//! controller in this process, of a `hangar-drone run` process and of a `hangar-drone executor`
//! process, each exporting over OTLP, and they all carry the trace id the client sent in its
//! `traceparent`, each linked to its parent across the process boundaries
//! (docs/design/observability.md). And the proxy hands the backend its own hop's `traceparent`,
//! continuing the client's trace or starting one.

use hangar::v1::proxy_service_server::{ProxyService, ProxyServiceServer};
use hangar::v1::{self, backend_service_client::BackendServiceClient, node_service_client::NodeServiceClient};
use hangar_agent::telemetry::{self, LogFormat};
use hangar_testkit::eventually;
use hangar_tests::{TestCluster, binary, channel};
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
/// The client's trace and its own (client) span, as its `traceparent` names them.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN_ID: &str = "00f067aa0ba902b7";
/// Another client trace, for a call that fails.
const FAILED_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";

/// A span as the collector received it, with the service that sent it.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    span: Span,
}

impl Received {
    fn name(&self) -> &str {
        &self.span.name
    }
    fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }
    fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }
    fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
    fn attribute(&self, key: &str) -> Option<String> {
        find(&self.span.attributes, key)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn find(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    match value {
        AnyValue { value: Some(any_value::Value::StringValue(s)) } => Some(s.clone()),
        AnyValue { value: Some(any_value::Value::IntValue(i)) } => Some(i.to_string()),
        AnyValue { value: Some(any_value::Value::BoolValue(b)) } => Some(b.to_string()),
        _ => None,
    }
}

/// The OTLP collector: keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|resource| find(&resource.attributes, "service.name"))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                spans.extend(scope.spans.into_iter().map(|span| Received { service: service.clone(), span }));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Collector {
    /// Starts the collector on a free loopback port; returns its URL.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
        });
        url
    }

    /// The spans of the client's trace received so far.
    fn trace(&self) -> Vec<Received> {
        self.spans.lock().unwrap().iter().filter(|r| r.trace_id() == TRACE_ID).cloned().collect()
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `hangar-drone ARGS…` exporting to `collector`, batches sent every 100 ms.
fn drone_process(args: &[&str], collector: &str) -> KillOnDrop {
    let child = Command::new(binary("hangar-drone"))
        .args(args)
        .args(["--otlp-endpoint", collector])
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env_remove("OTEL_SERVICE_NAME")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start hangar-drone");
    KillOnDrop(child)
}

/// The span named `name` that `service` sent, with `parent` as its parent; fails the test, listing
/// the trace, when there is none.
fn span<'a>(trace: &'a [Received], service: &str, name: &str, parent: &str) -> &'a Received {
    trace.iter().find(|r| r.service == service && r.name() == name && r.parent_id() == parent).unwrap_or_else(|| {
        let seen: Vec<String> = trace
            .iter()
            .map(|r| format!("{} {:?} id={} parent={}", r.service, r.name(), r.span_id(), r.parent_id()))
            .collect();
        panic!("no span {name:?} from {service} with parent {parent}; the trace has:\n{}", seen.join("\n"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_is_one_trace_through_controller_drone_and_executor_with_the_clients_trace_id() {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    // This process is the controller: its spans go to the collector like a controller's would.
    let exporter = telemetry::init(LogFormat::Text, Some(&endpoint), "hangar-controller").unwrap();
    assert!(exporter.exporting(), "the test's tracing setup must be the first in this process");
    let cluster = TestCluster::sqlite().await;

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("exec").join("executor.sock");
    let socket_arg = socket.to_str().unwrap();
    let _executor = drone_process(&["executor", "--runtime", "mock", "--socket", socket_arg], &endpoint);
    eventually(WAIT, "the executor serving on its socket", async || {
        hangar_executor::socket::client::ExecutorClient::connect(&socket, "test").await
    })
    .await;
    let data_dir = dir.path().join("drone-data");
    let _drone = drone_process(
        &[
            "run",
            "--controller",
            &cluster.url(),
            "--name",
            "traced-drone",
            "--executor-socket",
            socket_arg,
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--admin-listen",
            "off",
        ],
        &endpoint,
    );
    // The drone attaches and heartbeats; wait until it is READY at the controller.
    let mut nodes = NodeServiceClient::new(channel(&cluster.url()).await);
    eventually(WAIT, "the drone READY at the controller", async || {
        let listed = nodes.list_nodes(v1::ListNodesRequest::default()).await.map(|r| r.into_inner().nodes);
        listed
            .is_ok_and(|nodes| nodes.iter().any(|n| n.name == "traced-drone" && n.state == v1::NodeState::Ready as i32))
    })
    .await;

    // The client's Connect, in its own trace.
    let mut backends = BackendServiceClient::new(channel(&cluster.url()).await);
    let mut request = tonic::Request::new(v1::ConnectRequest {
        spawn_config: Some(v1::SpawnConfig {
            executable: Some(v1::Executable { image: "mock-image".into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    });
    request.metadata_mut().insert("traceparent", format!("00-{TRACE_ID}-{CLIENT_SPAN_ID}-01").parse().unwrap());
    let connected = backends.connect(request).await.expect("connect").into_inner();
    eventually(WAIT, "the backend READY", async || {
        let backend = backends
            .get_backend(v1::GetBackendRequest { id: connected.backend_id.clone() })
            .await
            .ok()
            .and_then(|r| r.into_inner().backend);
        backend.is_some_and(|b| b.status.is_some_and(|s| s.state == v1::BackendState::Ready as i32))
    })
    .await;

    // A call that fails: its span says how (NOT_FOUND is the caller's error, not the server's).
    let mut missing = tonic::Request::new(v1::GetBackendRequest { id: "bk-00000000000000000000000000000000".into() });
    missing.metadata_mut().insert("traceparent", format!("00-{FAILED_TRACE_ID}-{CLIENT_SPAN_ID}-01").parse().unwrap());
    assert_eq!(backends.get_backend(missing).await.unwrap_err().code(), tonic::Code::NotFound);

    // The controller's spans go out now; the processes send theirs every 100 ms.
    let exporter = Arc::new(exporter);
    let flushing = exporter.clone();
    tokio::task::spawn_blocking(move || flushing.flush()).await.unwrap();
    let trace = eventually(WAIT, "the executor's StartBackend span in the client's trace", async || {
        let trace = collector.trace();
        let done = trace.iter().any(|r| r.service == "hangar-executor" && r.name().ends_with("/StartBackend"))
            && trace.iter().any(|r| r.name() == "drone report READY")
            && trace.iter().any(|r| r.name() == "hangar.v1.BackendService/Connect");
        done.then_some(trace)
    })
    .await;

    // Controller: the Connect's server span, a child of the client's span, after the RPC
    // conventions; the store's operation inside it.
    let connect = span(&trace, "hangar-controller", "hangar.v1.BackendService/Connect", CLIENT_SPAN_ID);
    assert_eq!(connect.span.kind, SpanKind::Server as i32);
    assert_eq!(connect.attribute("rpc.system").as_deref(), Some("grpc"));
    assert_eq!(connect.attribute("rpc.service").as_deref(), Some("hangar.v1.BackendService"));
    assert_eq!(connect.attribute("rpc.method").as_deref(), Some("Connect"));
    assert_eq!(connect.attribute("rpc.grpc.status_code").as_deref(), Some("0"));
    let store = span(&trace, "hangar-controller", "store connect_backend", &connect.span_id());
    assert_eq!(store.attribute("db.operation.name").as_deref(), Some("connect_backend"));

    // Drone: the spawn action carried the Connect's context across the drone link.
    let spawn = span(&trace, "hangar-drone", "drone spawn", &connect.span_id());
    assert_eq!(spawn.attribute("hangar.backend_id").as_deref(), Some(connected.backend_id.as_str()));
    let start = span(&trace, "hangar-drone", "drone start backend", &spawn.span_id());
    let call = span(&trace, "hangar-drone", "hangar.executor.v1.ExecutorService/StartBackend", &start.span_id());
    assert_eq!(call.span.kind, SpanKind::Client as i32);
    assert_eq!(call.attribute("rpc.grpc.status_code").as_deref(), Some("0"));
    span(&trace, "hangar-drone", "drone report READY", &start.span_id());

    // Executor: its server span continues the drone's call from the request's metadata.
    let served = span(&trace, "hangar-executor", "hangar.executor.v1.ExecutorService/StartBackend", &call.span_id());
    assert_eq!(served.span.kind, SpanKind::Server as i32);
    assert_eq!(served.attribute("rpc.grpc.status_code").as_deref(), Some("0"));

    let failed = eventually(WAIT, "the failed GetBackend's span", async || {
        let spans = collector.spans.lock().unwrap().clone();
        spans.into_iter().find(|r| r.trace_id() == FAILED_TRACE_ID && r.name() == "hangar.v1.BackendService/GetBackend")
    })
    .await;
    assert_eq!(failed.parent_id(), CLIENT_SPAN_ID);
    assert_eq!(failed.attribute("rpc.grpc.status_code").as_deref(), Some("5"));
    assert_ne!(failed.span.status.map(|s| s.code), Some(2), "NOT_FOUND is no server error (OTel's gRPC rule)");

    cluster.shutdown().await;
    if let Ok(exporter) = Arc::try_unwrap(exporter) {
        exporter.shutdown().await;
    }
}

/// A control plane for the proxy that routes every token to one READY backend.
#[derive(Clone)]
struct OneRoute {
    address: String,
}

#[tonic::async_trait]
impl ProxyService for OneRoute {
    type AttachStream = tokio_stream::wrappers::ReceiverStream<Result<v1::ProxyAttachResponse, tonic::Status>>;

    async fn attach(
        &self,
        request: tonic::Request<tonic::Streaming<v1::ProxyAttachRequest>>,
    ) -> Result<tonic::Response<Self::AttachStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let welcome =
            v1::ProxyWelcome { node_id: "proxy-node".into(), controller_id: "fake".into(), heartbeat_interval: None };
        let message = v1::proxy_attach_response::Message::Welcome(welcome);
        tx.send(Ok(v1::ProxyAttachResponse { message: Some(message) })).await.unwrap();
        tokio::spawn(async move {
            while let Ok(Some(_)) = inbound.message().await {}
            drop(tx);
        });
        Ok(tonic::Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn lookup_route(
        &self,
        _: tonic::Request<v1::LookupRouteRequest>,
    ) -> Result<tonic::Response<v1::LookupRouteResponse>, tonic::Status> {
        Ok(tonic::Response::new(v1::LookupRouteResponse {
            backend_id: "bk-traced".into(),
            state: v1::BackendState::Ready as i32,
            address: self.address.clone(),
            ..Default::default()
        }))
    }
}

/// The `traceparent` the backend received, from the test backend's `/headers` page.
async fn traceparent_at_backend(url: &str, traceparent: Option<&str>) -> String {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let mut request = http::Request::get(url);
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let response = client.request(request.body(Full::default()).unwrap()).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let headers = String::from_utf8_lossy(&body).into_owned();
    let found = headers.lines().find_map(|line| line.strip_prefix("traceparent: ").map(str::to_string));
    found.unwrap_or_else(|| panic!("the backend got no traceparent; it got:\n{headers}"))
}

/// `00-TRACE-SPAN-FLAGS` → (TRACE, SPAN).
fn ids(traceparent: &str) -> (String, String) {
    let parts: Vec<&str> = traceparent.trim().split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent:?} is not a W3C traceparent");
    (parts[1].to_string(), parts[2].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_continues_the_clients_trace_to_the_backend_or_starts_one() {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let exporter = telemetry::init(LogFormat::Text, Some(&endpoint), "hangar-proxy").unwrap();
    assert!(exporter.exporting(), "the test's tracing setup must be the first in this process");

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _backend = KillOnDrop(
        Command::new(hangar_executor::testing::test_backend_binary())
            .env("PORT", port.to_string())
            .env("HANGAR_BACKEND_ID", "bk-traced")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let address = format!("127.0.0.1:{port}");
    hangar_executor::testing::wait_for_http(&address, "/", WAIT).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let control = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ProxyServiceServer::new(OneRoute { address }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let config = hangar_server::proxy::ProxyConfig::new(vec![control], "edge-traced");
    let proxy = hangar_server::proxy::Proxy::start(config, tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
        .await
        .unwrap();
    let url = format!("{}/tok/headers", proxy.url());

    // A client's trace goes on: the backend's parent is the proxy's span, a child of the client's.
    let continued = traceparent_at_backend(&url, Some(&format!("00-{TRACE_ID}-{CLIENT_SPAN_ID}-01"))).await;
    let (trace_id, proxy_span) = ids(&continued);
    assert_eq!(trace_id, TRACE_ID, "the backend must see the client's trace");
    assert_ne!(proxy_span, CLIENT_SPAN_ID, "the proxy's own hop, not the client's span");
    // Without one, the proxy starts a trace.
    let started = traceparent_at_backend(&url, None).await;
    let (new_trace, new_span) = ids(&started);
    assert_ne!(new_trace, TRACE_ID);

    let flushing = Arc::new(exporter);
    let flusher = flushing.clone();
    tokio::task::spawn_blocking(move || flusher.flush()).await.unwrap();
    let spans = eventually(WAIT, "both forwarded requests' spans", async || {
        let spans = collector.spans.lock().unwrap().clone();
        let both = [&proxy_span, &new_span].iter().all(|id| spans.iter().any(|r| &&r.span_id() == id));
        both.then_some(spans)
    })
    .await;
    let forwarded = spans.iter().find(|r| r.span_id() == proxy_span).unwrap();
    assert_eq!((forwarded.service.as_str(), forwarded.name()), ("hangar-proxy", "GET /{token}"));
    assert_eq!(forwarded.parent_id(), CLIENT_SPAN_ID);
    assert_eq!(forwarded.attribute("http.response.status_code").as_deref(), Some("200"));
    assert_eq!(forwarded.attribute("hangar.backend_id").as_deref(), Some("bk-traced"));
    let root = spans.iter().find(|r| r.span_id() == new_span).unwrap();
    assert_eq!((root.trace_id(), root.parent_id()), (new_trace, String::new()), "a new trace, at its root");

    proxy.shutdown().await;
    if let Ok(exporter) = Arc::try_unwrap(flushing) {
        exporter.shutdown().await;
    }
}
