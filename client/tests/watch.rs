//! `watch_nodes` and `hangar nodes watch` against a fake `NodeService` over real tonic on port 0.
//!
//! The fake keeps a tiny event log the way the controller does (a snapshot at a base revision,
//! then numbered changes) and serves each WatchNodes call honestly from the request's
//! `start_revision` / `send_initial`. What goes wrong on each call is scripted: deliver so many
//! messages, then end with a status, close, or hang. So a client that resumes from the wrong
//! revision gets duplicates or a gap, and the tests see it.

mod support;

use futures::{Stream, StreamExt};
use hangar::domain::{Node, NodeFilter, NodeKind, NodeState, timestamp_to_proto};
use hangar::error::{invalid_argument, reason, status_with_reason};
use hangar::v1::{self, node_service_server::NodeService, node_service_server::NodeServiceServer};
use hangar_client::cli::{Cli, Command, NodesCommand, watch};
use hangar_client::{
    ClientError, ClientOptions, HangarClient, NodeStore, NodeWatchEvent, Reconnect, Resume, RetryPolicy, WatchOptions,
};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::FakeServer;
use tonic::service::Routes;
use tonic::{Code, Request, Response, Status};

/// Revision of the fake's snapshot; the log's changes follow it.
const BASE: u64 = 10;

/// What one WatchNodes call does.
#[derive(Clone)]
enum Call {
    /// Serve from the request, deliver at most `messages` messages, then end.
    Serve { messages: usize, then: End },
    /// Fail the call at once.
    Refuse(Status),
    /// Compact the log through `through` (folding those changes into the snapshot), then answer
    /// OUT_OF_RANGE as the controller does.
    CompactAndRefuse { through: u64 },
}

#[derive(Clone)]
enum End {
    Status(Status),
    /// The stream ends with OK status.
    Close,
    /// The stream stays open and quiet.
    Hang,
}

fn serve_all() -> Call {
    Call::Serve { messages: usize::MAX, then: End::Hang }
}

fn drop_after(messages: usize, status: Status) -> Call {
    Call::Serve { messages, then: End::Status(status) }
}

struct State {
    /// The snapshot at `base`.
    nodes: Vec<v1::Node>,
    base: u64,
    /// Changes after `base`, in revision order.
    log: Vec<v1::NodeEvent>,
    script: VecDeque<Call>,
    requests: Vec<v1::WatchNodesRequest>,
}

#[derive(Clone)]
struct FakeWatch(Arc<Mutex<State>>);

fn proto_node(id: &str, state: v1::NodeState, revision: u64) -> v1::Node {
    v1::Node {
        id: id.into(),
        name: format!("drone-{id}"),
        kind: v1::NodeKind::Drone as i32,
        cluster: "default".into(),
        pool: "default".into(),
        state: state as i32,
        version: "0.1.0".into(),
        registered_at: Some(timestamp_to_proto(chrono::Utc::now())),
        last_heartbeat_at: Some(timestamp_to_proto(chrono::Utc::now())),
        backend_capacity: 10,
        revision,
        ..Default::default()
    }
}

