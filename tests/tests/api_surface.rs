//! What grpcurl and load balancers see: server reflection (v1 and v1alpha) and gRPC health.

use hangar::codec::HangarCodec;
use hangar_tests::TestCluster;
use prost::Message;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

const HANGAR_SERVICES: [&str; 4] =
    ["hangar.v1.NodeService", "hangar.v1.BackendService", "hangar.v1.DroneService", "hangar.v1.ProxyService"];

/// What `grpcurl list` and `grpcurl describe` do, over reflection v1.
#[tokio::test]
async fn reflection_v1_lists_services_and_serves_their_descriptors() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let cluster = TestCluster::sqlite().await;
    let mut client = ServerReflectionClient::new(cluster.channel().await);
    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("hangar.v1.NodeService".into()),
        MessageRequest::FileContainingSymbol("hangar.executor.v1.ExecutorService".into()),
    ]
    .map(|m| ServerReflectionRequest { host: String::new(), message_request: Some(m) });
    let mut responses = client.server_reflection_info(tokio_stream::iter(requests)).await.unwrap().into_inner();

    let Some(MessageResponse::ListServicesResponse(list)) = responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for service in HANGAR_SERVICES.iter().chain(&["grpc.health.v1.Health"]) {
        assert!(names.contains(service), "{service} missing from {names:?}");
    }
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected file descriptors");
    };
    let decoded: Vec<_> =
        files.file_descriptor_proto.iter().map(|b| prost_types::FileDescriptorProto::decode(&b[..]).unwrap()).collect();
    assert!(decoded.iter().any(|f| f.name() == "hangar/v1/node.proto"), "node.proto not served");
    // The controller does not serve the executor protocol, so its reflection does not know it.
    let unknown = responses.next().await.unwrap().expect_err("hangar.executor.v1 is not the controller's");
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");
    cluster.shutdown().await;
}

/// Older tools (and grpcurl against older servers) speak v1alpha.
#[tokio::test]
async fn reflection_v1alpha_lists_services_and_serves_their_descriptors() {
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let cluster = TestCluster::sqlite().await;
    let mut client = ServerReflectionClient::new(cluster.channel().await);
    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("hangar.v1.BackendService".into()),
    ]
    .map(|m| ServerReflectionRequest { host: String::new(), message_request: Some(m) });
    let mut responses = client.server_reflection_info(tokio_stream::iter(requests)).await.unwrap().into_inner();

    let Some(MessageResponse::ListServicesResponse(list)) = responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for service in HANGAR_SERVICES {
        assert!(names.contains(&service), "{service} missing from {names:?}");
    }
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected file descriptors");
    };
    let backend = files
        .file_descriptor_proto
        .iter()
        .map(|b| prost_types::FileDescriptorProto::decode(&b[..]).unwrap())
        .find(|f| f.name() == "hangar/v1/backend.proto")
        .expect("backend.proto served");
    let service = backend.service.iter().find(|s| s.name() == "BackendService").unwrap();
    let methods: Vec<_> = service.method.iter().map(|m| m.name()).collect();
    assert_eq!(methods, ["Connect", "GetBackend", "ListBackends", "WatchBackend", "WatchBackends", "TerminateBackend"]);
    cluster.shutdown().await;
}

/// Everything the controller serves (`server/src/controller/server.rs`), and nothing else.
const SERVED: [&str; 7] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
    "hangar.v1.BackendService",
    "hangar.v1.DroneService",
    "hangar.v1.NodeService",
    "hangar.v1.ProxyService",
];

/// Reflection once listed `hangar.executor.v1.ExecutorService`, and calling it answered
/// UNIMPLEMENTED. Both reflection versions list exactly what the controller serves, and
/// a call to each listed service reaches it.
#[tokio::test]
async fn reflection_lists_exactly_the_services_the_controller_serves() {
    let cluster = TestCluster::sqlite().await;
    let channel = cluster.channel().await;
    let expected: BTreeSet<String> = SERVED.iter().map(|s| s.to_string()).collect();
    assert_eq!(listed_v1(channel.clone()).await, expected, "reflection v1");
    assert_eq!(listed_v1alpha(channel.clone()).await, expected, "reflection v1alpha");
    for service in &expected {
        let method = first_method(channel.clone(), service).await;
        if let Err(status) = call_with_empty_message(channel.clone(), service, &method).await {
            assert_ne!(status.code(), tonic::Code::Unimplemented, "{service}/{method} is listed but not served");
        }
    }
    cluster.shutdown().await;
}

/// What `grpcurl list` shows, over reflection v1.
async fn listed_v1(channel: Channel) -> BTreeSet<String> {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    match responses.next().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(list)) => list.service.into_iter().map(|s| s.name).collect(),
        other => panic!("expected a service list, got {other:?}"),
    }
}

async fn listed_v1alpha(channel: Channel) -> BTreeSet<String> {
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    match responses.next().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(list)) => list.service.into_iter().map(|s| s.name).collect(),
        other => panic!("expected a service list, got {other:?}"),
    }
}

/// The first method of `service` (`package.Service`), as reflection describes it.
async fn first_method(channel: Channel, service: &str) -> String {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(service.into())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected the file describing {service}");
    };
    let (package, name) = service.rsplit_once('.').unwrap();
    files
        .file_descriptor_proto
        .iter()
        .map(|b| prost_types::FileDescriptorProto::decode(&b[..]).unwrap())
        .filter(|f| f.package() == package)
        .flat_map(|f| f.service)
        .find(|s| s.name() == name)
        .and_then(|s| s.method.first().map(|m| m.name().to_string()))
        .unwrap_or_else(|| panic!("{service} described with a method"))
}

/// Calls `/{service}/{method}` with one empty message, whatever its types and streaming: a
/// server that does not serve the service answers UNIMPLEMENTED at once, before any message.
async fn call_with_empty_message(channel: Channel, service: &str, method: &str) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("channel ready");
    let path = http::uri::PathAndQuery::try_from(format!("/{service}/{method}")).unwrap();
    let call = grpc.streaming(tonic::Request::new(tokio_stream::iter([()])), path, HangarCodec::<(), ()>::default());
    match tokio::time::timeout(Duration::from_secs(5), call).await {
        Ok(answer) => answer.map(drop),
        // Still running after the answer headers would have come: a handler has the call.
        Err(_) => Ok(()),
    }
}

#[tokio::test]
async fn health_answers_serving_overall_and_per_service() {
    let cluster = TestCluster::sqlite().await;
    let mut health = HealthClient::new(cluster.channel().await);
    for service in ["", "hangar.v1.NodeService", "hangar.v1.DroneService", "hangar.v1.ProxyService"] {
        let response = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(response.status(), ServingStatus::Serving, "service {service:?}");
    }
    let unknown = health.check(HealthCheckRequest { service: "no.such.Service".into() }).await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    cluster.shutdown().await;
}

/// Shutdown turns health NOT_SERVING before the server stops, so a balancer watching health
/// stops sending new calls first.
#[tokio::test]
async fn shutdown_turns_health_not_serving_first() {
    let cluster = TestCluster::sqlite().await;
    let mut health = HealthClient::new(cluster.channel().await);
    let mut watch = health.watch(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(watch.next().await.unwrap().unwrap().status(), ServingStatus::Serving);
    let stopping = tokio::spawn(cluster.shutdown());
    let next = watch.next().await.expect("a status before the stream ends").unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing);
    stopping.await.unwrap();
}
