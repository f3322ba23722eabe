//! What grpcurl and load balancers see: server reflection (v1 and v1alpha) and gRPC health.

use hangar_tests::TestCluster;
use prost::Message;
use tokio_stream::StreamExt;
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
    for service in HANGAR_SERVICES.iter().chain(&["hangar.executor.v1.ExecutorService", "grpc.health.v1.Health"]) {
        assert!(names.contains(service), "{service} missing from {names:?}");
    }
    for expected_file in ["hangar/v1/node.proto", "hangar/executor/v1/executor.proto"] {
        let Some(MessageResponse::FileDescriptorResponse(files)) =
            responses.next().await.unwrap().unwrap().message_response
        else {
            panic!("expected file descriptors");
        };
        let decoded: Vec<_> = files
            .file_descriptor_proto
            .iter()
            .map(|b| prost_types::FileDescriptorProto::decode(&b[..]).unwrap())
            .collect();
        assert!(decoded.iter().any(|f| f.name() == expected_file), "{expected_file} not served");
    }
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
    assert_eq!(methods, ["Connect", "GetBackend", "ListBackends", "WatchBackend", "TerminateBackend"]);
    cluster.shutdown().await;
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
