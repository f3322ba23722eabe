//! Authentication and authorization on a real controller with an auth file: every RPC × every
//! role × {no token, wrong token, right token, revoked after a reload} gives the expected code,
//! and a drone or proxy token attaches only as the node names it is bound to.

use hangar::error::error_info;
use hangar::v1::{
    self, backend_service_client::BackendServiceClient, drone_service_client::DroneServiceClient,
    node_service_client::NodeServiceClient, proxy_service_client::ProxyServiceClient,
};
use hangar_server::auth::Role;
use hangar_server::controller::ControllerConfig;
use hangar_tests::auth::{Authed, attach_drone, attach_proxy, authed};
use hangar_tests::{TestCluster, test_config};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::{Code, Status};

/// Every method of `hangar.v1` and the least role that may call it (docs/security.md). Written out
/// here rather than read from `auth::table`, so that a wrong table fails this test.
const EXPECTED: &[(&str, Role)] = &[
    ("/hangar.v1.NodeService/ListNodes", Role::Reader),
    ("/hangar.v1.NodeService/GetNode", Role::Reader),
    ("/hangar.v1.NodeService/WatchNodes", Role::Reader),
    ("/hangar.v1.NodeService/DrainNode", Role::Operator),
    ("/hangar.v1.NodeService/UndrainNode", Role::Operator),
    ("/hangar.v1.BackendService/ListBackends", Role::Reader),
    ("/hangar.v1.BackendService/GetBackend", Role::Reader),
    ("/hangar.v1.BackendService/WatchBackend", Role::Reader),
    ("/hangar.v1.BackendService/WatchBackends", Role::Reader),
    ("/hangar.v1.BackendService/Connect", Role::Client),
    ("/hangar.v1.BackendService/TerminateBackend", Role::Client),
    ("/hangar.v1.DroneService/Attach", Role::Drone),
    ("/hangar.v1.ProxyService/Attach", Role::Proxy),
    ("/hangar.v1.ProxyService/LookupRoute", Role::Proxy),
];

fn secret(role: Role) -> String {
    format!("{role}-secret-0123456789abcdef")
}

/// An auth file with one token per role (drone bound to drone-a, proxy to proxy-a), except
/// `without`.
fn auth_file(without: &[Role]) -> String {
    let mut text = String::new();
    for role in Role::ALL.into_iter().filter(|r| !without.contains(r)) {
        text.push_str(&format!(
            "[[token]]\nname = \"{role}-token\"\nrole = \"{role}\"\nsecret = \"{}\"\n",
            secret(role)
        ));
        match role {
            Role::Drone => text.push_str("nodes = [\"drone-a\"]\n"),
            Role::Proxy => text.push_str("nodes = [\"proxy-a\"]\n"),
            _ => {}
        }
        text.push('\n');
    }
    text
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write the auth file");
}

/// A controller whose auth file has a token per role.
async fn cluster() -> (TestCluster, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth.toml");
    write(&path, &auth_file(&[]));
    let config = ControllerConfig { auth_file: Some(path.clone()), ..test_config() };
    (TestCluster::sqlite_with(config).await, path, dir)
}

