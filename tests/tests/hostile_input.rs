//! Property tests: random, malformed and oversized requests at every RPC of a real controller
//! (port 0, SQLite), and random message sequences on the drone and proxy links. Whatever comes
//! in, the answer is a refusal that says why or a real answer: INVALID_ARGUMENT,
//! FAILED_PRECONDITION, RESOURCE_EXHAUSTED (a message over the size limit among them),
//! PERMISSION_DENIED, NOT_FOUND for a well-formed request that names nothing, OUT_OF_RANGE only
//! for a compacted revision or an expired page token, UNAVAILABLE only with NO_DRONE_AVAILABLE —
//! or OK. Never INTERNAL or UNKNOWN, never a panic (which would surface as one), never a call
//! that hangs, and the controller stays healthy. Every RPC of `hangar.v1`, as its descriptor
//! lists them, is among those called.
//!
//! Case counts keep the whole file to well under a minute on two cores.

use hangar::error::{error_info, reason};
use hangar::v1::{
    self, backend_service_client::BackendServiceClient, drone_service_client::DroneServiceClient,
    node_service_client::NodeServiceClient, proxy_service_client::ProxyServiceClient,
};
use hangar_server::controller::ControllerConfig;
use hangar_server::limits::LimitsConfig;
use hangar_tests::{ManualDrone, TestCluster, drone_hello, test_config};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// A call that takes longer than this has hung.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const CASES: u32 = 128;

// --- What may come back -------------------------------------------------------------------

/// Whether `status` is a refusal a client can act on (or OK).
fn acceptable(status: &Status) -> bool {
    let reason = error_info(status).map(|(reason, _)| reason).unwrap_or_default();
    match status.code() {
        Code::Ok
        // A field that breaks a rule.
        | Code::InvalidArgument
        // A request that contradicts the state it finds (draining a node twice, a message the
        // protocol does not allow there).
        | Code::FailedPrecondition
        // A message over the size limit (`OversizedRequestLayer`), or a limit of the controller.
        | Code::ResourceExhausted
        // A node name the caller may not attach as.
        | Code::PermissionDenied
        // A well-formed id or token that names nothing: random ids mostly do.
        | Code::NotFound => true,
        // A resume point before the retained history, or a page token that outlived it: the
        // client lists again. Nothing else: a client that read OUT_OF_RANGE for any other
        // reason would list again for nothing.
        Code::OutOfRange => reason == reason::REVISION_COMPACTED || reason == reason::PAGE_TOKEN_EXPIRED,
        // A well-formed Connect for a cluster or pool without drones.
        Code::Unavailable => reason == reason::NO_DRONE_AVAILABLE,
        _ => false,
    }
}

/// On a node's link the controller may also end the stream for a liveness reason.
fn acceptable_on_a_link(status: &Status) -> bool {
    let reason = error_info(status).map(|(reason, _)| reason).unwrap_or_default();
    acceptable(status)
        || (status.code() == Code::Unavailable
            && [reason::STREAM_REPLACED, reason::HEARTBEAT_TIMEOUT].contains(&reason.as_str()))
}

fn judge(rpc: &str, outcome: Result<Result<(), Status>, tokio::time::error::Elapsed>) -> Result<(), TestCaseError> {
    match outcome {
        Err(_) => Err(TestCaseError::fail(format!("{rpc}: no answer within {CALL_TIMEOUT:?}"))),
        Ok(Ok(())) => Ok(()),
        Ok(Err(status)) if acceptable(&status) => Ok(()),
        Ok(Err(status)) => Err(TestCaseError::fail(format!("{rpc}: {status:?}"))),
    }
}

// --- What may go in -----------------------------------------------------------------------
//
// Every field is mostly valid and sometimes hostile, so that most requests get past some
// checks and reach the code behind them with one or two bad values, rather than all being
// refused at the first field.

