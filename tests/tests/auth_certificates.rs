//! Client certificates as principals: with mTLS and an auth file, a certificate's common name
//! is mapped to a role by the file's `[[certificate]]` entries, so people and drones can run
//! without bearer tokens, and get exactly the role their entry names.

use hangar::error::{error_info, reason};
use hangar::secret::Secret;
use hangar::v1::{self, drone_service_client::DroneServiceClient, node_service_client::NodeServiceClient};
use hangar_client::{Credentials, HangarChannel};
use hangar_tests::pki::{CertFiles, TestCa};
use hangar_tests::{TestCluster, drone_hello, test_config};
use std::time::Duration;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Endpoint;

const TOKEN: &str = "an-operator-token-of-some-length";

async fn cluster(ca: &TestCa, dir: &tempfile::TempDir) -> TestCluster {
    let auth_file = dir.path().join("auth.toml");
    std::fs::write(
        &auth_file,
        format!(
            "[[certificate]]\ncommon_name = \"alice\"\nrole = \"reader\"\n\n\
             [[certificate]]\ncommon_name = \"drone-a\"\nrole = \"drone\"\n\n\
             [[token]]\nname = \"ops\"\nrole = \"operator\"\nsecret = \"{TOKEN}\"\n"
        ),
    )
    .unwrap();
    let mut config = test_config();
    config.tls = Some(ca.controller_tls(&ca.server("controller"), true));
    config.auth_file = Some(auth_file);
    TestCluster::sqlite_with(config).await
}

async fn channel(url: &str, credentials: &Credentials) -> HangarChannel {
    let endpoint = credentials.configure(Endpoint::from_shared(url.to_string()).unwrap()).unwrap();
    let channel = tokio::time::timeout(Duration::from_secs(10), endpoint.connect()).await.unwrap().unwrap();
    credentials.authorize(channel).unwrap()
}

async fn nodes_as(
    url: &str,
    ca: &TestCa,
    identity: &CertFiles,
    token: Option<&str>,
) -> NodeServiceClient<HangarChannel> {
    let mut credentials = ca.credentials(Some(identity));
    credentials.token = token.map(Secret::from);
    NodeServiceClient::new(channel(url, &credentials).await)
}

fn reason_of(status: &tonic::Status) -> String {
    error_info(status).map(|(reason, _)| reason).unwrap_or_default()
}

async fn attach_as(url: &str, ca: &TestCa, identity: &CertFiles, name: &str) -> Result<String, tonic::Status> {
    let mut client = DroneServiceClient::new(channel(url, &ca.credentials(Some(identity))).await);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let hello = v1::DroneAttachRequest { message: Some(v1::drone_attach_request::Message::Hello(drone_hello(name))) };
    tx.send(hello).await.unwrap();
    let mut inbound = client.attach(ReceiverStream::new(rx)).await?.into_inner();
    let first = inbound.message().await?;
    // Keep the sender alive until the answer is read: a closed stream would end the session.
    drop(tx);
    match first {
        Some(v1::DroneAttachResponse { message: Some(v1::drone_attach_response::Message::Welcome(welcome)) }) => {
            Ok(welcome.node_id)
        }
        other => panic!("expected a welcome, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_mapped_to_reader_lists_nodes_but_may_not_drain() {
    let ca = TestCa::new("ca");
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(&ca, &dir).await;
    let url = cluster.url();
    let drone_a = ca.client("drone-a");
    let node_id = attach_as(&url, &ca, &drone_a, "drone-a").await.expect("drone-a attaches as itself");

    let mut alice = nodes_as(&url, &ca, &ca.client("alice"), None).await;
    let listed = alice.list_nodes(v1::ListNodesRequest::default()).await.expect("a reader lists nodes");
    assert!(listed.into_inner().nodes.iter().any(|n| n.id == node_id));

    let refused = alice
        .drain_node(v1::DrainNodeRequest { id: node_id.clone(), deadline: None })
        .await
        .expect_err("a reader may not drain");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(reason_of(&refused), reason::ROLE_NOT_ALLOWED);
    let (_, metadata) = error_info(&refused).unwrap();
    assert_eq!(metadata["role"], "reader");
    assert_eq!(metadata["required_role"], "operator");

    // A bearer token sent over the same certificate decides the role: the operator drains.
    let mut ops = nodes_as(&url, &ca, &ca.client("alice"), Some(TOKEN)).await;
    ops.drain_node(v1::DrainNodeRequest { id: node_id, deadline: None }).await.expect("the token's operator drains");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drone_certificate_attaches_only_as_its_common_name() {
    let ca = TestCa::new("ca");
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(&ca, &dir).await;
    let url = cluster.url();
    let drone_a = ca.client("drone-a");

    let refused = attach_as(&url, &ca, &drone_a, "drone-b").await.expect_err("drone-a's certificate is not drone-b");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(reason_of(&refused), reason::NODE_NOT_ALLOWED);
    assert!(!refused.message().contains("drone-a"), "names only the node asked for: {}", refused.message());
    attach_as(&url, &ca, &drone_a, "drone-a").await.expect("and attaches as itself");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_certificate_the_auth_file_does_not_map_is_unauthenticated() {
    let ca = TestCa::new("ca");
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(&ca, &dir).await;
    let mut mallory = nodes_as(&cluster.url(), &ca, &ca.client("mallory"), None).await;
    let refused = mallory.list_nodes(v1::ListNodesRequest::default()).await.expect_err("an unmapped certificate");
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(reason_of(&refused), reason::CERTIFICATE_NOT_MAPPED);
    cluster.shutdown().await;
}
