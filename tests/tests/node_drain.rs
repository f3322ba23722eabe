//! DrainNode and UndrainNode through the real API: an undrain makes a drained drone READY again
//! as one more revision that watchers see, repeating it changes nothing, and its errors are
//! those of a drain.

use hangar::error::{error_info, field_violations, reason};
use hangar::v1::{self, NodeEventType, NodeState};
use hangar_tests::{ManualDrone, ManualProxy, TestCluster, drone_hello, next_event, wait_for_node, watch};
use std::time::Duration;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(10);

fn state(node: &v1::Node) -> NodeState {
    NodeState::try_from(node.state).unwrap()
}

async fn undrain(cluster: &TestCluster, id: &str) -> Result<v1::Node, tonic::Status> {
    let mut nodes = cluster.nodes().await;
    Ok(nodes.undrain_node(v1::UndrainNodeRequest { id: id.into() }).await?.into_inner().node.unwrap())
}

#[tokio::test]
async fn undrain_makes_a_drained_drone_ready_again_as_one_modified_event() {
    let cluster = TestCluster::sqlite().await;
    let mut nodes = cluster.nodes().await;
    let drone = ManualDrone::attach(&cluster.url(), drone_hello("d1")).await.unwrap();
    let _alive = drone.keep_alive(Duration::from_millis(50));
    let id = drone.node_id.clone();
    wait_for_node(&mut nodes, &id, WAIT, |n| state(n) == NodeState::Ready).await;
    let deadline = Some(prost_types::Duration { seconds: 600, nanos: 0 });
    let drained = nodes.drain_node(v1::DrainNodeRequest { id: id.clone(), deadline }).await.unwrap().into_inner();
    let drained = drained.node.unwrap();
    assert_eq!(state(&drained), NodeState::Draining);

    let request = v1::WatchNodesRequest { start_revision: drained.revision, ..Default::default() };
    let mut events = watch(&cluster.url(), request).await.unwrap();
    let undrained = undrain(&cluster, &id).await.unwrap();
    assert_eq!(state(&undrained), NodeState::Ready);
    assert!(!undrained.draining);
    assert_eq!(undrained.drain_deadline, None, "the deadline goes with the drain");
    assert!(undrained.revision > drained.revision);

    let event = next_event(&mut events, WAIT).await.unwrap();
    assert_eq!(event.r#type(), NodeEventType::Modified);
    assert_eq!(event.revision, undrained.revision);
    let seen = event.node.unwrap();
    assert_eq!((state(&seen), seen.draining, seen.drain_deadline), (NodeState::Ready, false, None));

    // Undraining again is a success that changes nothing: the same node, no new revision.
    let again = undrain(&cluster, &id).await.unwrap();
    assert_eq!(again.revision, undrained.revision);
    assert_eq!(state(&again), NodeState::Ready);
    let node = nodes.get_node(v1::GetNodeRequest { id: id.clone() }).await.unwrap().into_inner().node.unwrap();
    assert_eq!(node.revision, undrained.revision);
    cluster.shutdown().await;
}

#[tokio::test]
async fn an_undrained_drone_that_reattaches_is_ready_not_draining() {
    let cluster = TestCluster::sqlite().await;
    let mut nodes = cluster.nodes().await;
    let drone = ManualDrone::attach(&cluster.url(), drone_hello("d1")).await.unwrap();
    let id = drone.node_id.clone();
    nodes.drain_node(v1::DrainNodeRequest { id: id.clone(), deadline: None }).await.unwrap();
    drop(drone);
    wait_for_node(&mut nodes, &id, WAIT, |n| state(n) == NodeState::Offline).await;
    // Undrained while away: it stays OFFLINE until it comes back, then it is READY.
    let undrained = undrain(&cluster, &id).await.unwrap();
    assert_eq!((state(&undrained), undrained.draining), (NodeState::Offline, false));
    let again = ManualDrone::attach(&cluster.url(), drone_hello("d1")).await.unwrap();
    let _alive = again.keep_alive(Duration::from_millis(50));
    let node = wait_for_node(&mut nodes, &id, WAIT, |n| state(n) != NodeState::Offline).await;
    assert_eq!(state(&node), NodeState::Ready);
    cluster.shutdown().await;
}

#[tokio::test]
async fn undrain_refuses_what_drain_refuses() {
    let cluster = TestCluster::sqlite().await;
    let status = undrain(&cluster, "no-such-node").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let (found, metadata) = error_info(&status).unwrap();
    assert_eq!((found.as_str(), metadata["id"].as_str()), (reason::NODE_NOT_FOUND, "no-such-node"));

    let status = undrain(&cluster, "").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(field_violations(&status), vec![("id".to_string(), "must not be empty".to_string())]);

    let proxy = ManualProxy::attach(&cluster.url(), "edge-1").await;
    let status = undrain(&cluster, &proxy.node_id).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(error_info(&status).unwrap().0, reason::NODE_NOT_DRONE);
    drop(proxy);
    cluster.shutdown().await;
}
