//! Every field that crosses the API is checked, and a refused request names each bad field in a
//! `BadRequest` violation: a table per RPC, and the drone and proxy links, which close a stream
//! that sends a bad message with INVALID_ARGUMENT.

use hangar::error::field_violations;
use hangar::v1::{
    self, backend_service_client::BackendServiceClient, drone_service_client::DroneServiceClient,
    node_service_client::NodeServiceClient, proxy_service_client::ProxyServiceClient,
};
use hangar_tests::{ManualDrone, TestCluster, drone_hello};
use std::time::Duration;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

const WAIT: Duration = Duration::from_secs(10);

fn d(seconds: i64, nanos: i32) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos })
}

/// Fails unless `result` is INVALID_ARGUMENT naming `field` among its violations.
fn names(result: Result<impl std::fmt::Debug, Status>, field: &str) {
    let status = result.expect_err(field);
    assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
    let fields: Vec<_> = field_violations(&status).into_iter().map(|(f, _)| f).collect();
    assert!(fields.iter().any(|f| f == field), "{field} missing from {fields:?}");
}

#[tokio::test]
async fn node_service_fields_are_each_checked() {
    let cluster = TestCluster::sqlite().await;
    let mut nodes = NodeServiceClient::new(cluster.channel().await);
    let filter = |f: v1::NodeFilter| v1::ListNodesRequest { filter: Some(f), ..Default::default() };
    let long_id = "n".repeat(129);
    let cases: Vec<(v1::ListNodesRequest, &str)> = vec![
        (filter(v1::NodeFilter { cluster: "EU".into(), ..Default::default() }), "filter.cluster"),
        (filter(v1::NodeFilter { pool: "a_b".into(), ..Default::default() }), "filter.pool"),
        (filter(v1::NodeFilter { kinds: vec![1; 33], ..Default::default() }), "filter.kinds"),
        (filter(v1::NodeFilter { states: vec![1; 33], ..Default::default() }), "filter.states"),
        (
            filter(v1::NodeFilter { labels: [("zone".into(), "a\u{0}".into())].into(), ..Default::default() }),
            "filter.labels[\"zone\"]",
        ),
        (v1::ListNodesRequest { page_token: "x".repeat(2000), ..Default::default() }, "page_token"),
    ];
    for (request, field) in cases {
        names(nodes.list_nodes(request).await, field);
    }
    names(nodes.get_node(v1::GetNodeRequest { id: long_id.clone() }).await, "id");
    names(nodes.get_node(v1::GetNodeRequest { id: "nd 1".into() }).await, "id");
    names(nodes.drain_node(v1::DrainNodeRequest { id: "nd-1".into(), deadline: d(i64::MAX, 0) }).await, "deadline");
    names(nodes.drain_node(v1::DrainNodeRequest { id: "nd-1".into(), deadline: d(-1, 0) }).await, "deadline");
    names(nodes.undrain_node(v1::UndrainNodeRequest { id: String::new() }).await, "id");
    let watch = |bookmark| v1::WatchNodesRequest { bookmark_interval: bookmark, ..Default::default() };
    names(nodes.watch_nodes(watch(d(i64::MAX, 0))).await, "bookmark_interval");
    names(nodes.watch_nodes(watch(d(1, -5))).await, "bookmark_interval");
    names(
        nodes
            .watch_nodes(v1::WatchNodesRequest {
                filter: Some(v1::NodeFilter { cluster: "-x".into(), ..Default::default() }),
                ..Default::default()
            })
            .await,
        "filter.cluster",
    );
    cluster.shutdown().await;
}

