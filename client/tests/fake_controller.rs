//! The SDK and the CLI against a fake `NodeService` served over real tonic on port 0: paging,
//! revision checks, retries, and errors as a controller sends them.

mod support;

use hangar::domain::{NodeFilter, NodeKind, timestamp_to_proto};
use hangar::error::{reason, status_with_reason};
use hangar::v1::{self, node_service_server::NodeService, node_service_server::NodeServiceServer};
use hangar_client::cli::{Cli, execute, render};
use hangar_client::{ClientError, ClientOptions, HangarClient, RetryPolicy};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use support::FakeServer;
use tonic::service::Routes;
use tonic::{Code, Request, Response, Status};

const REVISION: u64 = 4711;

/// Serves `node_count` drones in pages; misbehaves as each test asks.
#[derive(Default)]
struct FakeNodes {
    node_count: usize,
    /// Each page after the first carries a newer revision (a broken snapshot).
    drifting_revision: bool,
    /// This many calls (of any method) fail with UNAVAILABLE first.
    unavailable_calls: AtomicU32,
    /// This many continuation pages fail with PAGE_TOKEN_EXPIRED first.
    expired_tokens: AtomicU32,
    /// Listings are taken and never answered: a controller that is paused or stuck.
    hung: bool,
    calls: AtomicU32,
    filters: Mutex<Vec<v1::NodeFilter>>,
    drains: Mutex<Vec<v1::DrainNodeRequest>>,
    undrains: Mutex<Vec<String>>,
}

fn proto_node(i: usize) -> v1::Node {
    v1::Node {
        id: format!("nd-{i:05}"),
        name: format!("drone-{i}"),
        kind: v1::NodeKind::Drone as i32,
        cluster: "default".into(),
        pool: "default".into(),
        state: v1::NodeState::Ready as i32,
        version: "0.1.0".into(),
        controller_id: "ctl-fake".into(),
        registered_at: Some(timestamp_to_proto(chrono::Utc::now())),
        last_heartbeat_at: Some(timestamp_to_proto(chrono::Utc::now())),
        labels: [("zone".to_string(), "a".to_string())].into(),
        backend_capacity: 10,
        revision: i as u64 + 1,
        ..Default::default()
    }
}

impl FakeNodes {
    fn answer(&self) -> Result<(), Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let left = self.unavailable_calls.load(Ordering::SeqCst);
        if left > 0 {
            self.unavailable_calls.store(left - 1, Ordering::SeqCst);
            return Err(Status::unavailable("controller restarting"));
        }
        Ok(())
    }

    fn node(&self, id: &str) -> Result<v1::Node, Status> {
        (0..self.node_count).map(proto_node).find(|n| n.id == id).ok_or_else(|| {
            status_with_reason(Code::NotFound, format!("no node {id}"), reason::NODE_NOT_FOUND, &[("id", id.into())])
        })
    }
}

#[async_trait::async_trait]
impl NodeService for FakeNodes {
    type WatchNodesStream = futures::stream::Empty<Result<v1::WatchNodesResponse, Status>>;

    async fn list_nodes(
        &self,
        request: Request<v1::ListNodesRequest>,
    ) -> Result<Response<v1::ListNodesResponse>, Status> {
        self.answer()?;
        if self.hung {
            std::future::pending::<()>().await;
        }
        let request = request.into_inner();
        self.filters.lock().unwrap().push(request.filter.unwrap_or_default());
        let page: usize = if request.page_token.is_empty() { 0 } else { request.page_token.parse().unwrap() };
        if page > 0 && self.expired_tokens.load(Ordering::SeqCst) > 0 {
            self.expired_tokens.fetch_sub(1, Ordering::SeqCst);
            return Err(status_with_reason(
                Code::InvalidArgument,
                "page token expired",
                reason::PAGE_TOKEN_EXPIRED,
                &[],
            ));
        }
        let size = if request.page_size == 0 { 100 } else { request.page_size as usize };
        let start = page * size;
        let end = (start + size).min(self.node_count);
        Ok(Response::new(v1::ListNodesResponse {
            nodes: (start..end).map(proto_node).collect(),
            next_page_token: if end < self.node_count { (page + 1).to_string() } else { String::new() },
            revision: if self.drifting_revision { REVISION + page as u64 } else { REVISION },
            ..Default::default()
        }))
    }