/// Text that is usually a valid name and sometimes anything: arbitrary Unicode, long printable
/// ASCII, control characters, tens of kilobytes, nothing.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => "[a-z][a-z0-9-]{0,10}[a-z0-9]",
        2 => Just(String::new()),
        2 => any::<String>(),
        1 => "[ -~]{0,300}",
        1 => "[\\x00-\\x1f]{1,5}",
        1 => (0usize..70_000).prop_map(|n| "x".repeat(n)),
    ]
}

fn id() -> impl Strategy<Value = String> {
    prop_oneof![4 => "(bk|nd|act|ev)-[0-9a-f]{1,32}", 1 => text()]
}

fn map() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop_oneof![
        6 => prop::collection::btree_map("[a-z]{1,8}", "[a-z0-9]{0,8}", 0..4),
        1 => prop::collection::btree_map(text(), text(), 0..80),
    ]
}

fn duration() -> impl Strategy<Value = Option<prost_types::Duration>> {
    let d = |seconds, nanos| Some(prost_types::Duration { seconds, nanos });
    prop_oneof![
        4 => Just(None),
        4 => (0i64..100_000, 0i32..1_000_000_000).prop_map(move |(seconds, nanos)| d(seconds, nanos)),
        1 => prop::sample::select(vec![
            d(i64::MAX, 0),
            d(i64::MAX, 999_999_999),
            d(u32::MAX as i64 * 1000, 0),
            d(-1, 0),
            d(0, -1),
            d(1, 1_000_000_000),
            d(0, 1),
        ]),
        1 => (any::<i64>(), any::<i32>()).prop_map(move |(seconds, nanos)| d(seconds, nanos)),
    ]
}

fn enum_value() -> impl Strategy<Value = i32> {
    prop_oneof![8 => 1i32..5, 1 => 0i32..10, 1 => any::<i32>()]
}

fn enums() -> impl Strategy<Value = Vec<i32>> {
    prop_oneof![8 => prop::collection::vec(enum_value(), 0..3), 1 => prop::collection::vec(enum_value(), 0..40)]
}

fn page_size() -> impl Strategy<Value = i32> {
    prop_oneof![8 => 0i32..1001, 1 => any::<i32>()]
}

fn rare_text() -> impl Strategy<Value = String> {
    prop_oneof![6 => Just(String::new()), 1 => text()]
}

fn node_filter() -> impl Strategy<Value = Option<v1::NodeFilter>> {
    let filter = (enums(), enums(), rare_text(), rare_text(), map())
        .prop_map(|(kinds, states, cluster, pool, labels)| v1::NodeFilter { kinds, states, cluster, pool, labels });
    prop::option::of(filter)
}

fn backend_key() -> impl Strategy<Value = Option<v1::BackendKey>> {
    prop::option::of((text(), text(), rare_text()).prop_map(|(namespace, name, tag)| v1::BackendKey {
        namespace,
        name,
        tag,
    }))
}

fn executable() -> impl Strategy<Value = v1::Executable> {
    let image = prop_oneof![6 => Just("app:1".to_string()), 2 => Just("/usr/bin/backend".to_string()), 1 => text()];
    let argv = || prop_oneof![4 => Just(Vec::new()), 1 => prop::collection::vec(text(), 0..6)];
    let env = || prop_oneof![2 => map(), 1 => map().prop_map(|m| m.into_iter().map(|(k, v)| (k.to_uppercase(), v)).collect())];
    let resources = prop::option::of(
        (0u64..2_000, prop_oneof![Just(0u64), Just(64u64 << 20), any::<u64>()], 0u64..1000)
            .prop_map(|(cpu_millis, memory_bytes, pids)| v1::ResourceLimits { cpu_millis, memory_bytes, pids }),
    );
    let port = prop_oneof![4 => Just(0u32), 1 => any::<u32>()];
    (image, argv(), argv(), env(), prop_oneof![4 => Just(0), 1 => enum_value()], port, resources).prop_map(
        |(image, command, args, env, pull_policy, container_port, resources)| v1::Executable {
            image,
            command,
            args,
            env,
            pull_policy,
            container_port,
            resources,
        },
    )
}

