//! The executor socket and server: permissions, peer check, stale and live sockets, path
//! length, the handshake rule, capabilities, message sizes and graceful shutdown.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use hangar::error::{error_info, reason};
use hangar::executor::v1 as pb;
use hangar::executor::v1::executor_service_client::ExecutorServiceClient;
use hangar_executor::runtime::mock::MockRuntime;
use hangar_executor::runtime::{
    BackendInfo, BackendSpec, Capability, Condition, EventStream, ImageReady, PullPolicy, Runtime, RuntimeError,
    RuntimeKind, Started, StatsStream,
};
use hangar_executor::socket::client::ExecutorClient;
use hangar_executor::socket::server::{ServerOptions, SocketError, bind_socket};
use hangar_executor::testing::{TestExecutor, serve_on};
use prost::Message;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

fn mock() -> Arc<dyn Runtime> {
    Arc::new(MockRuntime::new())
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

async fn raw_client(socket: &std::path::Path) -> ExecutorServiceClient<Channel> {
    raw_client_on(Endpoint::try_from("http://[::]:50051").unwrap(), socket).await
}

async fn raw_client_on(endpoint: Endpoint, socket: &std::path::Path) -> ExecutorServiceClient<Channel> {
    ExecutorServiceClient::new(channel_on(endpoint, socket).await)
}

/// A plain gRPC channel to the socket, as grpcurl's `-unix` opens one.
async fn channel_on(endpoint: Endpoint, socket: &std::path::Path) -> Channel {
    let socket = socket.to_path_buf();
    endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(socket).await?))
            }
        }))
        .await
        .expect("connect")
}

fn handshake_request() -> pb::HandshakeRequest {
    pb::HandshakeRequest {
        protocol_major: hangar::executor::PROTOCOL_MAJOR,
        protocol_minor: 0,
        client_name: "socket-test".into(),
        client_version: "0".into(),
    }
}

#[tokio::test]
async fn socket_file_is_0600_inside_a_0700_directory() {
    let exec = TestExecutor::start(mock()).await.unwrap();
    assert_eq!(mode(&exec.socket), 0o600);
    assert_eq!(mode(exec.socket.parent().unwrap()), 0o700);
}

#[tokio::test]
async fn existing_directory_open_to_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = bind_socket(&dir.path().join("executor.sock")).unwrap_err();
    assert!(matches!(err, SocketError::InsecureDirectory { mode: 0o755, .. }), "{err}");
    assert!(err.to_string().contains("0700"), "{err}");
}

#[tokio::test]
async fn peer_with_a_uid_outside_the_allow_list_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/executor.sock");
    let own = nix::unistd::getuid().as_raw();
    let options = ServerOptions { allowed_uids: vec![own + 4242], ..Default::default() };
    let (_shutdown, _server) = serve_on(&socket, mock(), options);
    match ExecutorClient::connect(&socket, "intruder").await {
        Err(RuntimeError::PermissionDenied(message)) => {
            assert!(message.contains(&format!("peer uid {own}")), "the refusal names the uid: {message}");
        }
        Err(other) => panic!("expected PERMISSION_DENIED, got {other}"),
        Ok(_) => panic!("a peer outside the allow-list was served"),
    }
    // Not only the handshake: every call is refused.
    let status = raw_client(&socket).await.list_backends(pb::ListBackendsRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(error_info(&status).unwrap().0, reason::PEER_NOT_ALLOWED);
}

/// What `grpcurl -unix -plaintext PATH list` shows: exactly the executor protocol and reflection
/// itself, with no handshake needed; the descriptors describe the executor protocol.
#[tokio::test]
async fn reflection_lists_exactly_the_services_the_executor_serves() {
    use tonic_reflection::pb::{v1, v1alpha};
    let exec = TestExecutor::start(mock()).await.unwrap();
    let channel = channel_on(Endpoint::try_from("http://[::]:50051").unwrap(), &exec.socket).await;
    let served: BTreeSet<String> = [
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "hangar.executor.v1.ExecutorService",
    ]
    .map(String::from)
    .into();

    let requests = [
        v1::server_reflection_request::MessageRequest::ListServices(String::new()),
        v1::server_reflection_request::MessageRequest::FileContainingSymbol(
            "hangar.executor.v1.ExecutorService".into(),
        ),
    ]
    .map(|m| v1::ServerReflectionRequest { host: String::new(), message_request: Some(m) });
    let mut responses = v1::server_reflection_client::ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    assert_eq!(list.service.into_iter().map(|s| s.name).collect::<BTreeSet<_>>(), served, "reflection v1");
    let Some(v1::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected file descriptors");
    };
    let names: Vec<_> = files
        .file_descriptor_proto
        .iter()
        .map(|b| prost_types::FileDescriptorProto::decode(&b[..]).unwrap().name().to_string())
        .collect();
    assert!(names.iter().any(|n| n == "hangar/executor/v1/executor.proto"), "executor.proto not served: {names:?}");

    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut responses = v1alpha::server_reflection_client::ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    assert_eq!(list.service.into_iter().map(|s| s.name).collect::<BTreeSet<_>>(), served, "reflection v1alpha");
}