#[tokio::test]
async fn backend_service_fields_are_each_checked() {
    let cluster = TestCluster::sqlite().await;
    let mut backends = BackendServiceClient::new(cluster.channel().await);
    let filter = |f: v1::BackendFilter| v1::ListBackendsRequest { filter: Some(f), ..Default::default() };
    for (request, field) in [
        (filter(v1::BackendFilter { states: vec![5; 33], ..Default::default() }), "filter.states"),
        (filter(v1::BackendFilter { drone_id: "d\n".into(), ..Default::default() }), "filter.drone_id"),
        (filter(v1::BackendFilter { key_namespace: "Docs".into(), ..Default::default() }), "filter.key_namespace"),
        (filter(v1::BackendFilter { cluster: "x".repeat(64), ..Default::default() }), "filter.cluster"),
        (v1::ListBackendsRequest { page_size: 5000, ..Default::default() }, "page_size"),
    ] {
        names(backends.list_backends(request).await, field);
    }
    names(backends.get_backend(v1::GetBackendRequest { id: "x".repeat(200) }).await, "id");
    names(backends.watch_backend(v1::WatchBackendRequest { id: String::new() }).await, "id");
    names(backends.terminate_backend(v1::TerminateBackendRequest { id: "bk\t1".into(), hard: false }).await, "id");

    let exe = || v1::Executable { image: "app:1".into(), ..Default::default() };
    let spawn = |edit: fn(&mut v1::SpawnConfig)| {
        let mut config = v1::SpawnConfig { executable: Some(exe()), ..Default::default() };
        edit(&mut config);
        v1::ConnectRequest { spawn_config: Some(config), ..Default::default() }
    };
    let cases: Vec<(v1::ConnectRequest, &str)> = vec![
        (spawn(|c| c.lifetime_limit = d(i64::MAX, 0)), "spawn_config.lifetime_limit"),
        (spawn(|c| c.max_idle = d(20 * 365 * 24 * 3600, 0)), "spawn_config.max_idle"),
        (spawn(|c| c.labels = (0..65).map(|i| (format!("k{i}"), String::new())).collect()), "spawn_config.labels"),
        (
            spawn(|c| {
                c.executable.as_mut().unwrap().env = (0..257).map(|i| (format!("V{i}"), String::new())).collect()
            }),
            "spawn_config.executable.env",
        ),
        (spawn(|c| c.executable.as_mut().unwrap().image = "x".repeat(600)), "spawn_config.executable.image"),
        (v1::ConnectRequest { user: "a\u{7}".into(), ..spawn(|_| {}) }, "user"),
        (
            v1::ConnectRequest {
                key: Some(v1::BackendKey { namespace: "docs".into(), name: "a/b".into(), tag: String::new() }),
                ..spawn(|_| {})
            },
            "key.name",
        ),
    ];
    for (request, field) in cases {
        names(backends.connect(request).await, field);
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn watch_backends_fields_are_each_checked() {
    let cluster = TestCluster::sqlite().await;
    let mut backends = BackendServiceClient::new(cluster.channel().await);
    let filter = |f: v1::BackendFilter| v1::WatchBackendsRequest { filter: Some(f), ..Default::default() };
    let bookmark = |interval| v1::WatchBackendsRequest { bookmark_interval: interval, ..Default::default() };
    let cases: Vec<(v1::WatchBackendsRequest, &str)> = vec![
        (filter(v1::BackendFilter { states: vec![5; 33], ..Default::default() }), "filter.states"),
        (filter(v1::BackendFilter { states: vec![1, 99], ..Default::default() }), "filter.states[1]"),
        (filter(v1::BackendFilter { drone_id: "d\n".into(), ..Default::default() }), "filter.drone_id"),
        (filter(v1::BackendFilter { key_namespace: "Docs".into(), ..Default::default() }), "filter.key_namespace"),
        (filter(v1::BackendFilter { cluster: "x".repeat(64), ..Default::default() }), "filter.cluster"),
        (filter(v1::BackendFilter { pool: "a_b".into(), ..Default::default() }), "filter.pool"),
        (
            filter(v1::BackendFilter { labels: [("zone".into(), "a\u{0}".into())].into(), ..Default::default() }),
            "filter.labels[\"zone\"]",
        ),
        (filter(v1::BackendFilter { key_prefix: "k".repeat(254), ..Default::default() }), "filter.key_prefix"),
        (filter(v1::BackendFilter { key_prefix: "a\u{1b}".into(), ..Default::default() }), "filter.key_prefix"),
        // Under the 100 ms floor, over the day's ceiling, malformed, overflowing.
        (bookmark(d(0, 50_000_000)), "bookmark_interval"),
        (bookmark(d(2 * 24 * 3600, 0)), "bookmark_interval"),
        (bookmark(d(1, -5)), "bookmark_interval"),
        (bookmark(d(i64::MAX, 0)), "bookmark_interval"),
        // A snapshot starts at its own revision: a resume point with it is a contradiction.
        (v1::WatchBackendsRequest { send_initial: true, start_revision: 5, ..Default::default() }, "start_revision"),
    ];
    for (request, field) in cases {
        names(backends.watch_backends(request).await, field);
    }
    // Each of them alone is fine: the same fields, valid, open a watch.
    let valid = v1::WatchBackendsRequest {
        filter: Some(v1::BackendFilter {
            states: vec![1, 2],
            key_namespace: "docs".into(),
            key_prefix: "a".into(),
            labels: [("zone".into(), "a".into())].into(),
            ..Default::default()
        }),
        send_initial: true,
        bookmark_interval: d(0, 100_000_000),
        ..Default::default()
    };
    backends.watch_backends(valid).await.expect("a valid watch opens");
    cluster.shutdown().await;
}

/// Attaches a drone, sends `message` on its stream, and returns how the stream ended.
async fn drone_sends(url: &str, message: v1::drone_attach_request::Message) -> Status {
    let mut drone = ManualDrone::attach(url, drone_hello("bad-sender")).await.expect("attach");
    drone.send(message).await;
    loop {
        match tokio::time::timeout(WAIT, drone.inbound.message()).await.expect("the stream ends in time") {
            Err(status) => return status,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without a status"),
        }
    }
}

#[tokio::test]
async fn a_drone_that_sends_a_bad_hello_or_message_is_refused_and_its_stream_closed() {
    use v1::drone_attach_request::Message;
    let cluster = TestCluster::sqlite().await;
    let url = cluster.url();
    for (hello, field) in [
        (v1::DroneHello { version: "v\n1".into(), ..drone_hello("d1") }, "hello.version"),
        (v1::DroneHello { runtime: "Docker Engine".into(), ..drone_hello("d1") }, "hello.runtime"),
        (v1::DroneHello { backend_capacity: 1_000_000, ..drone_hello("d1") }, "hello.backend_capacity"),
        (v1::DroneHello { cluster: "EU".into(), ..drone_hello("d1") }, "hello.cluster"),
        (v1::DroneHello { labels: [("k".into(), "v".repeat(300))].into(), ..drone_hello("d1") }, "hello.labels[\"k\"]"),
    ] {
        names(ManualDrone::attach(&url, hello).await.map(|d| d.node_id), field);
    }

    let event = |event_id: &str, backend_id: &str, address: &str| {
        Message::BackendEvent(v1::DroneBackendEvent {
            event_id: event_id.into(),
            backend_id: backend_id.into(),
            status: Some(hangar_tests::status(v1::BackendState::Ready)),
            address: address.into(),
        })
    };
    for (message, field) in [
        (event("", "bk-1", ""), "backend_event.event_id"),
        (event("ev-1", &"b".repeat(200), ""), "backend_event.backend_id"),
        (event("ev-1", "bk-1", "not an address"), "backend_event.address"),
        (Message::AckAction(v1::AckAction { action_id: String::new() }), "ack_action.action_id"),
        (Message::RenewKey(v1::RenewKey { backend_id: "bk-1".into(), key: None, fencing_token: 1 }), "renew_key.key"),
        (
            Message::RenewKeys(v1::RenewKeys {
                keys: vec![
                    v1::RenewKey {
                        backend_id: "bk-1".into(),
                        key: Some(v1::BackendKey { namespace: "docs".into(), name: "a".into(), tag: String::new() }),
                        fencing_token: 1,
                    },
                    v1::RenewKey { backend_id: "bk-2".into(), key: None, fencing_token: 1 },
                ],
            }),
            "renew_keys.keys[1].key",
        ),
    ] {
        names(Err::<(), _>(drone_sends(&url, message).await), field);
    }
    // The controller serves on: a good drone attaches.
    ManualDrone::attach(&url, drone_hello("good")).await.expect("a good drone attaches");
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_proxy_that_sends_a_bad_hello_or_report_is_refused_and_its_stream_closed() {
    use v1::proxy_attach_request::Message;
    let cluster = TestCluster::sqlite().await;
    let attach = async |messages: Vec<Message>| -> Status {
        let mut client = ProxyServiceClient::new(cluster.channel().await);
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        for message in messages {
            tx.send(v1::ProxyAttachRequest { message: Some(message) }).await.unwrap();
        }
        let mut inbound = match client.attach(ReceiverStream::new(rx)).await {
            Err(status) => return status,
            Ok(response) => response.into_inner(),
        };
        loop {
            match tokio::time::timeout(WAIT, inbound.message()).await.expect("the stream ends in time") {
                Err(status) => return status,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without a status"),
            }
        }
    };
    let hello = |public_url: &str, version: &str| {
        Message::Hello(v1::ProxyHello {
            name: "edge".into(),
            public_url: public_url.into(),
            version: version.into(),
            ..Default::default()
        })
    };
    names(Err::<(), _>(attach(vec![hello("ftp://edge", "1")]).await), "hello.public_url");
    names(Err::<(), _>(attach(vec![hello("http://edge", &"v".repeat(200))]).await), "hello.version");
    let report = Message::Traffic(v1::TrafficReport { backend_ids: vec!["bk-1".into(), String::new()] });
    names(Err::<(), _>(attach(vec![hello("http://edge:7080", "1"), report]).await), "traffic.backend_ids[1]");
    let mut proxies = ProxyServiceClient::new(cluster.channel().await);
    names(proxies.lookup_route(v1::LookupRouteRequest { token: String::new(), ..Default::default() }).await, "token");
    // A drone's stream is not a proxy's: the wrong first message is a protocol violation.
    let mut drones = DroneServiceClient::new(cluster.channel().await);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let heartbeat = v1::DroneHeartbeat { local_time: None, resources: None, backend_count: 0 };
    tx.send(v1::DroneAttachRequest { message: Some(v1::drone_attach_request::Message::Heartbeat(heartbeat)) })
        .await
        .unwrap();
    let refused = drones.attach(ReceiverStream::new(rx)).await.expect_err("no hello");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    cluster.shutdown().await;
}