fn event(kind: v1::NodeEventType, node: Option<v1::Node>, revision: u64) -> v1::NodeEvent {
    v1::NodeEvent { r#type: kind as i32, node, revision }
}

impl FakeWatch {
    /// Two drones at revision 10, then `changes` changes (11, 12, …) alternating drone b between
    /// DRAINING and READY, except that revision 13 adds drone c and revision 15 removes drone a.
    fn new(changes: u64, script: Vec<Call>) -> Self {
        let nodes = vec![proto_node("a", v1::NodeState::Ready, 3), proto_node("b", v1::NodeState::Ready, 7)];
        let log = (BASE + 1..=BASE + changes)
            .map(|revision| match revision {
                13 => event(v1::NodeEventType::Added, Some(proto_node("c", v1::NodeState::Ready, 13)), 13),
                15 => event(v1::NodeEventType::Removed, Some(proto_node("a", v1::NodeState::Offline, 15)), 15),
                r => {
                    let state = if r % 2 == 1 { v1::NodeState::Draining } else { v1::NodeState::Ready };
                    event(v1::NodeEventType::Modified, Some(proto_node("b", state, r)), r)
                }
            })
            .collect();
        FakeWatch(Arc::new(Mutex::new(State { nodes, base: BASE, log, script: script.into(), requests: Vec::new() })))
    }

    fn requests(&self) -> Vec<v1::WatchNodesRequest> {
        self.0.lock().unwrap().requests.clone()
    }

    /// (send_initial, start_revision) of each call so far.
    fn starts(&self) -> Vec<(bool, u64)> {
        self.requests().iter().map(|r| (r.send_initial, r.start_revision)).collect()
    }
}

fn compact(state: &mut State, through: u64) {
    let (folded, kept): (Vec<_>, Vec<_>) = state.log.drain(..).partition(|e| e.revision <= through);
    for change in folded {
        let node = change.node.unwrap();
        state.nodes.retain(|n| n.id != node.id);
        if change.r#type != v1::NodeEventType::Removed as i32 {
            state.nodes.push(node);
        }
    }
    state.log = kept;
    state.base = through;
}

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::WatchNodesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl NodeService for FakeWatch {
    type WatchNodesStream = EventStream;

    async fn list_nodes(&self, _: Request<v1::ListNodesRequest>) -> Result<Response<v1::ListNodesResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn get_node(&self, _: Request<v1::GetNodeRequest>) -> Result<Response<v1::GetNodeResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn drain_node(&self, _: Request<v1::DrainNodeRequest>) -> Result<Response<v1::DrainNodeResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn undrain_node(
        &self,
        _: Request<v1::UndrainNodeRequest>,
    ) -> Result<Response<v1::UndrainNodeResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn watch_nodes(
        &self,
        request: Request<v1::WatchNodesRequest>,
    ) -> Result<Response<Self::WatchNodesStream>, Status> {
        let request = request.into_inner();
        let mut state = self.0.lock().unwrap();
        state.requests.push(request.clone());
        let (messages, then) = match state.script.pop_front().unwrap_or_else(serve_all) {
            Call::Serve { messages, then } => (messages, then),
            Call::Refuse(status) => return Err(status),
            Call::CompactAndRefuse { through } => {
                compact(&mut state, through);
                return Err(compacted(through + 1));
            }
        };
        let mut events = Vec::new();
        if request.send_initial {
            events.extend(state.nodes.iter().map(|n| event(v1::NodeEventType::Added, Some(n.clone()), n.revision)));
            events.push(event(v1::NodeEventType::SnapshotEnd, None, state.base));
        } else if request.start_revision < state.base {
            return Err(compacted(state.base + 1));
        }
        let after = if request.send_initial { state.base } else { request.start_revision };
        events.extend(state.log.iter().filter(|e| e.revision > after).cloned());
        if request.bookmark_interval.is_some() {
            let head = state.log.last().map_or(state.base, |e| e.revision);
            events.push(event(v1::NodeEventType::Bookmark, None, head));
        }
        let delivered = events.into_iter().take(messages).map(|e| Ok(v1::WatchNodesResponse::new(e)));
        let delivered = futures::stream::iter(delivered.collect::<Vec<_>>());
        let stream: EventStream = match then {
            End::Status(status) => Box::pin(delivered.chain(futures::stream::once(async { Err(status) }))),
            End::Close => Box::pin(delivered),
            End::Hang => Box::pin(delivered.chain(futures::stream::pending())),
        };
        Ok(Response::new(stream))
    }
}

fn compacted(oldest: u64) -> Status {
    status_with_reason(
        Code::OutOfRange,
        "revision compacted",
        reason::REVISION_COMPACTED,
        &[("oldest_revision", oldest.to_string())],
    )
}

fn shutting_down() -> Status {
    status_with_reason(Code::Unavailable, "controller shutting down", reason::SHUTTING_DOWN, &[])
}

/// The fake behind a [`FakeServer`].
struct FakeController {
    server: FakeServer,
    fake: FakeWatch,
}