    async fn get_node(&self, request: Request<v1::GetNodeRequest>) -> Result<Response<v1::GetNodeResponse>, Status> {
        self.answer()?;
        Ok(Response::new(v1::GetNodeResponse { node: Some(self.node(&request.into_inner().id)?) }))
    }

    async fn drain_node(
        &self,
        request: Request<v1::DrainNodeRequest>,
    ) -> Result<Response<v1::DrainNodeResponse>, Status> {
        self.answer()?;
        let request = request.into_inner();
        self.drains.lock().unwrap().push(request.clone());
        let mut node = self.node(&request.id)?;
        node.state = v1::NodeState::Draining as i32;
        node.drain_deadline =
            request.deadline.map(|d| timestamp_to_proto(chrono::Utc::now() + chrono::Duration::seconds(d.seconds)));
        Ok(Response::new(v1::DrainNodeResponse { node: Some(node) }))
    }

    async fn undrain_node(
        &self,
        request: Request<v1::UndrainNodeRequest>,
    ) -> Result<Response<v1::UndrainNodeResponse>, Status> {
        self.answer()?;
        let request = request.into_inner();
        self.undrains.lock().unwrap().push(request.id.clone());
        Ok(Response::new(v1::UndrainNodeResponse { node: Some(self.node(&request.id)?) }))
    }

    async fn watch_nodes(&self, _: Request<v1::WatchNodesRequest>) -> Result<Response<Self::WatchNodesStream>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
}

/// The fake behind a [`FakeServer`].
struct FakeController {
    server: FakeServer,
    nodes: std::sync::Arc<FakeNodes>,
}

impl FakeController {
    async fn start(fake: FakeNodes) -> Self {
        let nodes = std::sync::Arc::new(fake);
        let server = FakeServer::start(Routes::new(NodeServiceServer::from_arc(nodes.clone()))).await;
        FakeController { server, nodes }
    }

    async fn client(&self) -> HangarClient {
        let retry = RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
        };
        HangarClient::connect_with(&self.server.url, ClientOptions { retry, ..ClientOptions::default() }).await.unwrap()
    }

    fn calls(&self) -> u32 {
        self.nodes.calls.load(Ordering::SeqCst)
    }
}

/// A controller that takes a call and never answers (a paused process, a stuck store): the
/// call's deadline cuts it off, the idempotent call goes on to the next controller, and that one
/// is tried first from then on.
#[tokio::test]
async fn an_idempotent_call_that_a_hung_controller_never_answers_fails_over_at_its_deadline() {
    let hung = FakeController::start(FakeNodes { node_count: 1, hung: true, ..FakeNodes::default() }).await;
    let answering = FakeController::start(FakeNodes { node_count: 3, ..FakeNodes::default() }).await;
    let deadline = Duration::from_millis(300);
    let options = ClientOptions { request_timeout: deadline, ..ClientOptions::default() };
    let urls = format!("{},{}", hung.server.url, answering.server.url);
    let client = HangarClient::connect_with(&urls, options).await.unwrap();

    let started = std::time::Instant::now();
    let page = client.list_nodes(&NodeFilter::default(), 0, None).await.unwrap();
    assert_eq!(page.nodes.len(), 3, "the answering controller's listing");
    assert!(started.elapsed() < deadline * 3, "cut off at the deadline: {:?}", started.elapsed());
    assert_eq!((hung.calls(), answering.calls()), (1, 1));
    assert_eq!(client.address(), answering.server.url, "the hung controller is left for last");

    let started = std::time::Instant::now();
    client.list_nodes(&NodeFilter::default(), 0, None).await.unwrap();
    assert!(started.elapsed() < deadline, "no second wait for the hung controller: {:?}", started.elapsed());
    assert_eq!(hung.calls(), 1);
}

