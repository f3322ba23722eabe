//! What any connection may send the controller, whoever sent it: messages too large, calls past
//! their deadline, connections that never send a request, floods of reset streams and oversized
//! headers are refused or cut off, and the controller goes on serving everyone else.

use hangar::v1::{self, drone_service_client::DroneServiceClient, node_service_client::NodeServiceClient};
use hangar_server::controller::ControllerConfig;
use hangar_server::limits::{LimitsConfig, TransportLimits};
use hangar_tests::{TestCluster, test_config};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const SETTINGS: &[u8] = &[0, 0, 0, 0x4, 0, 0, 0, 0, 0];

async fn cluster_with(transport: TransportLimits) -> TestCluster {
    let limits = LimitsConfig { transport, ..LimitsConfig::default() };
    TestCluster::sqlite_with(ControllerConfig { limits, ..test_config() }).await
}

/// The controller answers a fresh client.
async fn still_serving(cluster: &TestCluster) {
    let mut nodes = NodeServiceClient::new(cluster.channel().await);
    let listed = tokio::time::timeout(Duration::from_secs(5), nodes.list_nodes(v1::ListNodesRequest::default())).await;
    listed.expect("answered in time").expect("answered OK");
}

/// Reads from `tcp` until the server closes it; how long that took, or `None` if it stayed open
/// for `patience`.
async fn closed_within(tcp: &mut tokio::net::TcpStream, patience: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(patience, read_all).await.ok().map(|()| started.elapsed())
}

#[tokio::test]
async fn a_connection_that_sends_no_request_in_time_is_closed_and_one_that_did_is_kept() {
    let within = Duration::from_millis(300);
    let cluster = cluster_with(TransportLimits { first_request_timeout: within, ..Default::default() }).await;
    let address = cluster.controller.local_addr();

    let mut silent = tokio::net::TcpStream::connect(address).await.unwrap();
    let took = closed_within(&mut silent, Duration::from_secs(5)).await.expect("a silent connection is closed");
    assert!(took >= within / 2, "not before its deadline: {took:?}");

    // The preface and settings, then nothing: a connection, but no request.
    let mut idle = tokio::net::TcpStream::connect(address).await.unwrap();
    idle.write_all(PREFACE).await.unwrap();
    idle.write_all(SETTINGS).await.unwrap();
    assert!(closed_within(&mut idle, Duration::from_secs(5)).await.is_some(), "a preface alone is not a request");

    // A real client's connection made its request in time; idle afterwards, it stays.
    let mut nodes = NodeServiceClient::new(cluster.channel().await);
    nodes.list_nodes(v1::ListNodesRequest::default()).await.unwrap();
    // A window in which the first-request deadline would have closed it (sleeping to show it
    // did not).
    tokio::time::sleep(within * 3).await;
    nodes.list_nodes(v1::ListNodesRequest::default()).await.expect("the same connection, still open");
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_message_over_four_mib_is_refused_and_the_controller_serves_on() {
    let cluster = cluster_with(TransportLimits::default()).await;
    let mut nodes = NodeServiceClient::new(cluster.channel().await);
    let oversized = v1::ListNodesRequest { page_token: "x".repeat(5 << 20), ..Default::default() };
    let refused = nodes.list_nodes(oversized).await.expect_err("5 MiB is over the limit");
    assert_eq!(refused.code(), Code::ResourceExhausted, "gRPC's code for a message over the limit: {refused:?}");
    assert!(refused.message().contains("too large"), "{refused:?}");
    // Just under the limit is decoded, then refused by validation, not by size.
    let under = v1::ListNodesRequest { page_token: "x".repeat((4 << 20) - 64), ..Default::default() };
    assert_eq!(nodes.list_nodes(under).await.unwrap_err().code(), Code::InvalidArgument);
    still_serving(&cluster).await;
    cluster.shutdown().await;
}

/// A drone's Attach without its hello is a call the controller holds until the hello timeout:
/// long enough to see which deadline ends it first.
async fn attach_without_hello(url: &str, deadline: Option<Duration>) -> (tonic::Status, Duration) {
    let mut drones = DroneServiceClient::new(hangar_tests::channel(url).await);
    let (_keep_open, rx) = tokio::sync::mpsc::channel::<v1::DroneAttachRequest>(1);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(deadline) = deadline {
        request.set_timeout(deadline);
    }
    let started = Instant::now();
    let status = drones.attach(request).await.expect_err("no hello, no welcome");
    (status, started.elapsed())
}

#[tokio::test]
async fn a_clients_deadline_is_honoured_and_calls_without_one_end_at_the_servers_default() {
    let mut config = test_config();
    config.liveness.hello_timeout = Duration::from_secs(20);
    config.limits.transport.call_timeout = Duration::from_secs(1);
    let cluster = TestCluster::sqlite_with(config).await;

    let (status, took) = attach_without_hello(&cluster.url(), Some(Duration::from_millis(200))).await;
    assert!(matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled), "{status:?}");
    assert!(took < Duration::from_millis(900), "the client's 200 ms, not the server's second: {took:?}");

    let (status, took) = attach_without_hello(&cluster.url(), None).await;
    assert!(matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled), "{status:?}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "the server's second: {took:?}");
    still_serving(&cluster).await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_flood_of_reset_streams_is_cut_off_and_the_controller_serves_on() {
    let cluster = cluster_with(TransportLimits::default()).await;
    let address = cluster.controller.local_addr();
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let connection = tokio::spawn(connection);
    let started = Instant::now();
    let mut sent = 0;
    // Rapid reset: open a stream and cancel it at once, as fast as the connection takes them.
    for _ in 0..20_000 {
        let ready = match client.ready().await {
            Ok(ready) => ready,
            Err(_) => break,
        };
        client = ready;
        let request = http::Request::post(format!("http://{address}/hangar.v1.NodeService/ListNodes"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let Ok((_, mut stream)) = client.send_request(request, false) else { break };
        stream.send_reset(h2::Reason::CANCEL);
        sent += 1;
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), connection).await;
    println!("{sent} streams opened and reset in {:?}; the connection ended with {ended:?}", started.elapsed());
    // The server says GOAWAY with ENHANCE_YOUR_CALM and closes; a client still writing its
    // flood may see the closed socket before it reads the GOAWAY.
    match ended {
        Ok(Ok(Err(err))) => assert!(
            err.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) || err.is_io(),
            "cut off for another reason: {err:?}"
        ),
        other => panic!("the flooding connection was not cut off: {other:?} after {sent} streams"),
    }
    still_serving(&cluster).await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_header_list_over_sixteen_kib_is_refused_and_the_controller_serves_on() {
    let cluster = cluster_with(TransportLimits::default()).await;
    let mut nodes = NodeServiceClient::new(cluster.channel().await);
    let mut request = tonic::Request::new(v1::ListNodesRequest::default());
    request.metadata_mut().insert("x-padding", "x".repeat(20 << 10).parse().unwrap());
    let refused = nodes.list_nodes(request).await.expect_err("20 KiB of headers");
    assert!(refused.message().contains("431"), "HTTP 431 Request Header Fields Too Large: {refused:?}");
    let mut fits = tonic::Request::new(v1::ListNodesRequest::default());
    fits.metadata_mut().insert("x-padding", "x".repeat(8 << 10).parse().unwrap());
    nodes.list_nodes(fits).await.expect("8 KiB of headers fit");
    still_serving(&cluster).await;
    cluster.shutdown().await;
}