impl FakeController {
    async fn start(fake: FakeWatch) -> Self {
        let server = FakeServer::start(Routes::new(NodeServiceServer::new(fake.clone()))).await;
        FakeController { server, fake }
    }

    async fn client(&self) -> HangarClient {
        HangarClient::connect(&self.server.url).await.unwrap()
    }
}

fn fast_options() -> WatchOptions {
    WatchOptions {
        retry: RetryPolicy {
            max_attempts: u32::MAX,
            initial_backoff: Duration::from_millis(2),
            max_backoff: Duration::from_millis(10),
        },
        ..WatchOptions::default()
    }
}

/// The first `n` items of a watch, failing the test if they take more than a few seconds.
async fn take(
    watch: impl Stream<Item = Result<NodeWatchEvent, ClientError>>,
    n: usize,
) -> Vec<Result<NodeWatchEvent, ClientError>> {
    tokio::time::timeout(Duration::from_secs(10), watch.take(n).collect::<Vec<_>>())
        .await
        .expect("the watch delivers in time")
}

fn ok_events(items: Vec<Result<NodeWatchEvent, ClientError>>) -> Vec<NodeWatchEvent> {
    items.into_iter().map(|item| item.expect("no error item")).collect()
}

/// Events without the reconnect notices, in a short form that shows order: `Init`, `+a`
/// (snapshot node), `Done@10`, `ADDED c@13`, `MODIFIED b@11`, `REMOVED a@15`, `Bookmark@20`.
fn brief(events: &[NodeWatchEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|event| {
            Some(match event {
                NodeWatchEvent::Init => "Init".to_string(),
                NodeWatchEvent::InitApply(node) => format!("+{}", node.id),
                NodeWatchEvent::InitDone { revision } => format!("Done@{revision}"),
                NodeWatchEvent::Added(node, revision) => format!("ADDED {}@{revision}", node.id),
                NodeWatchEvent::Modified(node, revision) => format!("MODIFIED {}@{revision}", node.id),
                NodeWatchEvent::Removed(node, revision) => format!("REMOVED {}@{revision}", node.id),
                NodeWatchEvent::Bookmark(revision) => format!("Bookmark@{revision}"),
                NodeWatchEvent::Reconnecting(_) => return None,
            })
        })
        .collect()
}

fn reconnects(events: &[NodeWatchEvent]) -> Vec<&Reconnect> {
    events
        .iter()
        .filter_map(|event| match event {
            NodeWatchEvent::Reconnecting(reconnect) => Some(reconnect),
            _ => None,
        })
        .collect()
}

/// Revisions of the live changes, in the order received.
fn live_revisions(events: &[NodeWatchEvent]) -> Vec<u64> {
    events
        .iter()
        .filter(|e| matches!(e, NodeWatchEvent::Added(..) | NodeWatchEvent::Modified(..) | NodeWatchEvent::Removed(..)))
        .filter_map(NodeWatchEvent::revision)
        .collect()
}

#[tokio::test]
async fn watch_starts_with_the_snapshot_then_live_events() {
    let controller = FakeController::start(FakeWatch::new(5, vec![])).await;
    let filter = NodeFilter { kinds: vec![NodeKind::Drone], ..NodeFilter::default() };
    let watch = controller.client().await.watch_nodes(filter.clone(), fast_options());

    let events = ok_events(take(watch, 9).await);

    assert_eq!(
        brief(&events),
        [
            "Init",
            "+a",
            "+b",
            "Done@10",
            "MODIFIED b@11",
            "MODIFIED b@12",
            "ADDED c@13",
            "MODIFIED b@14",
            "REMOVED a@15"
        ]
    );
    let request = &controller.fake.requests()[0];
    assert!(request.send_initial, "one call lists and watches");
    assert_eq!(request.start_revision, 0);
    assert_eq!(request.filter.as_ref(), Some(&filter.to_proto()), "the filter is applied by the server");
    assert_eq!(request.bookmark_interval, None);
    let NodeWatchEvent::Modified(node, _) = &events[4] else { unreachable!() };
    assert_eq!(node.state, NodeState::Draining, "events carry typed domain nodes");

    let mut store = NodeStore::default();
    events.iter().for_each(|e| store.apply(e));
    assert_eq!(store.nodes().keys().collect::<Vec<_>>(), ["b", "c"]);
    assert_eq!(store.revision(), Some(15));
}