fn spawn_config() -> impl Strategy<Value = Option<v1::SpawnConfig>> {
    let static_token = prop_oneof![4 => Just(String::new()), 2 => "[A-Za-z0-9_-]{16,40}", 1 => text()];
    prop::option::of(
        (
            prop::option::weighted(0.9, executable()),
            rare_text(),
            rare_text(),
            map(),
            duration(),
            duration(),
            static_token,
        )
            .prop_map(|(executable, cluster, pool, labels, lifetime_limit, max_idle, static_token)| {
                v1::SpawnConfig { executable, cluster, pool, labels, lifetime_limit, max_idle, static_token }
            }),
    )
}

/// One call of any unary or streaming RPC of the controller's public services.
#[derive(Debug, Clone)]
enum Call {
    ListNodes(v1::ListNodesRequest),
    GetNode(v1::GetNodeRequest),
    DrainNode(v1::DrainNodeRequest),
    UndrainNode(v1::UndrainNodeRequest),
    WatchNodes(v1::WatchNodesRequest),
    Connect(Box<v1::ConnectRequest>),
    GetBackend(v1::GetBackendRequest),
    ListBackends(v1::ListBackendsRequest),
    WatchBackend(v1::WatchBackendRequest),
    WatchBackends(v1::WatchBackendsRequest),
    TerminateBackend(v1::TerminateBackendRequest),
    LookupRoute(v1::LookupRouteRequest),
}

impl Call {
    /// The RPC this call makes (`package.Service/Method`, as in the descriptor).
    fn method(&self) -> &'static str {
        match self {
            Call::ListNodes(_) => "hangar.v1.NodeService/ListNodes",
            Call::GetNode(_) => "hangar.v1.NodeService/GetNode",
            Call::DrainNode(_) => "hangar.v1.NodeService/DrainNode",
            Call::UndrainNode(_) => "hangar.v1.NodeService/UndrainNode",
            Call::WatchNodes(_) => "hangar.v1.NodeService/WatchNodes",
            Call::Connect(_) => "hangar.v1.BackendService/Connect",
            Call::GetBackend(_) => "hangar.v1.BackendService/GetBackend",
            Call::ListBackends(_) => "hangar.v1.BackendService/ListBackends",
            Call::WatchBackend(_) => "hangar.v1.BackendService/WatchBackend",
            Call::WatchBackends(_) => "hangar.v1.BackendService/WatchBackends",
            Call::TerminateBackend(_) => "hangar.v1.BackendService/TerminateBackend",
            Call::LookupRoute(_) => "hangar.v1.ProxyService/LookupRoute",
        }
    }
}

/// The node links, which `random_message_sequences_on_the_drone_and_proxy_links_end_cleanly`
/// and the oversized hellos call rather than [`Call`].
const LINKS: [&str; 2] = ["hangar.v1.DroneService/Attach", "hangar.v1.ProxyService/Attach"];