#[tokio::test]
async fn listing_all_nodes_follows_page_tokens_and_returns_each_node_once() {
    let controller = FakeController::start(FakeNodes { node_count: 1203, ..FakeNodes::default() }).await;
    let client = controller.client().await;
    let filter = NodeFilter { kinds: vec![NodeKind::Drone], cluster: Some("default".into()), ..NodeFilter::default() };

    let listing = client.list_all_nodes(&filter).await.unwrap();

    assert_eq!(listing.revision, REVISION);
    assert_eq!(listing.nodes.len(), 1203);
    let mut ids: Vec<&str> = listing.nodes.iter().map(|n| n.id.as_str()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 1203, "no node twice");
    assert_eq!(controller.calls(), 3, "pages of 500");
    for sent in controller.nodes.filters.lock().unwrap().iter() {
        assert_eq!(sent, &filter.to_proto(), "every page is asked with the same filter");
    }
}

#[tokio::test]
async fn one_page_carries_its_token_and_revision() {
    let controller = FakeController::start(FakeNodes { node_count: 30, ..FakeNodes::default() }).await;
    let client = controller.client().await;
    let first = client.list_nodes(&NodeFilter::default(), 20, None).await.unwrap();
    assert_eq!((first.nodes.len(), first.next_page_token.as_deref(), first.revision), (20, Some("1"), REVISION));
    let last = client.list_nodes(&NodeFilter::default(), 20, first.next_page_token.as_deref()).await.unwrap();
    assert_eq!((last.nodes.len(), last.next_page_token), (10, None));
}

#[tokio::test]
async fn pages_from_different_revisions_are_refused() {
    let fake = FakeNodes { node_count: 1200, drifting_revision: true, ..FakeNodes::default() };
    let controller = FakeController::start(fake).await;
    let err = controller.client().await.list_all_nodes(&NodeFilter::default()).await.unwrap_err();
    assert!(matches!(&err, ClientError::InvalidResponse(m) if m.contains("4711 then 4712")), "{err:?}");
}

#[tokio::test]
async fn an_expired_page_token_restarts_the_listing() {
    let fake = FakeNodes { node_count: 700, expired_tokens: AtomicU32::new(1), ..FakeNodes::default() };
    let controller = FakeController::start(fake).await;
    let listing = controller.client().await.list_all_nodes(&NodeFilter::default()).await.unwrap();
    assert_eq!(listing.nodes.len(), 700);
    assert_eq!(controller.calls(), 4, "first page, expired second page, then both again");
}

#[tokio::test]
async fn listing_is_retried_while_the_controller_is_unavailable() {
    let fake = FakeNodes { node_count: 3, unavailable_calls: AtomicU32::new(2), ..FakeNodes::default() };
    let controller = FakeController::start(fake).await;
    let listing = controller.client().await.list_all_nodes(&NodeFilter::default()).await.unwrap();
    assert_eq!(listing.nodes.len(), 3);
    assert_eq!(controller.calls(), 3);
}

#[tokio::test]
async fn get_gives_up_after_the_last_retry_with_unavailable() {
    let fake = FakeNodes { node_count: 3, unavailable_calls: AtomicU32::new(100), ..FakeNodes::default() };
    let controller = FakeController::start(fake).await;
    let err = controller.client().await.get_node("nd-00001").await.unwrap_err();
    assert!(matches!(err, ClientError::Unavailable { .. }), "{err:?}");
    assert_eq!(controller.calls(), 4);
}

#[tokio::test]
async fn drain_is_not_retried_after_unavailable() {
    let fake = FakeNodes { node_count: 3, unavailable_calls: AtomicU32::new(1), ..FakeNodes::default() };
    let controller = FakeController::start(fake).await;
    let err = controller.client().await.drain_node("nd-00001", None).await.unwrap_err();
    assert!(matches!(err, ClientError::Unavailable { .. }), "{err:?}");
    assert_eq!(controller.calls(), 1);
}