#[tokio::test]
async fn watch_resumes_from_last_revision_after_stream_drop() {
    // Snapshot (2 nodes + SNAPSHOT_END) and two changes, then the controller shuts the stream;
    // then two more changes and a reset connection; then everything else.
    let script = vec![
        drop_after(5, shutting_down()),
        drop_after(2, Status::unknown("h2 protocol error: error reading a body from connection")),
        Call::Serve { messages: 3, then: End::Close },
    ];
    let controller = FakeController::start(FakeWatch::new(10, script)).await;
    let watch = controller.client().await.watch_nodes(NodeFilter::default(), fast_options());

    let events = ok_events(take(watch, 4 + 10 + 3).await);

    assert_eq!(controller.fake.starts(), [(true, 0), (false, 12), (false, 14), (false, 17)]);
    assert_eq!(live_revisions(&events), (11..=20).collect::<Vec<_>>(), "every change once, in order, no gap");
    assert_eq!(brief(&events).iter().filter(|e| *e == "Init").count(), 1, "resumed, not re-listed");
    let resumes: Vec<Resume> = reconnects(&events).iter().map(|r| r.resume).collect();
    assert_eq!(resumes, [Resume::FromRevision(12), Resume::FromRevision(14), Resume::FromRevision(17)]);
    assert!(reconnects(&events)[0].cause.contains("SHUTTING_DOWN"), "{:?}", reconnects(&events)[0]);
}

#[tokio::test]
async fn watch_relists_when_its_revision_was_compacted() {
    // Drops after the snapshot and change 11; by the time it comes back, 11..=14 are compacted.
    let script = vec![drop_after(4, shutting_down()), Call::CompactAndRefuse { through: 14 }];
    let controller = FakeController::start(FakeWatch::new(6, script)).await;
    let watch = controller.client().await.watch_nodes(NodeFilter::default(), fast_options());

    let events = ok_events(take(watch, 4 + 1 + 5 + 2 + 2).await);

    assert_eq!(controller.fake.starts(), [(true, 0), (false, 11), (true, 0)]);
    assert_eq!(
        brief(&events),
        [
            "Init",
            "+a",
            "+b",
            "Done@10",
            "MODIFIED b@11",
            "Init",
            "+a",
            "+c",
            "+b",
            "Done@14",
            "REMOVED a@15",
            "MODIFIED b@16"
        ]
    );
    let resumes: Vec<Resume> = reconnects(&events).iter().map(|r| r.resume).collect();
    assert_eq!(resumes, [Resume::FromRevision(11), Resume::Relist]);
    assert!(reconnects(&events)[1].cause.contains("oldest retained revision: 15"), "{:?}", reconnects(&events)[1]);

    let mut store = NodeStore::default();
    events.iter().for_each(|e| store.apply(e));
    assert_eq!(store.nodes().keys().collect::<Vec<_>>(), ["b", "c"], "the re-list replaced the old state");
    assert_eq!(store.get("b").unwrap().revision, 16);
}

#[tokio::test]
async fn watch_resumes_from_last_revision_after_being_cut_off_as_too_slow() {
    let too_slow = status_with_reason(
        Code::ResourceExhausted,
        "watcher too slow",
        reason::WATCH_TOO_SLOW,
        &[("last_revision", "13".to_string())],
    );
    let controller = FakeController::start(FakeWatch::new(5, vec![drop_after(6, too_slow)])).await;
    let watch = controller.client().await.watch_nodes(NodeFilter::default(), fast_options());

    let events = ok_events(take(watch, 4 + 5 + 1).await);

    assert_eq!(controller.fake.starts(), [(true, 0), (false, 13)]);
    assert_eq!(live_revisions(&events), [11, 12, 13, 14, 15]);
    assert!(reconnects(&events)[0].cause.contains("WATCH_TOO_SLOW"));
}