/// Every RPC of `hangar.v1`, from its descriptor: what the controller serves and callers reach.
fn every_rpc() -> BTreeSet<String> {
    use prost::Message;
    let set = prost_types::FileDescriptorSet::decode(v1::FILE_DESCRIPTOR_SET).expect("hangar.v1's descriptor");
    let mut rpcs = BTreeSet::new();
    for file in set.file.iter().filter(|file| file.package() == "hangar.v1") {
        for service in &file.service {
            for method in &service.method {
                rpcs.insert(format!("hangar.v1.{}/{}", service.name(), method.name()));
            }
        }
    }
    rpcs
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        (node_filter(), page_size(), rare_text()).prop_map(|(filter, page_size, page_token)| Call::ListNodes(
            v1::ListNodesRequest { filter, page_size, page_token }
        )),
        id().prop_map(|id| Call::GetNode(v1::GetNodeRequest { id })),
        (id(), duration()).prop_map(|(id, deadline)| Call::DrainNode(v1::DrainNodeRequest { id, deadline })),
        id().prop_map(|id| Call::UndrainNode(v1::UndrainNodeRequest { id })),
        (node_filter(), prop_oneof![6 => Just(0u64), 1 => 0u64..20, 1 => any::<u64>()], any::<bool>(), duration())
            .prop_map(|(filter, start_revision, send_initial, bookmark_interval)| {
                Call::WatchNodes(v1::WatchNodesRequest { filter, start_revision, send_initial, bookmark_interval })
            }),
        (backend_key(), spawn_config(), rare_text(), map()).prop_map(|(key, spawn_config, user, auth)| Call::Connect(
            Box::new(v1::ConnectRequest { key, spawn_config, user, auth })
        )),
        id().prop_map(|id| Call::GetBackend(v1::GetBackendRequest { id })),
        (
            prop::option::of(
                (enums(), prop_oneof![3 => Just(String::new()), 1 => id()], rare_text(), rare_text()).prop_map(
                    |(states, drone_id, key_namespace, cluster)| {
                        v1::BackendFilter { states, drone_id, key_namespace, cluster, ..Default::default() }
                    }
                )
            ),
            page_size(),
            rare_text()
        )
            .prop_map(|(filter, page_size, page_token)| Call::ListBackends(v1::ListBackendsRequest {
                filter,
                page_size,
                page_token
            })),
        id().prop_map(|id| Call::WatchBackend(v1::WatchBackendRequest { id })),
        (
            prop::option::of((enums(), rare_text(), rare_text(), map()).prop_map(
                |(states, key_namespace, key_prefix, labels)| {
                    v1::BackendFilter { states, key_namespace, key_prefix, labels, ..Default::default() }
                }
            )),
            prop_oneof![6 => Just(0u64), 1 => 0u64..20, 1 => any::<u64>()],
            any::<bool>(),
            duration()
        )
            .prop_map(|(filter, start_revision, send_initial, bookmark_interval)| {
                Call::WatchBackends(v1::WatchBackendsRequest {
                    filter,
                    start_revision,
                    send_initial,
                    bookmark_interval,
                })
            }),
        (id(), any::<bool>()).prop_map(|(id, hard)| Call::TerminateBackend(v1::TerminateBackendRequest { id, hard })),
        text().prop_map(|token| Call::LookupRoute(v1::LookupRouteRequest { token, ..Default::default() })),
    ]
}

// --- Running them -------------------------------------------------------------------------

/// A controller with per-caller limits off (they would answer most of these calls before
/// validation does), and a drone with room for every backend a valid Connect starts.
struct Target {
    cluster: TestCluster,
    channel: Channel,
    _drone: ManualDrone,
    _heartbeats: tokio::task::JoinHandle<()>,
}

impl Target {
    async fn start() -> Target {
        let limits = LimitsConfig::default().per_caller_off();
        let cluster = TestCluster::sqlite_with(ControllerConfig { limits, ..test_config() }).await;
        let drone = ManualDrone::attach(
            &cluster.url(),
            v1::DroneHello { backend_capacity: 100_000, ..drone_hello("capacity") },
        )
        .await
        .expect("the capacity drone attaches");
        let heartbeats = drone.keep_alive(Duration::from_millis(100));
        let channel = cluster.channel().await;
        Target { cluster, channel, _drone: drone, _heartbeats: heartbeats }
    }

