//! The executor's own checks of what a drone sends, seen from the far side of a real Unix socket:
//! a bad spec, image, grace or interval is refused with INVALID_ARGUMENT and a `BadRequest`
//! violation per bad field, and the runtime never sees it.

use std::sync::Arc;

use hangar::error::field_violations;
use hangar::executor::v1 as pb;
use hangar::executor::v1::executor_service_client::ExecutorServiceClient;
use hangar_executor::runtime::Runtime;
use hangar_executor::runtime::mock::MockRuntime;
use hangar_executor::testing::TestExecutor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// A plain gRPC client on the socket, handshake done: what any process with access to the
/// socket can send, without the executor client's own checks in between.
async fn raw_client(socket: &std::path::Path) -> ExecutorServiceClient<Channel> {
    let socket = socket.to_path_buf();
    let channel = Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(socket).await?))
            }
        }))
        .await
        .expect("connect to the socket");
    let mut client = ExecutorServiceClient::new(channel);
    client
        .handshake(pb::HandshakeRequest {
            protocol_major: hangar::executor::PROTOCOL_MAJOR,
            protocol_minor: 0,
            client_name: "socket-validation-test".into(),
            client_version: "0".into(),
        })
        .await
        .expect("handshake");
    client
}

/// The fields `result`'s violations name, failing unless it is INVALID_ARGUMENT.
fn violations<T: std::fmt::Debug>(result: Result<T, Status>) -> Vec<String> {
    let status = result.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    field_violations(&status).into_iter().map(|(field, _)| field).collect()
}

#[tokio::test]
async fn a_bad_spec_over_the_socket_is_refused_field_by_field_and_nothing_starts() {
    let runtime = Arc::new(MockRuntime::new());
    let exec = TestExecutor::start(runtime).await.unwrap();
    let mut raw = raw_client(&exec.socket).await;

    let bad = pb::BackendSpec {
        backend_id: "../etc".into(),
        image: "./relative".into(),
        command: vec![String::new()],
        args: vec!["a\0b".into()],
        env: [("A=B".to_string(), "v".to_string())].into(),
        labels: [(String::new(), "v".to_string())].into(),
        ..Default::default()
    };
    let fields = violations(raw.start_backend(pb::StartBackendRequest { spec: Some(bad) }).await);
    // Every problem at once, each under its own field.
    for field in
        ["backend_id", "spec.image", "spec.command[0]", "spec.args[0]", "spec.env[\"A=B\"]", "spec.labels[\"\"]"]
    {
        assert!(fields.iter().any(|f| f == field), "{field} missing from {fields:?}");
    }
    assert!(exec.client.list().await.unwrap().is_empty(), "the runtime started a refused spec");

    // A good spec on the same connection is served: the refusal closed nothing.
    let good = pb::BackendSpec { backend_id: "bk-1".into(), image: "mock/x".into(), ..Default::default() };
    raw.start_backend(pb::StartBackendRequest { spec: Some(good) }).await.expect("a good spec starts");
    assert_eq!(exec.client.list().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_bad_image_grace_or_interval_over_the_socket_is_refused_with_its_field() {
    let exec = TestExecutor::start(Arc::new(MockRuntime::new())).await.unwrap();
    let mut raw = raw_client(&exec.socket).await;
    let d = |seconds| Some(prost_types::Duration { seconds, nanos: 0 });

    let prepare = pb::PrepareImageRequest { image: "Bad/Image".into(), pull_policy: 0 };
    assert_eq!(violations(raw.prepare_image(prepare).await), ["image"]);
    for grace in [d(-1), d(3601), d(i64::MAX)] {
        let stop = pb::StopBackendRequest { backend_id: "bk-1".into(), grace };
        assert_eq!(violations(raw.stop_backend(stop).await), ["grace"], "grace {grace:?}");
    }
    let stats = pb::StreamStatsRequest { backend_id: "bk-1".into(), interval: d(-5) };
    assert_eq!(violations(raw.stream_stats(stats).await), ["interval"]);
}