#[tokio::test]
async fn a_stream_dropped_inside_the_snapshot_starts_the_snapshot_over() {
    let controller = FakeController::start(FakeWatch::new(1, vec![drop_after(1, shutting_down())])).await;
    let watch = controller.client().await.watch_nodes(NodeFilter::default(), fast_options());

    let events = ok_events(take(watch, 2 + 1 + 4 + 1).await);

    assert_eq!(controller.fake.starts(), [(true, 0), (true, 0)], "no revision to resume from yet");
    assert_eq!(brief(&events), ["Init", "+a", "Init", "+a", "+b", "Done@10", "MODIFIED b@11"]);
    assert_eq!(reconnects(&events)[0].resume, Resume::Relist);
}

#[tokio::test]
async fn invalid_argument_ends_the_watch_with_the_error() {
    let bad_filter = invalid_argument(vec![("filter.kinds".into(), "unknown node kind 7".into())]);
    let controller = FakeController::start(FakeWatch::new(3, vec![Call::Refuse(bad_filter)])).await;
    let watch = controller.client().await.watch_nodes(NodeFilter::default(), fast_options());

    let items = take(watch, 5).await;

    assert_eq!(items.len(), 1, "the error is the last item");
    match &items[0] {
        Err(ClientError::InvalidArgument { violations, .. }) => {
            assert_eq!(violations, &[("filter.kinds".to_string(), "unknown node kind 7".to_string())]);
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    assert_eq!(controller.fake.requests().len(), 1, "not retried");
}

#[tokio::test]
async fn watch_gives_up_after_max_attempts_without_progress() {
    let script = vec![Call::Refuse(shutting_down()), Call::Refuse(shutting_down()), Call::Refuse(shutting_down())];
    let controller = FakeController::start(FakeWatch::new(3, script)).await;
    let mut options = fast_options();
    options.retry.max_attempts = 3;
    let watch = controller.client().await.watch_nodes(NodeFilter::default(), options);

    let items = take(watch, 10).await;

    assert_eq!(items.len(), 3, "two reconnect notices, then the error: {items:?}");
    assert!(matches!(items.last(), Some(Err(ClientError::Unavailable { .. }))), "{items:?}");
}

#[tokio::test]
async fn watch_moves_to_the_second_controller_when_the_first_is_down() {
    let second = FakeController::start(FakeWatch::new(2, vec![])).await;
    // Bind then drop a listener: nothing answers on that port.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let down = HangarClient::connect_lazy(&format!("127.0.0.1:{port}"), ClientOptions::default()).unwrap();
    let fallback = HangarClient::connect_lazy(&second.server.url, ClientOptions::default()).unwrap();
    let options = WatchOptions { fallbacks: vec![fallback], ..fast_options() };

    let events = ok_events(take(down.watch_nodes(NodeFilter::default(), options), 1 + 6).await);

    assert_eq!(brief(&events), ["Init", "+a", "+b", "Done@10", "MODIFIED b@11", "MODIFIED b@12"]);
    let reconnect = reconnects(&events)[0];
    assert_eq!((reconnect.resume, reconnect.controller.as_str()), (Resume::Relist, second.server.url.as_str()));
    assert!(reconnect.cause.starts_with("controller unavailable: tcp connect error"), "{reconnect:?}");
    assert_eq!(second.fake.starts(), [(true, 0)]);
}

#[tokio::test]
async fn a_client_of_two_controllers_watches_on_the_second_when_the_first_is_down() {
    let second = FakeController::start(FakeWatch::new(2, vec![])).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let both = format!("127.0.0.1:{port},{}", second.server.url);
    let client = HangarClient::connect_lazy(&both, ClientOptions::default()).unwrap();

    let events = ok_events(take(client.watch_nodes(NodeFilter::default(), fast_options()), 1 + 6).await);

    assert_eq!(brief(&events), ["Init", "+a", "+b", "Done@10", "MODIFIED b@11", "MODIFIED b@12"]);
    let reconnect = reconnects(&events)[0];
    assert_eq!((reconnect.resume, reconnect.controller.as_str()), (Resume::Relist, second.server.url.as_str()));
    assert_eq!(second.fake.starts(), [(true, 0)]);
}

#[tokio::test]
async fn watch_follows_a_controller_shutdown_to_the_other_controller_without_a_gap() {
    // Both controllers serve the same log, as two controllers on one database do.
    let first = FakeController::start(FakeWatch::new(8, vec![drop_after(6, shutting_down())])).await;
    let second = FakeController::start(FakeWatch::new(8, vec![])).await;
    let options = WatchOptions { fallbacks: vec![second.client().await], ..fast_options() };
    let watch = first.client().await.watch_nodes(NodeFilter::default(), options);

    let events = ok_events(take(watch, 4 + 8 + 1).await);

    assert_eq!(first.fake.starts(), [(true, 0)]);
    assert_eq!(second.fake.starts(), [(false, 13)]);
    assert_eq!(live_revisions(&events), (11..=18).collect::<Vec<_>>());
    assert_eq!(reconnects(&events)[0].controller, second.server.url);
}

#[tokio::test]
async fn bookmarks_are_asked_for_and_move_the_resume_revision() {
    // The filtered stream's last change is 12, but a bookmark says nothing matched up to 16.
    let script = vec![drop_after(2 + 1 + 2 + 1, shutting_down())];
    let controller = FakeController::start(FakeWatch::new(6, script)).await;
    let fake = controller.fake.clone();
    fake.0.lock().unwrap().log.retain(|e| e.revision <= 12);
    let options = WatchOptions { bookmark_interval: Some(Duration::from_secs(5)), ..fast_options() };
    let watch = controller.client().await.watch_nodes(NodeFilter::default(), options);
    fake.0.lock().unwrap().log.push(event(v1::NodeEventType::Bookmark, None, 16));

    let events = ok_events(take(watch, 7 + 1 + 1).await);

    // The second stream has nothing to replay after 16 and only bookmarks its position.
    assert_eq!(brief(&events)[4..], ["MODIFIED b@11", "MODIFIED b@12", "Bookmark@16", "Bookmark@16"]);
    assert_eq!(controller.fake.starts()[1], (false, 16));
    assert_eq!(controller.fake.requests()[0].bookmark_interval.as_ref().map(|d| d.seconds), Some(5));
}

// ---- the CLI ----

fn cli(args: &[&str]) -> Cli {
    use clap::Parser;
    Cli::try_parse_from(std::iter::once("hangar").chain(args.iter().copied())).unwrap()
}

/// Runs `hangar … nodes watch …` until stdout has `lines` lines (standing in for Ctrl-C), then
/// returns stdout and stderr.
async fn run_watch(args: &[&str], lines: usize) -> (Result<(), String>, String, String) {
    let command = cli(args);
    let Command::Nodes(NodesCommand::Watch(watch_args)) = &command.command else { panic!("not a watch") };
    let stdout = SharedBuffer::default();
    let stop = {
        let mut written = stdout.0.subscribe();
        async move {
            let _ = written.wait_for(|bytes| bytes.iter().filter(|b| **b == b'\n').count() >= lines).await;
        }
    };
    let mut stderr = Vec::new();
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        watch(&command, watch_args, &mut stdout.clone(), &mut stderr, stop),
    )
    .await
    .expect("the watch prints in time");
    (result.map_err(|e| e.to_string()), stdout.text(), String::from_utf8(stderr).unwrap())
}

/// The watch's stdout; every write wakes whoever waits for the output to grow.
#[derive(Clone, Default)]
struct SharedBuffer(tokio::sync::watch::Sender<Vec<u8>>);

impl SharedBuffer {
    fn text(&self) -> String {
        String::from_utf8(self.0.borrow().clone()).unwrap()
    }
}

impl std::io::Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.send_modify(|bytes| bytes.extend_from_slice(buf));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn cli_watch_prints_the_snapshot_then_one_row_per_change_and_stops_cleanly() {
    let controller = FakeController::start(FakeWatch::new(5, vec![])).await;
    let (result, out, err) =
        run_watch(&["--controller", &controller.server.url, "nodes", "watch", "--kind", "drone"], 8).await;
    println!("{out}");
    assert_eq!(result, Ok(()), "stopping (Ctrl-C) is a clean end");
    assert_eq!(err, "");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 8, "{out}");
    // 15:04:05  ADDED     a   …
    let rows = |i: usize| lines[i].split_at(10).1.to_string();
    assert!(rows(0).starts_with("ADDED     a      "), "{out}");
    assert!(rows(0).contains("  drone-a       DRONE  READY      rev 3"), "{out}");
    assert_eq!(lines[2], "-- snapshot at revision 10; watching --");
    assert!(rows(3).starts_with("MODIFIED  b") && rows(3).contains("DRAINING   rev 11"), "{out}");
    assert!(rows(7).starts_with("REMOVED   a") && rows(7).contains("OFFLINE    rev 15"), "{out}");
    let rev_column = lines[0].find(" rev ").unwrap();
    assert!(lines.iter().filter(|l| !l.starts_with("--")).all(|l| l.find(" rev ") == Some(rev_column)), "{out}");
    assert_eq!(controller.fake.requests()[0].filter.as_ref().unwrap().kinds, [v1::NodeKind::Drone as i32]);
}