#[tokio::test]
async fn drain_sends_the_deadline_and_returns_the_draining_node() {
    let controller = FakeController::start(FakeNodes { node_count: 3, ..FakeNodes::default() }).await;
    let node = controller.client().await.drain_node("nd-00001", Some(Duration::from_secs(600))).await.unwrap();
    assert_eq!(node.state, hangar::domain::NodeState::Draining);
    assert!(node.drain_deadline.is_some());
    let drains = controller.nodes.drains.lock().unwrap();
    assert_eq!(drains[0].deadline.as_ref().map(|d| d.seconds), Some(600));
}

#[tokio::test]
async fn undrain_is_idempotent_so_it_is_retried_after_unavailable() {
    let fake = FakeNodes { node_count: 3, unavailable_calls: AtomicU32::new(2), ..FakeNodes::default() };
    let controller = FakeController::start(fake).await;
    let node = controller.client().await.undrain_node("nd-00001").await.unwrap();
    assert_eq!((node.id.as_str(), node.state), ("nd-00001", hangar::domain::NodeState::Ready));
    assert_eq!(controller.calls(), 3, "two UNAVAILABLE answers, then the undrain");
    assert_eq!(*controller.nodes.undrains.lock().unwrap(), ["nd-00001"]);
}

#[tokio::test]
async fn cli_undrain_says_the_drone_takes_backends_again() {
    let controller = FakeController::start(FakeNodes { node_count: 3, ..FakeNodes::default() }).await;
    let out = execute(&cli(&["--controller", &controller.server.url, "nodes", "undrain", "nd-00002"])).await.unwrap();
    assert_eq!(out, "Undrained node nd-00002 (drone-2): new backends may be placed on it again. State: READY.\n");
    let command = cli(&["--controller", &controller.server.url, "nodes", "undrain", "nd-nope"]);
    let err = execute(&command).await.unwrap_err();
    assert!(render::error(&err, &command.controller).contains("(NODE_NOT_FOUND)"));
}

#[tokio::test]
async fn an_unknown_node_is_not_found_with_its_reason() {
    let controller = FakeController::start(FakeNodes { node_count: 3, ..FakeNodes::default() }).await;
    let err = controller.client().await.get_node("nd-nope").await.unwrap_err();
    match &err {
        ClientError::NotFound { reason, message } => {
            assert_eq!(reason, "NODE_NOT_FOUND");
            assert_eq!(message, "no node nd-nope");
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(controller.calls(), 1, "NOT_FOUND is not retried");
}

fn cli(args: &[&str]) -> Cli {
    use clap::Parser;
    Cli::try_parse_from(std::iter::once("hangar").chain(args.iter().copied())).unwrap()
}

#[tokio::test]
async fn cli_list_json_is_one_document_with_every_node() {
    let controller = FakeController::start(FakeNodes { node_count: 120, ..FakeNodes::default() }).await;
    let out =
        execute(&cli(&["--controller", &controller.server.url, "nodes", "list", "--kind", "drone", "-o", "json"]))
            .await
            .unwrap();
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["revision"], REVISION);
    assert_eq!(doc["nodes"].as_array().unwrap().len(), 120);
    assert_eq!(doc["nodes"][0]["labels"]["zone"], "a");
}

#[tokio::test]
async fn cli_list_table_has_a_header_and_one_row_per_node() {
    let controller = FakeController::start(FakeNodes { node_count: 2, ..FakeNodes::default() }).await;
    let out = execute(&cli(&["--controller", &controller.server.url, "nodes", "list"])).await.unwrap();
    println!("{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("ID         NAME      KIND    STATE"), "{out}");
    assert!(lines[1].starts_with("nd-00000   drone-0   DRONE   READY"), "{out}");
}

#[tokio::test]
async fn cli_get_of_an_unknown_node_renders_reason_and_hint() {
    let controller = FakeController::start(FakeNodes { node_count: 2, ..FakeNodes::default() }).await;
    let command = cli(&["--controller", &controller.server.url, "nodes", "get", "nd-nope"]);
    let err = execute(&command).await.unwrap_err();
    assert_eq!(
        render::error(&err, &command.controller),
        // Neither a node's id nor its name: the listing of every node found none named so.
        "error: no node has the id or name \"nd-nope\" (NODE_NOT_FOUND)\nhint: list nodes with `hangar nodes list`\n"
    );
}