/// Calls `method` with a minimal request. What an allowed call answers does not matter here
/// (NOT_FOUND, INVALID_ARGUMENT, a protocol error on an empty attach stream…), only whether the
/// auth layer let it through.
async fn call(method: &str, ch: Authed) -> Result<(), Status> {
    let missing = || "missing-id".to_string();
    match method {
        "/hangar.v1.NodeService/ListNodes" => {
            NodeServiceClient::new(ch).list_nodes(v1::ListNodesRequest::default()).await.map(drop)
        }
        "/hangar.v1.NodeService/GetNode" => {
            NodeServiceClient::new(ch).get_node(v1::GetNodeRequest { id: missing() }).await.map(drop)
        }
        "/hangar.v1.NodeService/WatchNodes" => {
            NodeServiceClient::new(ch).watch_nodes(v1::WatchNodesRequest::default()).await.map(drop)
        }
        "/hangar.v1.NodeService/DrainNode" => NodeServiceClient::new(ch)
            .drain_node(v1::DrainNodeRequest { id: missing(), ..Default::default() })
            .await
            .map(drop),
        "/hangar.v1.NodeService/UndrainNode" => {
            NodeServiceClient::new(ch).undrain_node(v1::UndrainNodeRequest { id: missing() }).await.map(drop)
        }
        "/hangar.v1.BackendService/ListBackends" => {
            BackendServiceClient::new(ch).list_backends(v1::ListBackendsRequest::default()).await.map(drop)
        }
        "/hangar.v1.BackendService/GetBackend" => {
            BackendServiceClient::new(ch).get_backend(v1::GetBackendRequest { id: missing() }).await.map(drop)
        }
        "/hangar.v1.BackendService/WatchBackend" => {
            BackendServiceClient::new(ch).watch_backend(v1::WatchBackendRequest { id: missing() }).await.map(drop)
        }
        "/hangar.v1.BackendService/WatchBackends" => {
            BackendServiceClient::new(ch).watch_backends(v1::WatchBackendsRequest::default()).await.map(drop)
        }
        "/hangar.v1.BackendService/Connect" => {
            BackendServiceClient::new(ch).connect(v1::ConnectRequest::default()).await.map(drop)
        }
        "/hangar.v1.BackendService/TerminateBackend" => BackendServiceClient::new(ch)
            .terminate_backend(v1::TerminateBackendRequest { id: missing(), ..Default::default() })
            .await
            .map(drop),
        // An attach stream that ends before its Hello: refused by the service, if it gets there.
        "/hangar.v1.DroneService/Attach" => DroneServiceClient::new(ch).attach(tokio_stream::empty()).await.map(drop),
        "/hangar.v1.ProxyService/Attach" => ProxyServiceClient::new(ch).attach(tokio_stream::empty()).await.map(drop),
        "/hangar.v1.ProxyService/LookupRoute" => ProxyServiceClient::new(ch)
            .lookup_route(v1::LookupRouteRequest { token: "no-such-token".into(), ..Default::default() })
            .await
            .map(drop),
        other => panic!("the matrix has no call for {other}; add one"),
    }
}

fn reason(status: &Status) -> String {
    error_info(status).map(|(reason, _)| reason).unwrap_or_default()
}

/// UNAUTHENTICATED with `expected_reason`, and nothing of the token in the answer.
fn assert_unauthenticated(result: Result<(), Status>, expected_reason: &str, what: &str) {
    let status = result.err().unwrap_or_else(|| panic!("{what}: admitted"));
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::Unauthenticated, expected_reason),
        "{what}: {status:?}"
    );
    assert!(!status.message().contains("0123456789abcdef"), "{what}: the answer repeats the token: {status:?}");
}

fn assert_admitted(result: Result<(), Status>, what: &str) {
    if let Err(status) = result {
        assert!(
            !matches!(status.code(), Code::Unauthenticated | Code::PermissionDenied),
            "{what}: refused by the auth layer: {status:?}"
        );
    }
}