#[tokio::test]
async fn cli_watch_json_is_one_object_per_line_and_reports_reconnects_on_stderr() {
    let controller = FakeController::start(FakeWatch::new(3, vec![drop_after(4, shutting_down())])).await;
    let args = ["--controller", &controller.server.url, "nodes", "watch", "-o", "json", "--bookmark-interval", "30s"];
    let (result, out, err) = run_watch(&args, 1 + 2 + 1 + 3 + 1).await;
    println!("{out}{err}");
    assert_eq!(result, Ok(()));
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let types: Vec<&str> = lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["SNAPSHOT_START", "ADDED", "ADDED", "SNAPSHOT_END", "MODIFIED", "MODIFIED", "ADDED", "BOOKMARK"]
    );
    assert_eq!(lines[3], serde_json::json!({"type": "SNAPSHOT_END", "revision": 10}));
    assert_eq!(lines[6]["revision"], 13);
    assert_eq!(lines[6]["node"]["id"], "c");
    assert_eq!(lines[6]["node"]["state"], "READY");
    assert_eq!(lines[7], serde_json::json!({"type": "BOOKMARK", "revision": 13}));
    assert!(err.starts_with("reconnecting from revision 11 to http://127.0.0.1:"), "{err}");
    assert!(err.contains("SHUTTING_DOWN"), "{err}");
    assert_eq!(controller.fake.starts(), [(true, 0), (false, 11)]);
}

