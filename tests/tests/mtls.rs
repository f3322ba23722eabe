//! TLS and mTLS on the controller, as clients see it: who gets in and who does not (with an
//! error, never a hang), and certificates rotated under a running controller. Every certificate
//! is made here (`hangar_tests::pki`).

use chrono::Utc;
use hangar::domain::NodeFilter;
use hangar::v1::{self, node_service_client::NodeServiceClient};
use hangar_client::{ClientError, ClientOptions, Credentials, HangarClient, RetryPolicy};
use hangar_tests::pki::{TestCa, served_certificate};
use hangar_tests::{TestCluster, next_event, registration, test_config};
use std::time::Duration;

/// Long enough for any handshake on loopback; a refusal that takes longer counts as a hang.
const ANSWER: Duration = Duration::from_secs(10);

async fn cluster(ca: &TestCa, mtls: bool) -> TestCluster {
    let mut config = test_config();
    config.tls = Some(ca.controller_tls(&ca.server("controller"), mtls));
    TestCluster::sqlite_with(config).await
}

fn options(credentials: Credentials) -> ClientOptions {
    // One try: a refused handshake is not worth retrying here.
    let retry = RetryPolicy { max_attempts: 1, ..RetryPolicy::default() };
    ClientOptions { credentials, retry, ..ClientOptions::default() }
}

/// Connects and lists nodes, within [`ANSWER`].
async fn list(url: &str, credentials: Credentials) -> Result<usize, ClientError> {
    let call = async {
        let client = HangarClient::connect_with(url, options(credentials)).await?;
        Ok(client.list_all_nodes(&NodeFilter::default()).await?.nodes.len())
    };
    tokio::time::timeout(ANSWER, call).await.unwrap_or_else(|_| panic!("no answer and no error within {ANSWER:?}"))
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let ca = TestCa::new("ca");
    let cluster = cluster(&ca, true).await;
    let err = list(&cluster.url(), ca.credentials(None)).await.expect_err("refused");
    assert!(err.to_string().contains("CertificateRequired"), "{err}");
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let ca = TestCa::new("ca");
    let other = TestCa::new("other-ca");
    let cluster = cluster(&ca, true).await;
    // It trusts the right CA for the server, but presents a certificate the client CA did not sign.
    let mut credentials = other.credentials(Some(&other.client("drone-a")));
    credentials.tls.as_mut().unwrap().ca = Some(ca.ca());
    let err = list(&cluster.url(), credentials).await.expect_err("refused");
    assert!(err.to_string().contains("UnknownCA"), "{err}");
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_client_certificate_from_the_client_ca_passes() {
    let ca = TestCa::new("ca");
    let cluster = cluster(&ca, true).await;
    assert!(cluster.url().starts_with("https://"), "{}", cluster.url());
    assert_eq!(list(&cluster.url(), ca.credentials(Some(&ca.client("cli")))).await.unwrap(), 0);
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_controller_certificate_from_an_unknown_ca_is_refused_by_the_client() {
    let ca = TestCa::new("ca");
    let impostor = TestCa::new("impostor-ca");
    let cluster = cluster(&impostor, false).await;
    let err = list(&cluster.url(), ca.credentials(None)).await.expect_err("refused");
    match &err {
        ClientError::Connect { detail, .. } => assert!(detail.contains("UnknownIssuer"), "{detail}"),
        other => panic!("expected a Connect error, got {other:?}"),
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn tls_without_a_client_ca_takes_clients_without_certificates_and_refuses_plain_http() {
    let ca = TestCa::new("ca");
    let cluster = cluster(&ca, false).await;
    assert_eq!(list(&cluster.url(), ca.credentials(None)).await.unwrap(), 0);
    let plain = cluster.url().replace("https://", "http://");
    assert!(list(&plain, Credentials::default()).await.is_err(), "plain HTTP/2 to a TLS port fails");
    cluster.shutdown().await;
}

#[tokio::test]
async fn rotated_certificates_serve_new_connections_while_an_open_watch_goes_on() {
    let (old_ca, new_ca) = (TestCa::new("old-ca"), TestCa::new("new-ca"));
    let old_server = old_ca.server("controller");
    let (cert, key, client_ca) = {
        let tls = old_ca.controller_tls(&old_server, true);
        // The controller reads these paths; rotating means writing new files over them.
        let dir = old_ca.dir().join("live");
        std::fs::create_dir(&dir).unwrap();
        let paths = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("client-ca.pem"));
        std::fs::copy(&tls.files.cert, &paths.0).unwrap();
        std::fs::copy(&tls.files.key, &paths.1).unwrap();
        std::fs::copy(tls.client_ca.unwrap(), &paths.2).unwrap();
        paths
    };
    let mut config = test_config();
    config.tls = Some(hangar_server::tls::ControllerTlsFiles {
        files: hangar_server::tls::TlsFiles { cert: cert.clone(), key: key.clone() },
        client_ca: Some(client_ca.clone()),
    });
    let cluster = TestCluster::sqlite_with(config).await;
    let url = cluster.url();
    let old_client = old_ca.credentials(Some(&old_ca.client("watcher")));

    // A watch over the old certificates, past its snapshot.
    let channel = old_client
        .authorize(
            old_client
                .configure(tonic::transport::Endpoint::from_shared(url.clone()).unwrap())
                .unwrap()
                .connect()
                .await
                .unwrap(),
        )
        .unwrap();
    let request = v1::WatchNodesRequest { send_initial: true, ..Default::default() };
    let mut watch = NodeServiceClient::new(channel).watch_nodes(request).await.unwrap().into_inner();
    assert_eq!(next_event(&mut watch, ANSWER).await.unwrap().r#type(), v1::NodeEventType::SnapshotEnd);

    // A broken certificate file: the reload fails, naming it, and nothing changes.
    std::fs::write(&cert, "not a certificate").unwrap();
    let err = cluster.controller.reload().expect_err("a broken file is refused");
    assert!(format!("{err:#}").contains(&cert.display().to_string()), "{err:#}");
    assert_eq!(served_certificate(&url, &old_ca).await, old_server.der());

    // Rotate all three: the new CA's server certificate, and only its clients admitted.
    let new_server = new_ca.server("controller");
    std::fs::copy(&new_server.cert, &cert).unwrap();
    std::fs::copy(&new_server.key, &key).unwrap();
    std::fs::copy(new_ca.ca(), &client_ca).unwrap();
    cluster.controller.reload().expect("the new files load");

    assert_eq!(served_certificate(&url, &new_ca).await, new_server.der(), "a new connection gets the new certificate");
    assert_eq!(list(&url, new_ca.credentials(Some(&new_ca.client("cli")))).await.unwrap(), 0);
    assert!(list(&url, old_client.clone()).await.is_err(), "the old CA's clients are no longer admitted");

    // The watch opened before the rotation still delivers.
    cluster.store.attach_node(registration("after-rotation"), "c", Utc::now()).await.unwrap();
    let event = next_event(&mut watch, ANSWER).await.expect("the open watch goes on");
    assert_eq!(event.node.unwrap().name, "after-rotation");
    cluster.shutdown().await;
}