#[tokio::test]
async fn every_rpc_times_every_role_times_every_credential_gives_the_expected_code() {
    let (cluster, path, _dir) = cluster().await;
    let url = cluster.url();
    let methods: Vec<&str> = hangar_server::auth::table::METHODS.iter().map(|(path, _)| *path).collect();
    let expected: Vec<&str> = EXPECTED.iter().map(|(path, _)| *path).collect();
    assert_eq!(methods, expected, "the matrix does not cover exactly the methods of the table");

    for (method, least) in EXPECTED {
        assert_unauthenticated(
            call(method, authed(&url, None).await).await,
            "UNAUTHENTICATED",
            &format!("{method} without a token"),
        );
        let wrong = authed(&url, Some("wrong-secret-0123456789abcdef")).await;
        assert_unauthenticated(call(method, wrong).await, "TOKEN_INVALID", &format!("{method} with a wrong token"));

        for role in Role::ALL {
            let what = format!("{method} as {role}");
            let result = call(method, authed(&url, Some(&secret(role))).await).await;
            if role.includes(*least) {
                assert_admitted(result, &what);
                continue;
            }
            let status = result.err().unwrap_or_else(|| panic!("{what}: admitted"));
            assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
            let (reason, meta) = error_info(&status).unwrap_or_else(|| panic!("{what}: no ErrorInfo"));
            assert_eq!(reason, "ROLE_NOT_ALLOWED", "{what}");
            assert_eq!(meta["role"], role.as_str(), "{what}");
            assert_eq!(meta["required_role"], least.as_str(), "{what}");
            assert_eq!(meta["method"], method.trim_start_matches('/'), "{what}");
        }
    }

    // Revoked: the file loses every token but the admin's, and the controller reloads it.
    write(&path, &auth_file(&[Role::Reader, Role::Client, Role::Operator, Role::Drone, Role::Proxy]));
    cluster.controller.reload().expect("the new file loads");
    for (method, _) in EXPECTED {
        for role in [Role::Reader, Role::Client, Role::Operator, Role::Drone, Role::Proxy] {
            let result = call(method, authed(&url, Some(&secret(role))).await).await;
            assert_unauthenticated(result, "TOKEN_INVALID", &format!("{method} as the revoked {role}"));
        }
        assert_admitted(call(method, authed(&url, Some(&secret(Role::Admin))).await).await, method);
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn health_is_open_to_everyone_and_reflection_by_default() {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    let (cluster, _path, _dir) = cluster().await;
    let url = cluster.url();
    for token in [None, Some("wrong-secret-0123456789abcdef")] {
        let mut health = HealthClient::new(authed(&url, token).await);
        let response = health.check(HealthCheckRequest { service: String::new() }).await.expect("health is open");
        assert_eq!(response.into_inner().status, ServingStatus::Serving as i32);
    }

    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest,
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut reflection = ServerReflectionClient::new(authed(&url, None).await);
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection is open")
        .into_inner();
    assert!(responses.message().await.expect("a reflection answer").is_some());
    cluster.shutdown().await;
}

#[tokio::test]
async fn reflection_can_require_a_token() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest,
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth.toml");
    write(&path, &auth_file(&[]));
    let config = ControllerConfig {
        auth_file: Some(path),
        reflection: hangar_server::auth::Reflection::Authenticated,
        ..test_config()
    };
    let cluster = TestCluster::sqlite_with(config).await;
    let request = || ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut anonymous = ServerReflectionClient::new(authed(&cluster.url(), None).await);
    let status = anonymous.server_reflection_info(tokio_stream::iter([request()])).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    // Any principal will do, whatever its role.
    let mut drone = ServerReflectionClient::new(authed(&cluster.url(), Some(&secret(Role::Drone))).await);
    let mut responses =
        drone.server_reflection_info(tokio_stream::iter([request()])).await.expect("admitted").into_inner();
    assert!(responses.message().await.expect("a reflection answer").is_some());
    cluster.shutdown().await;
}

#[tokio::test]
async fn an_open_watch_outlives_the_revocation_of_its_token() {
    let (cluster, path, _dir) = cluster().await;
    let url = cluster.url();
    let mut watch = NodeServiceClient::new(authed(&url, Some(&secret(Role::Reader))).await)
        .watch_nodes(v1::WatchNodesRequest::default())
        .await
        .expect("a reader watches")
        .into_inner();
    write(&path, &auth_file(&[Role::Reader]));
    cluster.controller.reload().expect("the new file loads");
    assert_unauthenticated(
        call("/hangar.v1.NodeService/ListNodes", authed(&url, Some(&secret(Role::Reader))).await).await,
        "TOKEN_INVALID",
        "a new call",
    );

    let _drone = attach_drone(&url, &secret(Role::Drone), "drone-a").await.expect("drone-a attaches");
    let event = tokio::time::timeout(Duration::from_secs(5), watch.message()).await.expect("an event in time");
    let event = event.expect("the stream is still open").expect("an event").event.expect("event");
    assert_eq!(event.node.expect("node").name, "drone-a");
    cluster.shutdown().await;
}

/// PERMISSION_DENIED, NODE_NOT_ALLOWED, naming `node` and none of the principal's own nodes.
fn assert_node_not_allowed(result: Result<(), Status>, node: &str, own: &str) {
    let status = result.err().unwrap_or_else(|| panic!("attached as {node}"));
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let (reason, meta) = error_info(&status).expect("ErrorInfo");
    assert_eq!(reason, "NODE_NOT_ALLOWED");
    assert_eq!(meta.get("node").map(String::as_str), Some(node));
    assert!(!status.message().contains(own) && !meta.values().any(|v| v == own), "{status:?} names {own}");
}

#[tokio::test]
async fn a_drone_token_bound_to_drone_a_cannot_attach_as_drone_b() {
    let (cluster, _path, _dir) = cluster().await;
    let url = cluster.url();
    let drone = secret(Role::Drone);
    assert_node_not_allowed(attach_drone(&url, &drone, "drone-b").await.map(drop), "drone-b", "drone-a");
    let _a = attach_drone(&url, &drone, "drone-a").await.expect("drone-a attaches as itself");
    // drone-b never became a node.
    let nodes = NodeServiceClient::new(authed(&url, Some(&secret(Role::Reader))).await)
        .list_nodes(v1::ListNodesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .nodes;
    assert_eq!(nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["drone-a"]);
    // An admin is bound to nothing.
    let _b = attach_drone(&url, &secret(Role::Admin), "drone-b").await.expect("an admin attaches any drone");
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_proxy_token_bound_to_proxy_a_cannot_attach_as_proxy_b() {
    let (cluster, _path, _dir) = cluster().await;
    let url = cluster.url();
    let proxy = secret(Role::Proxy);
    assert_node_not_allowed(attach_proxy(&url, &proxy, "proxy-b").await.map(drop), "proxy-b", "proxy-a");
    let _a = attach_proxy(&url, &proxy, "proxy-a").await.expect("proxy-a attaches as itself");
    // A drone token reaches no proxy at all, whatever the name.
    let status = attach_proxy(&url, &secret(Role::Drone), "drone-a").await.map(drop).unwrap_err();
    assert_eq!((status.code(), reason(&status).as_str()), (Code::PermissionDenied, "ROLE_NOT_ALLOWED"));
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_broken_auth_file_on_reload_keeps_the_one_in_force() {
    let (cluster, path, _dir) = cluster().await;
    let url = cluster.url();
    write(&path, "[[token]]\nname = \"x\"\nrole = \"superuser\"\nsecret = \"0123456789abcdef0123\"\n");
    let err = cluster.controller.reload().expect_err("a broken file is refused");
    assert!(err.to_string().contains("token[0].role: unknown role \"superuser\""), "{err}");
    assert_admitted(
        call("/hangar.v1.NodeService/ListNodes", authed(&url, Some(&secret(Role::Reader))).await).await,
        "after a broken reload",
    );
    std::fs::remove_file(&path).unwrap();
    assert!(cluster.controller.reload().is_err(), "a missing file is refused too");
    assert_admitted(
        call("/hangar.v1.NodeService/DrainNode", authed(&url, Some(&secret(Role::Operator))).await).await,
        "after a missing file",
    );
    cluster.shutdown().await;
}

#[tokio::test]
async fn without_an_auth_file_every_caller_is_admin_as_before() {
    let cluster = TestCluster::sqlite().await;
    let url = cluster.url();
    for (method, _) in EXPECTED {
        assert_admitted(call(method, authed(&url, None).await).await, method);
        // A token is not looked at.
        assert_admitted(call(method, authed(&url, Some("anything-at-all-0123")).await).await, method);
    }
    cluster.shutdown().await;
}