#[tokio::test]
async fn cli_watch_of_an_unreachable_controller_fails_at_once() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let (result, out, _) = run_watch(&["--controller", &url, "nodes", "watch"], 1).await;
    let err = result.unwrap_err();
    assert!(err.contains("cannot reach the controller") && err.contains(&url), "{err}");
    assert_eq!(out, "");
}

#[tokio::test]
async fn cli_watch_takes_several_controllers_and_starts_on_one_that_answers() {
    let controller = FakeController::start(FakeWatch::new(1, vec![])).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let controllers = format!("http://127.0.0.1:{port},{}", controller.server.url);
    let (result, out, _) = run_watch(&["--controller", &controllers, "nodes", "watch", "-o", "json"], 5).await;
    assert_eq!(result, Ok(()));
    assert_eq!(out.lines().count(), 5, "{out}");
}

#[test]
fn the_fake_compacts_like_the_controller() {
    let fake = FakeWatch::new(6, vec![]);
    let mut state = fake.0.lock().unwrap();
    compact(&mut state, 15);
    let ids: Vec<&str> = state.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["c", "b"], "a removed, c added, b at its latest change");
    assert_eq!(state.log.iter().map(|e| e.revision).collect::<Vec<_>>(), [16]);
    let _: Vec<Node> = state.nodes.iter().map(|n| Node::try_from(n).unwrap()).collect();
}