    /// Makes `call`; a stream counts as answered once it delivered its first message or ended.
    async fn call(&self, call: Call) -> Result<(), Status> {
        let mut nodes = NodeServiceClient::new(self.channel.clone());
        let mut backends = BackendServiceClient::new(self.channel.clone());
        let mut proxies = ProxyServiceClient::new(self.channel.clone());
        match call {
            Call::ListNodes(r) => nodes.list_nodes(r).await.map(drop),
            Call::GetNode(r) => nodes.get_node(r).await.map(drop),
            Call::DrainNode(r) => nodes.drain_node(r).await.map(drop),
            Call::UndrainNode(r) => nodes.undrain_node(r).await.map(drop),
            Call::WatchNodes(r) => first_of(nodes.watch_nodes(r).await?.into_inner()).await,
            Call::Connect(r) => backends.connect(*r).await.map(drop),
            Call::GetBackend(r) => backends.get_backend(r).await.map(drop),
            Call::ListBackends(r) => backends.list_backends(r).await.map(drop),
            Call::WatchBackend(r) => first_of(backends.watch_backend(r).await?.into_inner()).await,
            Call::WatchBackends(r) => first_of(backends.watch_backends(r).await?.into_inner()).await,
            Call::TerminateBackend(r) => backends.terminate_backend(r).await.map(drop),
            Call::LookupRoute(r) => proxies.lookup_route(r).await.map(drop),
        }
    }

    /// The names of the nodes registered so far.
    async fn node_names(&self) -> BTreeSet<String> {
        let mut nodes = NodeServiceClient::new(self.channel.clone());
        let listed = nodes.list_nodes(v1::ListNodesRequest::default()).await.expect("ListNodes").into_inner();
        listed.nodes.into_iter().map(|node| node.name).collect()
    }

    /// The controller still answers health checks and listings.
    async fn healthy(&self) {
        let mut health = tonic_health::pb::health_client::HealthClient::new(self.channel.clone());
        let request = tonic_health::pb::HealthCheckRequest { service: "hangar.v1.NodeService".into() };
        let status = tokio::time::timeout(CALL_TIMEOUT, health.check(request)).await.expect("health answers");
        assert_eq!(status.expect("health OK").into_inner().status, 1, "SERVING");
        let mut nodes = NodeServiceClient::new(self.channel.clone());
        nodes.list_nodes(v1::ListNodesRequest::default()).await.expect("ListNodes after the storm");
    }
}

/// The first message of a stream (or its end); an open, quiet stream is answered too: it
/// returned its headers, and watches may rightly wait for a change.
async fn first_of<T>(mut stream: tonic::Streaming<T>) -> Result<(), Status> {
    match tokio::time::timeout(Duration::from_millis(200), stream.message()).await {
        Err(_) => Ok(()),
        Ok(result) => result.map(drop),
    }
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        // A failure is reported with its input; no regression file is written into the tree.
        failure_persistence: None,
        max_shrink_iters: 64,
        ..Config::default()
    })
}

#[test]
fn random_requests_at_every_rpc_get_a_reasoned_answer_in_time() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let target = rt.block_on(Target::start());
    let mut runner = runner(CASES * 10);
    let result = runner.run(&call(), |call| {
        let rpc = format!("{call:?}").split('(').next().unwrap_or_default().to_string();
        judge(&rpc, rt.block_on(async { tokio::time::timeout(CALL_TIMEOUT, target.call(call)).await }))
    });
    rt.block_on(target.healthy());
    if let Err(failure) = result {
        panic!("{failure}");
    }
    rt.block_on(target.cluster.shutdown());
}

/// A new RPC cannot be left out: the random calls reach every RPC the descriptor lists, the links
/// aside (their own property test below), and nothing the descriptor does not list.
#[test]
fn the_random_calls_and_the_links_cover_every_rpc_of_hangar_v1() {
    let mut runner = TestRunner::deterministic();
    let strategy = call();
    let mut called: BTreeSet<String> =
        (0..2000).map(|_| strategy.new_tree(&mut runner).expect("a call").current().method().to_string()).collect();
    called.extend(LINKS.map(String::from));
    assert_eq!(called, every_rpc(), "the calls of call() and LINKS against the descriptor of hangar.v1");
}

