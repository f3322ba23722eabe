//! ListNodes, GetNode and DrainNode: snapshot pagination, filters, and clear errors.

use chrono::Utc;
use hangar::domain::{NodeKind, NodeResources};
use hangar::error::{error_info, field_violations};
use hangar::v1::{self, NodeFilter, NodeState};
use hangar_server::store::{NodeRegistration, NodeUpdate, UpdateCondition};
use hangar_tests::TestCluster;
use std::collections::{BTreeMap, HashSet};
use tonic::Code;

fn registration(kind: NodeKind, name: &str, cluster: &str, pool: &str, labels: &[(&str, &str)]) -> NodeRegistration {
    NodeRegistration {
        kind,
        name: name.into(),
        cluster: cluster.into(),
        pool: pool.into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        version: "test".into(),
        backend_capacity: 10,
        resources: NodeResources::default(),
    }
}

fn list(filter: NodeFilter, page_size: i32, page_token: &str) -> v1::ListNodesRequest {
    v1::ListNodesRequest { filter: Some(filter), page_size, page_token: page_token.into() }
}

#[tokio::test]
async fn pagination_over_2500_nodes_returns_each_exactly_once_from_one_snapshot() {
    let cluster = TestCluster::sqlite().await;
    let mut expected = HashSet::new();
    for i in 0..2500 {
        let node = cluster
            .store
            .attach_node(
                registration(NodeKind::Drone, &format!("d-{i:04}"), "default", "default", &[]),
                "ctl-test",
                Utc::now(),
            )
            .await
            .unwrap();
        expected.insert(node.id);
    }
    let mut nodes = cluster.nodes().await;
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut revisions = HashSet::new();
    let mut pages = 0;
    let mut changed_during_listing = Vec::new();
    loop {
        let page = nodes.list_nodes(list(NodeFilter::default(), 300, &token)).await.unwrap().into_inner();
        assert!(page.nodes.len() <= 300);
        revisions.insert(page.revision);
        seen.extend(page.nodes.iter().map(|n| n.id.clone()));
        pages += 1;
        // While the listing runs, the cluster changes: nodes turn offline and new ones join.
        // None of it may leak into later pages of this listing.
        let victim = page.nodes.last().map(|n| n.id.clone());
        if let Some(victim) = victim {
            let update = NodeUpdate { state: Some(hangar::domain::NodeState::Offline), ..NodeUpdate::default() };
            cluster.store.update_node(&victim, update, UpdateCondition::Always).await.unwrap();
            changed_during_listing.push(victim);
        }
        let late = format!("late-{pages}");
        cluster
            .store
            .attach_node(registration(NodeKind::Drone, &late, "default", "default", &[]), "ctl-test", Utc::now())
            .await
            .unwrap();
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(revisions.len(), 1, "every page carries the same revision: {revisions:?}");
    assert_eq!(pages, 9, "2500 nodes in pages of 300");
    assert_eq!(seen.len(), 2500, "no node twice, none missing");
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), expected);

    // A listing at that revision still shows the later-modified nodes as they were.
    let ready = nodes
        .list_nodes(list(NodeFilter { states: vec![NodeState::Ready as i32], ..Default::default() }, 1000, ""))
        .await
        .unwrap()
        .into_inner();
    assert!(ready.revision > *revisions.iter().next().unwrap(), "a new listing sees a newer revision");
    cluster.shutdown().await;
}

#[tokio::test]
async fn default_page_size_is_100_and_the_last_page_has_no_token() {
    let cluster = TestCluster::sqlite().await;
    for i in 0..150 {
        cluster
            .store
            .attach_node(registration(NodeKind::Drone, &format!("n-{i}"), "default", "default", &[]), "ctl", Utc::now())
            .await
            .unwrap();
    }
    let mut nodes = cluster.nodes().await;
    let first = nodes.list_nodes(list(NodeFilter::default(), 0, "")).await.unwrap().into_inner();
    assert_eq!(first.nodes.len(), 100);
    let second = nodes.list_nodes(list(NodeFilter::default(), 0, &first.next_page_token)).await.unwrap().into_inner();
    assert_eq!(second.nodes.len(), 50);
    assert_eq!(second.next_page_token, "");
    cluster.shutdown().await;
}