/// Reflection is guarded like every other call on the socket.
#[tokio::test]
async fn reflection_refuses_a_peer_outside_the_allow_list() {
    use tonic_reflection::pb::v1;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/executor.sock");
    let own = nix::unistd::getuid().as_raw();
    let options = ServerOptions { allowed_uids: vec![own + 4242], ..Default::default() };
    let (_shutdown, _server) = serve_on(&socket, mock(), options);
    let channel = channel_on(Endpoint::try_from("http://[::]:50051").unwrap(), &socket).await;
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let status = v1::server_reflection_client::ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(error_info(&status).unwrap().0, reason::PEER_NOT_ALLOWED);
}

#[tokio::test]
async fn stale_socket_is_replaced_and_a_live_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/executor.sock");
    let stale = bind_socket(&socket).unwrap();
    drop(stale); // the file stays, nobody listens: what a crashed executor leaves behind
    assert!(socket.exists());
    let (_shutdown, _server) = serve_on(&socket, mock(), ServerOptions::default());
    ExecutorClient::connect(&socket, "test").await.expect("the stale socket was replaced");

    let err = bind_socket(&socket).unwrap_err();
    assert!(matches!(err, SocketError::AlreadyServing(_)), "{err}");
    assert!(err.to_string().contains("already serving"), "{err}");
}

#[tokio::test]
async fn regular_file_at_the_socket_path_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let path = dir.path().join("executor.sock");
    std::fs::write(&path, "precious").unwrap();
    let err = bind_socket(&path).unwrap_err();
    assert!(matches!(err, SocketError::NotASocket(_)), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
}

#[tokio::test]
async fn socket_path_over_107_bytes_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("run");
    let prefix_len = base.as_os_str().len() + 1;
    let at_limit = base.join("x".repeat(107 - prefix_len));
    assert_eq!(at_limit.as_os_str().len(), 107);
    bind_socket(&at_limit).expect("107 bytes is the longest path that fits");

    let too_long = base.join("y".repeat(108 - prefix_len));
    let err = bind_socket(&too_long).unwrap_err();
    assert!(matches!(err, SocketError::PathTooLong { len: 108, .. }), "{err}");
    assert!(err.to_string().contains("at most 107"), "{err}");
}

#[tokio::test]
async fn calls_before_the_handshake_fail_with_handshake_required() {
    let exec = TestExecutor::start(mock()).await.unwrap();
    let mut raw = raw_client(&exec.socket).await;
    let status = raw.list_backends(pb::ListBackendsRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(error_info(&status).unwrap().0, reason::HANDSHAKE_REQUIRED);

    let mut wrong = handshake_request();
    wrong.protocol_major = 99;
    let status = raw.handshake(wrong).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(error_info(&status).unwrap().0, reason::PROTOCOL_VERSION_MISMATCH);
    assert!(raw.list_backends(pb::ListBackendsRequest {}).await.is_err(), "a refused handshake admits nothing");

    let response = raw.handshake(handshake_request()).await.unwrap().into_inner();
    assert_eq!(response.runtime_kind, "mock");
    raw.list_backends(pb::ListBackendsRequest {}).await.expect("admitted after the handshake");

    // The handshake belongs to the connection, not to the client process.
    let mut second = raw_client(&exec.socket).await;
    let status = second.list_backends(pb::ListBackendsRequest {}).await.unwrap_err();
    assert_eq!(error_info(&status).unwrap().0, reason::HANDSHAKE_REQUIRED);
}

#[tokio::test]
async fn oversized_message_is_refused() {
    let exec = TestExecutor::start(mock()).await.unwrap();
    let mut raw = raw_client(&exec.socket).await.max_encoding_message_size(64 << 20);
    raw.handshake(handshake_request()).await.unwrap();
    let spec = pb::BackendSpec {
        backend_id: "huge".into(),
        image: "mock/x".into(),
        env: [("BLOB".to_string(), "x".repeat(5 << 20))].into_iter().collect(),
        ..Default::default()
    };
    let status = raw.start_backend(pb::StartBackendRequest { spec: Some(spec) }).await.unwrap_err();
    // gRPC's code for a message over the limit (tonic's decoder says OUT_OF_RANGE; the server maps it).
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("limit"), "{status:?}");
    assert!(exec.client.list().await.unwrap().is_empty(), "nothing was started");
}

/// A mock that does not advertise stats.
struct WithoutStats(MockRuntime);