#[test]
fn a_request_over_the_message_limit_is_refused_at_every_rpc() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let target = rt.block_on(Target::start());
    let huge = "x".repeat(5 << 20);
    let calls = [
        Call::ListNodes(v1::ListNodesRequest { page_token: huge.clone(), ..Default::default() }),
        Call::GetNode(v1::GetNodeRequest { id: huge.clone() }),
        Call::DrainNode(v1::DrainNodeRequest { id: huge.clone(), deadline: None }),
        Call::UndrainNode(v1::UndrainNodeRequest { id: huge.clone() }),
        Call::WatchNodes(v1::WatchNodesRequest {
            filter: Some(v1::NodeFilter { cluster: huge.clone(), ..Default::default() }),
            ..Default::default()
        }),
        Call::Connect(Box::new(v1::ConnectRequest { user: huge.clone(), ..Default::default() })),
        Call::GetBackend(v1::GetBackendRequest { id: huge.clone() }),
        Call::ListBackends(v1::ListBackendsRequest { page_token: huge.clone(), ..Default::default() }),
        Call::WatchBackend(v1::WatchBackendRequest { id: huge.clone() }),
        Call::WatchBackends(v1::WatchBackendsRequest {
            filter: Some(v1::BackendFilter { key_prefix: huge.clone(), ..Default::default() }),
            ..Default::default()
        }),
        Call::TerminateBackend(v1::TerminateBackendRequest { id: huge.clone(), hard: true }),
        Call::LookupRoute(v1::LookupRouteRequest { token: huge.clone(), ..Default::default() }),
    ];
    let mut refused: BTreeSet<String> = BTreeSet::new();
    for call in calls {
        let rpc = call.method();
        let status = rt
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, target.call(call)).await })
            .expect(rpc)
            .expect_err(rpc);
        // gRPC's code for it, where tonic alone would say OUT_OF_RANGE; the message says why.
        assert_eq!(status.code(), Code::ResourceExhausted, "{rpc}: {status:?}");
        assert!(status.message().contains("message length too large"), "{rpc}: {status:?}");
        refused.insert(rpc.to_string());
    }

    // The links: a hello over the limit is refused before any node is registered, and the
    // controller ends the stream although the node keeps its sending half open.
    let nodes_before = rt.block_on(target.node_names());
    let drone_first = v1::DroneAttachRequest {
        message: Some(v1::drone_attach_request::Message::Hello(v1::DroneHello {
            labels: [("blob".to_string(), huge.clone())].into(),
            ..drone_hello("oversized")
        })),
    };
    let proxy_first = v1::ProxyAttachRequest {
        message: Some(v1::proxy_attach_request::Message::Hello(v1::ProxyHello {
            name: "oversized".into(),
            version: "test".into(),
            public_url: huge.clone(),
            ..Default::default()
        })),
    };
    let drones = DroneServiceClient::new(target.channel.clone());
    let proxies = ProxyServiceClient::new(target.channel.clone());
    let ends = [
        (LINKS[0], rt.block_on(first_message_refused(|s| async move { drones.clone().attach(s).await }, drone_first))),
        (LINKS[1], rt.block_on(first_message_refused(|s| async move { proxies.clone().attach(s).await }, proxy_first))),
    ];
    for (rpc, status) in ends {
        // The handler reads its stream itself: the oversized message is where its hello should
        // have been, a protocol violation that says why.
        assert_eq!(status.code(), Code::FailedPrecondition, "{rpc}: {status:?}");
        assert_eq!(error_info(&status).map(|(reason, _)| reason).as_deref(), Some(reason::PROTOCOL_VIOLATION));
        assert!(status.message().contains("message length too large"), "{rpc}: {status:?}");
        refused.insert(rpc.to_string());
    }
    assert_eq!(rt.block_on(target.node_names()), nodes_before, "a refused hello registered a node");
    assert_eq!(refused, every_rpc(), "every RPC of hangar.v1 was sent a message over the limit");
    rt.block_on(target.healthy());
    rt.block_on(target.cluster.shutdown());
}