async fn filtered(
    nodes: &mut v1::node_service_client::NodeServiceClient<tonic::transport::Channel>,
    filter: NodeFilter,
) -> Vec<String> {
    let mut names: Vec<_> = nodes
        .list_nodes(list(filter, 1000, ""))
        .await
        .unwrap()
        .into_inner()
        .nodes
        .into_iter()
        .map(|n| n.name)
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn each_filter_selects_exactly_the_matching_nodes() {
    let cluster = TestCluster::sqlite().await;
    let s = &cluster.store;
    s.attach_node(
        registration(NodeKind::Drone, "eu-gpu", "eu", "gpu", &[("zone", "a"), ("disk", "ssd")]),
        "c",
        Utc::now(),
    )
    .await
    .unwrap();
    s.attach_node(registration(NodeKind::Drone, "eu-cpu", "eu", "default", &[("zone", "b")]), "c", Utc::now())
        .await
        .unwrap();
    let us = s
        .attach_node(registration(NodeKind::Drone, "us-cpu", "us", "default", &[("zone", "a")]), "c", Utc::now())
        .await
        .unwrap();
    s.attach_node(registration(NodeKind::Proxy, "eu-edge", "eu", "default", &[]), "c", Utc::now()).await.unwrap();
    s.update_node(
        &us.id,
        NodeUpdate { state: Some(hangar::domain::NodeState::Offline), ..Default::default() },
        UpdateCondition::Always,
    )
    .await
    .unwrap();

    let mut nodes = cluster.nodes().await;
    let kinds = |k: &[v1::NodeKind]| NodeFilter { kinds: k.iter().map(|k| *k as i32).collect(), ..Default::default() };
    assert_eq!(filtered(&mut nodes, kinds(&[v1::NodeKind::Proxy])).await, ["eu-edge"]);
    assert_eq!(filtered(&mut nodes, kinds(&[v1::NodeKind::Drone])).await, ["eu-cpu", "eu-gpu", "us-cpu"]);
    assert_eq!(filtered(&mut nodes, kinds(&[v1::NodeKind::Drone, v1::NodeKind::Proxy])).await.len(), 4);

    let states = |s: &[NodeState]| NodeFilter { states: s.iter().map(|s| *s as i32).collect(), ..Default::default() };
    assert_eq!(filtered(&mut nodes, states(&[NodeState::Offline])).await, ["us-cpu"]);
    assert_eq!(filtered(&mut nodes, states(&[NodeState::Ready])).await, ["eu-cpu", "eu-edge", "eu-gpu"]);

    let cluster_filter = NodeFilter { cluster: "us".into(), ..Default::default() };
    assert_eq!(filtered(&mut nodes, cluster_filter).await, ["us-cpu"]);
    let pool = NodeFilter { pool: "gpu".into(), ..Default::default() };
    assert_eq!(filtered(&mut nodes, pool).await, ["eu-gpu"]);
    let labels = |l: &[(&str, &str)]| NodeFilter {
        labels: l.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    };
    assert_eq!(filtered(&mut nodes, labels(&[("zone", "a")])).await, ["eu-gpu", "us-cpu"]);
    assert_eq!(filtered(&mut nodes, labels(&[("zone", "a"), ("disk", "ssd")])).await, ["eu-gpu"]);
    assert!(filtered(&mut nodes, labels(&[("zone", "c")])).await.is_empty());

    let combined = NodeFilter {
        cluster: "eu".into(),
        kinds: vec![v1::NodeKind::Drone as i32],
        labels: labels(&[("zone", "b")]).labels,
        ..Default::default()
    };
    assert_eq!(filtered(&mut nodes, combined).await, ["eu-cpu"]);
    cluster.shutdown().await;
}

#[tokio::test]
async fn filters_paginate_too() {
    let cluster = TestCluster::sqlite().await;
    for i in 0..60 {
        let pool = if i % 3 == 0 { "gpu" } else { "default" };
        cluster
            .store
            .attach_node(registration(NodeKind::Drone, &format!("n-{i}"), "default", pool, &[]), "c", Utc::now())
            .await
            .unwrap();
    }
    let mut nodes = cluster.nodes().await;
    let filter = NodeFilter { pool: "gpu".into(), ..Default::default() };
    let (mut seen, mut token) = (Vec::new(), String::new());
    loop {
        let page = nodes.list_nodes(list(filter.clone(), 7, &token)).await.unwrap().into_inner();
        assert!(page.nodes.iter().all(|n| n.pool == "gpu"));
        seen.extend(page.nodes.into_iter().map(|n| n.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 20);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 20);
    cluster.shutdown().await;
}

#[tokio::test]
async fn page_size_over_the_limit_or_negative_is_invalid_argument() {
    let cluster = TestCluster::sqlite().await;
    let mut nodes = cluster.nodes().await;
    for size in [1001, -1] {
        let status = nodes.list_nodes(list(NodeFilter::default(), size, "")).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        let violations = field_violations(&status);
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].0, "page_size");
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn malformed_forged_and_mismatched_page_tokens_are_refused() {
    let cluster = TestCluster::sqlite().await;
    for i in 0..5 {
        cluster
            .store
            .attach_node(registration(NodeKind::Drone, &format!("n-{i}"), "default", "default", &[]), "c", Utc::now())
            .await
            .unwrap();
    }
    let mut nodes = cluster.nodes().await;
    let page = nodes.list_nodes(list(NodeFilter::default(), 2, "")).await.unwrap().into_inner();
    let token = page.next_page_token;
    assert!(!token.is_empty());

    let mut forged = token.clone().into_bytes();
    forged[3] = if forged[3] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let other_filter = NodeFilter { pool: "gpu".into(), ..Default::default() };
    for (filter, bad) in [
        (NodeFilter::default(), "not-a-token"),
        (NodeFilter::default(), "%%%"),
        (NodeFilter::default(), forged.as_str()),
        (other_filter, token.as_str()),
    ] {
        let status = nodes.list_nodes(list(filter, 2, bad)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "token {bad:?}");
        assert_eq!(error_info(&status).unwrap().0, "INVALID_PAGE_TOKEN");
        assert_eq!(field_violations(&status)[0].0, "page_token");
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn unknown_node_id_is_not_found_with_a_reason_and_empty_id_is_invalid() {
    let cluster = TestCluster::sqlite().await;
    let mut nodes = cluster.nodes().await;
    let status = nodes.get_node(v1::GetNodeRequest { id: "no-such-node".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let (reason, metadata) = error_info(&status).unwrap();
    assert_eq!(reason, "NODE_NOT_FOUND");
    assert_eq!(metadata["id"], "no-such-node");

    let status =
        nodes.drain_node(v1::DrainNodeRequest { id: "no-such-node".into(), deadline: None }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    let status = nodes.get_node(v1::GetNodeRequest { id: String::new() }).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(field_violations(&status), vec![("id".to_string(), "must not be empty".to_string())]);
    cluster.shutdown().await;
}

#[tokio::test]
async fn unknown_enum_values_in_a_filter_are_invalid_argument() {
    let cluster = TestCluster::sqlite().await;
    let mut nodes = cluster.nodes().await;
    let filter = NodeFilter { states: vec![NodeState::Ready as i32, 42], ..Default::default() };
    let status = nodes.list_nodes(list(filter, 0, "")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(field_violations(&status)[0].0, "filter.states[1]");
    cluster.shutdown().await;
}