#[async_trait]
impl Runtime for WithoutStats {
    fn kind(&self) -> RuntimeKind {
        self.0.kind()
    }
    fn capabilities(&self) -> Vec<Capability> {
        self.0.capabilities().into_iter().filter(|c| *c != Capability::Stats).collect()
    }
    async fn status(&self) -> Vec<Condition> {
        self.0.status().await
    }
    async fn prepare_image(&self, image: &str, policy: PullPolicy) -> Result<ImageReady, RuntimeError> {
        self.0.prepare_image(image, policy).await
    }
    async fn start(&self, spec: BackendSpec) -> Result<Started, RuntimeError> {
        self.0.start(spec).await
    }
    async fn stop(&self, backend_id: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.0.stop(backend_id, grace).await
    }
    async fn remove(&self, backend_id: &str) -> Result<(), RuntimeError> {
        self.0.remove(backend_id).await
    }
    async fn inspect(&self, backend_id: &str) -> Result<BackendInfo, RuntimeError> {
        self.0.inspect(backend_id).await
    }
    async fn list(&self) -> Result<Vec<BackendInfo>, RuntimeError> {
        self.0.list().await
    }
    async fn events(&self) -> Result<EventStream, RuntimeError> {
        self.0.events().await
    }
    async fn stats(&self, backend_id: &str, interval: Duration) -> Result<StatsStream, RuntimeError> {
        self.0.stats(backend_id, interval).await
    }
}

#[tokio::test]
async fn rpc_outside_the_capabilities_answers_unimplemented() {
    let exec = TestExecutor::start(Arc::new(WithoutStats(MockRuntime::new()))).await.unwrap();
    assert!(!exec.client.capabilities().contains(&Capability::Stats));
    let spec = BackendSpec { backend_id: "b1".into(), image: "mock/x".into(), ..Default::default() };
    exec.client.start(spec).await.unwrap();
    match exec.client.stats("b1", Duration::from_secs(1)).await {
        Err(err @ RuntimeError::Unsupported(_)) => assert_eq!(err.code(), Code::Unimplemented),
        Err(other) => panic!("expected UNIMPLEMENTED, got {other}"),
        Ok(_) => panic!("stats were served although not advertised"),
    }
}

#[tokio::test]
async fn invalid_backend_id_is_rejected_with_a_field_violation() {
    let exec = TestExecutor::start(mock()).await.unwrap();
    let spec = BackendSpec { backend_id: "../etc".into(), image: "mock/x".into(), ..Default::default() };
    match exec.client.start(spec).await {
        Err(RuntimeError::InvalidSpec { field, .. }) => assert_eq!(field, "backend_id"),
        other => panic!("expected INVALID_ARGUMENT on backend_id, got {other:?}"),
    }
}

#[tokio::test]
async fn graceful_shutdown_ends_event_streams_and_removes_the_socket() {
    let exec = TestExecutor::start(mock()).await.unwrap();
    let socket = exec.socket.clone();
    let mut events = exec.client.events().await.unwrap();
    events.next().await.unwrap().unwrap();
    let exec_client_socket = socket.clone();
    tokio::time::timeout(Duration::from_secs(10), exec.stop()).await.expect("shutdown does not hang on open streams");
    let end = tokio::time::timeout(Duration::from_secs(5), events.next()).await.expect("the stream ends");
    assert!(end.is_none() || end.unwrap().is_err());
    assert!(!exec_client_socket.exists(), "the socket file is removed on shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_that_lags_gets_resource_exhausted_naming_its_last_event_not_a_gap() {
    let exec = TestExecutor::start(Arc::new(MockRuntime::with_event_buffer(16))).await.unwrap();
    // A tiny HTTP/2 window makes the executor feel the slow reader after a few events.
    let endpoint = Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .initial_stream_window_size(Some(1024))
        .initial_connection_window_size(Some(1024));
    let mut raw = raw_client_on(endpoint, &exec.socket).await;
    raw.handshake(handshake_request()).await.unwrap();
    let mut stream = raw.watch_events(pb::WatchEventsRequest {}).await.unwrap().into_inner();
    let sync = stream.next().await.unwrap().unwrap().event.unwrap();
    assert_eq!(sync.r#type, pb::EventType::Sync as i32);

    // 200 starts = 200 STARTED events while nobody reads.
    for i in 0..200 {
        let spec = BackendSpec { backend_id: format!("lag-{i}"), image: "mock/x".into(), ..Default::default() };
        exec.client.start(spec).await.unwrap();
    }
    let mut last = sync.sequence;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("the stream moves") {
            Some(Ok(response)) => {
                let event = response.event.unwrap();
                assert_eq!(event.sequence, last + 1, "no gap before the error");
                last = event.sequence;
            }
            Some(Err(status)) => break status,
            None => panic!("the stream ended without an error after event {last}"),
        }
    };
    assert!(last < 200, "the reader really fell behind (read up to {last})");
    assert_eq!(status.code(), Code::ResourceExhausted);
    let (reason, metadata) = error_info(&status).unwrap();
    assert_eq!(reason, reason::EVENTS_LAGGED);
    assert_eq!(metadata["last_sequence"], last.to_string(), "the error names the last event delivered");
}