/// Opens a link with `first` as its first message, keeps its sending half open, and returns the
/// status the controller ended the stream with; fails if it ends without one, answers, or takes
/// longer than [`CALL_TIMEOUT`].
async fn first_message_refused<Req, Resp, F, Fut>(open: F, first: Req) -> Status
where
    Req: Send + 'static,
    Resp: std::fmt::Debug,
    F: FnOnce(ReceiverStream<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<tonic::Streaming<Resp>>, Status>>,
{
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(first).await.expect("room for the first message");
    let ended = tokio::time::timeout(CALL_TIMEOUT, async {
        let mut inbound = match open(ReceiverStream::new(rx)).await {
            Ok(response) => response.into_inner(),
            Err(status) => return status,
        };
        match inbound.message().await {
            Err(status) => status,
            answered => panic!("the controller answered an oversized first message: {answered:?}"),
        }
    })
    .await
    .expect("the controller ends the stream in time");
    drop(tx);
    ended
}

// --- The links -----------------------------------------------------------------------------

fn drone_message() -> impl Strategy<Value = v1::DroneAttachRequest> {
    use v1::drone_attach_request::Message;
    let hello =
        (prop_oneof![2 => "fz-[a-z0-9]{1,6}", 1 => text()], text(), text(), text(), map(), any::<u32>(), text())
            .prop_map(|(name, cluster, pool, version, labels, backend_capacity, runtime)| {
                Message::Hello(v1::DroneHello {
                    name,
                    cluster,
                    pool,
                    version,
                    labels,
                    backend_capacity,
                    resources: None,
                    runtime,
                    lease_deferrals: backend_capacity % 2 == 0,
                })
            });
    let status = (enum_value(), enum_value(), enum_value(), prop::option::of(any::<i32>()), text()).prop_map(
        |(state, termination_kind, termination_reason, exit_code, message)| v1::BackendStatus {
            state,
            time: None,
            termination_kind,
            termination_reason,
            exit_code,
            message,
        },
    );
    let message = prop_oneof![
        2 => hello,
        2 => (any::<u32>(), any::<u64>()).prop_map(|(cores, used)| Message::Heartbeat(v1::DroneHeartbeat {
            local_time: None,
            resources: Some(v1::NodeResources { cpu_cores: cores, cpu_used_millis: used, ..Default::default() }),
            backend_count: cores,
        })),
        2 => (id(), id(), prop::option::of(status), text()).prop_map(|(event_id, backend_id, status, address)| {
            Message::BackendEvent(v1::DroneBackendEvent { event_id, backend_id, status, address })
        }),
        1 => id().prop_map(|action_id| Message::AckAction(v1::AckAction { action_id })),
        1 => (id(), backend_key(), any::<u64>())
            .prop_map(|(backend_id, key, fencing_token)| Message::RenewKey(v1::RenewKey { backend_id, key, fencing_token })),
        1 => prop::collection::vec((id(), backend_key(), any::<u64>()), 0..5).prop_map(|keys| {
            let keys = keys
                .into_iter()
                .map(|(backend_id, key, fencing_token)| v1::RenewKey { backend_id, key, fencing_token })
                .collect();
            Message::RenewKeys(v1::RenewKeys { keys })
        }),
    ];
    prop::option::weighted(0.95, message).prop_map(|message| v1::DroneAttachRequest { message })
}

fn proxy_message() -> impl Strategy<Value = v1::ProxyAttachRequest> {
    use v1::proxy_attach_request::Message;
    let message = prop_oneof![
        2 => (prop_oneof![2 => "fz-[a-z0-9]{1,6}", 1 => text()], text(), text(), map(), text()).prop_map(
            |(name, cluster, version, labels, public_url)| Message::Hello(v1::ProxyHello {
                name,
                cluster,
                version,
                labels,
                public_url,
                resources: None,
            })
        ),
        2 => Just(Message::Heartbeat(v1::ProxyHeartbeat { local_time: None, resources: None })),
        2 => prop::collection::vec(id(), 0..20).prop_map(|backend_ids| Message::Traffic(v1::TrafficReport { backend_ids })),
    ];
    prop::option::weighted(0.95, message).prop_map(|message| v1::ProxyAttachRequest { message })
}

/// Sends `messages` on a fresh stream, closes its sending half, and reads until the controller
/// ends the stream: it must, in time, and with an acceptable status.
async fn replay<Req, Resp, F, Fut>(open: F, messages: Vec<Req>) -> Result<(), TestCaseError>
where
    Req: Send + 'static,
    F: FnOnce(ReceiverStream<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<tonic::Streaming<Resp>>, Status>>,
{
    let (tx, rx) = tokio::sync::mpsc::channel(messages.len().max(1));
    for message in messages {
        tx.send(message).await.expect("room for every message");
    }
    drop(tx);
    let ended = tokio::time::timeout(CALL_TIMEOUT, async {
        let mut inbound = match open(ReceiverStream::new(rx)).await {
            Ok(response) => response.into_inner(),
            Err(status) => return Err(status),
        };
        loop {
            match inbound.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return Ok(()),
                Err(status) => return Err(status),
            }
        }
    })
    .await;
    match ended {
        Err(_) => Err(TestCaseError::fail(format!("the stream did not end within {CALL_TIMEOUT:?}"))),
        Ok(Ok(())) => Ok(()),
        Ok(Err(status)) if acceptable_on_a_link(&status) => Ok(()),
        Ok(Err(status)) => Err(TestCaseError::fail(format!("{status:?}"))),
    }
}

#[test]
fn random_message_sequences_on_the_drone_and_proxy_links_end_cleanly() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let target = rt.block_on(Target::start());
    use v1::drone_attach_request::Message as DroneMessage;
    let hello = ("fz-[a-z0-9]{1,6}", 1u32..100).prop_map(|(name, backend_capacity)| v1::DroneAttachRequest {
        message: Some(DroneMessage::Hello(v1::DroneHello { backend_capacity, ..drone_hello(&name) })),
    });
    let drone_sequences = (prop::option::weighted(0.8, hello), prop::collection::vec(drone_message(), 0..10))
        .prop_map(|(hello, rest)| hello.into_iter().chain(rest).collect::<Vec<_>>());
    let result = runner(CASES * 2).run(&drone_sequences, |messages| {
        let client = DroneServiceClient::new(target.channel.clone());
        rt.block_on(replay(|stream| async move { client.clone().attach(stream).await }, messages))
    });
    if let Err(failure) = result {
        panic!("drone link: {failure}");
    }
    use v1::proxy_attach_request::Message as ProxyMessage;
    let hello = "fz-[a-z0-9]{1,6}".prop_map(|name| v1::ProxyAttachRequest {
        message: Some(ProxyMessage::Hello(v1::ProxyHello { name, version: "test".into(), ..Default::default() })),
    });
    let proxy_sequences = (prop::option::weighted(0.8, hello), prop::collection::vec(proxy_message(), 0..10))
        .prop_map(|(hello, rest)| hello.into_iter().chain(rest).collect::<Vec<_>>());
    let result = runner(CASES * 2).run(&proxy_sequences, |messages| {
        let client = ProxyServiceClient::new(target.channel.clone());
        rt.block_on(replay(|stream| async move { client.clone().attach(stream).await }, messages))
    });
    if let Err(failure) = result {
        panic!("proxy link: {failure}");
    }
    rt.block_on(target.healthy());
    rt.block_on(target.cluster.shutdown());
}
