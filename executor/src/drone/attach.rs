//! The drone's side of one `DroneService.Attach` stream: Hello, Welcome, then heartbeats and
//! journaled events out, actions, acks and renewal answers in. Moving between controllers is
//! [`hangar_agent::attach::attach_forever`]'s job; this file is what happens on one stream.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::stream::PollNext;
use hangar::domain::duration_from_proto;
use hangar::v1::{self, drone_service_client::DroneServiceClient};
use hangar_agent::HostResources;
use hangar_agent::attach::{Attach, Attempt, StreamEnd};
use hangar_client::HangarChannel;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus, health_client::HealthClient,
};

use super::fleet::Fleet;
use super::{AttachState, DroneConfig};

/// Events sent and not yet acknowledged on one stream, at most. The controller applies events one
/// store write at a time; without a window a burst of them would fill its session's queue and stop
/// it from reading the stream, heartbeats and renewals included. Also bounds a journal read.
const EVENT_WINDOW: i64 = 1024;

/// Acknowledgements of events deleted from the journal in one commit at most.
const ACK_BATCH: usize = 256;

/// How often a stream is checked for a renewal batch its controller left unanswered.
const STUCK_CHECK: Duration = Duration::from_millis(250);

/// How often a stream whose controller answers renewals deferred looks for a controller that
/// reaches its store (a health call to each other controller, only while deferred), and how long
/// it waits for each one's answer.
const ELSEWHERE_CHECK: Duration = Duration::from_secs(1);
const ELSEWHERE_WAIT: Duration = Duration::from_secs(1);

/// The service whose health says a controller takes drones: it reaches its store.
const DRONE_SERVICE: &str = v1::drone_service_server::SERVICE_NAME;

/// Renewal batches that may wait on the priority lane (each up to `renewer::MAX_BATCH` keys).
const PRIORITY_LANE: usize = 64;

/// Actions and acks read from the controller and not yet handled. The reader stops reading (and
/// so stops reading renewal answers too) only past this many: it bounds the drone's memory.
const INBOUND_QUEUE: usize = 4096;

/// What the reader hands to the stream's loop: a message, or the stream's failure.
type Inbound = Result<v1::drone_attach_response::Message, tonic::Status>;

/// Reads the controller's messages as they come: renewal answers go straight to the renewer
/// (their deadlines are running), everything else queues for the loop, which journals actions
/// one by one. Returns when the stream ends (dropping the queue, which ends the loop).
async fn read_inbound(
    fleet: &Arc<Fleet>,
    mut inbound: tonic::Streaming<v1::DroneAttachResponse>,
    queue: mpsc::Sender<Inbound>,
    generation: u64,
) {
    use v1::drone_attach_response::Message as Reply;
    loop {
        let reply = match inbound.message().await {
            Ok(Some(v1::DroneAttachResponse { message: Some(reply) })) => reply,
            Ok(Some(_)) => {
                tracing::debug!("empty message from the controller");
                continue;
            }
            Ok(None) => return,
            Err(status) => {
                let _ = queue.send(Err(status)).await;
                return;
            }
        };
        match reply {
            Reply::RenewKeysResponse(answer) => fleet.renewal_answers(generation, answer).await,
            Reply::RenewKeyResponse(answer) => fleet.renewal_answer(generation, answer).await,
            other => {
                if queue.send(Ok(other)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// What every stream of one drone shares: its configuration and backends, the state it reports,
/// and one [`HostResources`] for its whole life, so CPU usage is measured between heartbeats
/// even across a reconnect.
pub struct DroneAttach<'a> {
    config: &'a DroneConfig,
    fleet: &'a Arc<Fleet>,
    state: &'a watch::Sender<AttachState>,
    host: HostResources,
}

impl<'a> DroneAttach<'a> {
    pub fn new(config: &'a DroneConfig, fleet: &'a Arc<Fleet>, state: &'a watch::Sender<AttachState>) -> Self {
        DroneAttach { config, fleet, state, host: HostResources::new() }
    }
}

impl Attach for DroneAttach<'_> {
    /// The controller's message: the drone's hello was invalid (a bad name, say), and saying it
    /// again will not help.
    type Refusal = String;
    const AGENT: &'static str = "drone";

    async fn stream(&mut self, attempt: &mut Attempt<'_>, channel: HangarChannel) -> StreamEnd<String> {
        let result = self.attach(attempt, channel).await;
        self.state.send_replace(AttachState::Connecting);
        if let Err(err) = &result
            && let Some(status) = err.downcast_ref::<tonic::Status>()
            && status.code() == tonic::Code::InvalidArgument
        {
            return StreamEnd::Refused(status.message().to_string());
        }
        result.into()
    }
}

impl DroneAttach<'_> {
    /// One stream, from the hello to its end.
    async fn attach(&mut self, attempt: &mut Attempt<'_>, channel: HangarChannel) -> anyhow::Result<()> {
        use v1::drone_attach_request::Message;
        use v1::drone_attach_response::Message as Reply;

        let config = self.config;
        let controller = attempt.controller().to_string();
        let mut client = DroneServiceClient::new(channel.clone());
        let (tx, rx) = mpsc::channel(64);
        // Renewals' own lane, always taken first: they never wait behind queued events.
        let (priority_tx, priority_rx) = mpsc::channel(PRIORITY_LANE);
        let requests = futures::stream::select_with_strategy(
            ReceiverStream::new(priority_rx),
            ReceiverStream::new(rx),
            |_: &mut ()| PollNext::Left,
        );
        let hello = v1::DroneHello {
            name: config.name.clone(),
            cluster: config.cluster.clone(),
            pool: config.pool.clone(),
            version: hangar::VERSION.to_string(),
            labels: config.labels.clone().into_iter().collect(),
            backend_capacity: config.backend_capacity,
            resources: Some(self.host.sample().into()),
            runtime: config.runtime.as_ref().map_or("none", |r| r.kind().as_str()).to_string(),
            lease_deferrals: true,
        };
        tx.send(v1::DroneAttachRequest { message: Some(Message::Hello(hello)) }).await?;
        // The status itself is the error, so that `stream` can tell a refusal from a transient
        // failure.
        let mut inbound = client.attach(requests).await?.into_inner();

        let welcome = match inbound.message().await.context("no welcome")? {
            Some(v1::DroneAttachResponse { message: Some(Reply::Welcome(welcome)) }) => welcome,
            other => anyhow::bail!("expected a welcome, got {other:?}"),
        };
        let interval =
            welcome.heartbeat_interval.as_ref().and_then(duration_from_proto).unwrap_or(config.heartbeat_interval);
        tracing::info!(node_id = %welcome.node_id, %controller, "drone attached");
        self.state.send_replace(AttachState::Attached { node_id: welcome.node_id.clone(), controller });
        attempt.welcomed();

        let outbox = &self.fleet.outbox;
        let outage_grace = welcome.store_outage_grace.as_ref().and_then(duration_from_proto).unwrap_or_default();
        let generation = outbox.stream.attach(priority_tx.clone(), welcome.batch_renewals, outage_grace);
        outbox.keys.stream_changed(generation);
        let result =
            self.attached(&tx, priority_tx, inbound, interval, generation, (attempt.controller(), channel)).await;
        outbox.stream.detach(generation);
        result
    }

    /// The attached part of a stream, three parts side by side so none waits for another:
    /// reading the controller's messages, heartbeats (on the priority lane, so a burst of events
    /// cannot delay them past the controller's UNHEALTHY bound), and the loop that sends journaled
    /// events (all unacknowledged ones first, in order) and handles actions and acks.
    async fn attached(
        &mut self,
        tx: &mpsc::Sender<v1::DroneAttachRequest>,
        priority: mpsc::Sender<v1::DroneAttachRequest>,
        inbound: tonic::Streaming<v1::DroneAttachResponse>,
        interval: Duration,
        generation: u64,
        (current, channel): (&str, HangarChannel),
    ) -> anyhow::Result<()> {
        let fleet = self.fleet;
        let config = self.config;
        let host = &mut self.host;
        let (queue_tx, mut queue) = mpsc::channel(INBOUND_QUEUE);
        let reader = async {
            read_inbound(fleet, inbound, queue_tx, generation).await;
            // The loop ends once it has drained what was read.
            std::future::pending::<()>().await
        };
        let heartbeats = async {
            let mut ticker = tokio::time::interval(interval);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let heartbeat = v1::DroneHeartbeat {
                    local_time: Some(hangar::domain::timestamp_to_proto(chrono::Utc::now())),
                    resources: Some(host.sample().into()),
                    backend_count: fleet.live_count(),
                };
                let message = v1::drone_attach_request::Message::Heartbeat(heartbeat);
                if priority.send(v1::DroneAttachRequest { message: Some(message) }).await.is_err() {
                    // The stream is gone; the loop finds out too.
                    std::future::pending::<()>().await
                }
            }
        };
        // A controller that answers no renewal is paused or cut off; the stream is given up
        // before the keys' deadlines run out, for another controller (the attach loop moves on).
        let stuck = async {
            let mut ticker = tokio::time::interval(STUCK_CHECK);
            loop {
                ticker.tick().await;
                if let Some(timeout) = fleet.outbox.keys.overdue(generation) {
                    return timeout;
                }
            }
        };
        // A controller that answers renewals deferred cannot reach its store: its deferrals hold
        // the keys for its outage grace, once. Another controller that reaches the store (its
        // DroneService SERVING) confirms them for good, so the stream is given up for it; while
        // none does (the store itself is down), the drone stays and waits. A drone that holds no
        // key gets no deferral to go by: it goes by the controller's own health instead, watched
        // on the stream's connection (pushed, not polled), which follows the store.
        let elsewhere = async {
            // Opened beside the checks, not before them: a controller slow to answer it must not
            // hold up the deferrals' check.
            let mut health = HealthClient::new(channel);
            let opening = health.watch(HealthCheckRequest { service: DRONE_SERVICE.to_string() });
            tokio::pin!(opening);
            let mut opened = false;
            let mut own_health = None;
            let mut own_serving = true;
            let mut ticker = tokio::time::interval(ELSEWHERE_CHECK);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    answer = &mut opening, if !opened => {
                        opened = true;
                        own_health = answer.ok().map(|r| r.into_inner());
                        continue;
                    }
                    status = next_status(&mut own_health) => {
                        match status {
                            Some(serving) => own_serving = serving,
                            // A controller without the watch (or it ended): the deferrals alone.
                            None => own_health = None,
                        }
                        continue;
                    }
                }
                let keys = &fleet.outbox.keys;
                let leave = if keys.holds_none() { !own_serving } else { keys.every_key_deferred_on(generation) };
                if !leave {
                    continue;
                }
                for url in config.controllers.iter().filter(|url| *url != current) {
                    if hangar_agent::serves(url, &config.credentials, DRONE_SERVICE, ELSEWHERE_WAIT).await {
                        return url.clone();
                    }
                }
            }
        };
        tokio::select! {
            _ = reader => unreachable!("the reader never ends by itself"),
            _ = heartbeats => unreachable!("heartbeats never end by themselves"),
            timeout = stuck => {
                tracing::warn!(?timeout, "the controller answered no key renewal in time; moving to another");
                anyhow::bail!("the controller answered no key renewal within {timeout:?}")
            }
            url = elsewhere => {
                tracing::warn!(controller = %url, "the controller cannot reach its store and another can; moving");
                anyhow::bail!("the controller cannot reach its store, and {url} can")
            }
            result = handle(fleet, tx, &mut queue) => result,
        }
    }
}

/// The next status of a health watch: whether the service is SERVING; `None` when the watch
/// ended or failed. Never resolves without a watch.
async fn next_status(watch: &mut Option<tonic::Streaming<HealthCheckResponse>>) -> Option<bool> {
    let Some(stream) = watch else { return std::future::pending().await };
    let status = stream.message().await.ok().flatten()?;
    Some(status.status() == ServingStatus::Serving)
}

/// Journaled events out; actions and acks in, from `queue`.
async fn handle(
    fleet: &Arc<Fleet>,
    tx: &mpsc::Sender<v1::DroneAttachRequest>,
    queue: &mut mpsc::Receiver<Inbound>,
) -> anyhow::Result<()> {
    use v1::drone_attach_request::Message;
    use v1::drone_attach_response::Message as Reply;

    let send = |message: Message| async move {
        tx.send(v1::DroneAttachRequest { message: Some(message) })
            .await
            .map_err(|_| anyhow::anyhow!("the stream to the controller closed"))
    };
    let journal = &fleet.outbox.journal;
    let mut written = fleet.outbox.written.subscribe();
    // Every attach starts from the beginning of the journal: whatever is still there was not
    // acknowledged, whichever controller it was sent to.
    let mut cursor = 0;
    // Events sent on this stream and not yet acknowledged (the controller acknowledges every one,
    // in order, on the stream it came on).
    let mut unacked = 0;
    // A message taken from the queue while gathering acknowledgements, handled next.
    let mut next: Option<Inbound> = None;
    loop {
        written.borrow_and_update();
        while unacked < EVENT_WINDOW {
            let limit = EVENT_WINDOW - unacked;
            let batch = journal.events_after(cursor, limit).await?;
            let full = batch.len() as i64 == limit;
            for (seq, event) in batch {
                send(Message::BackendEvent(event)).await?;
                cursor = seq;
                unacked += 1;
            }
            if !full {
                break;
            }
        }
        let message = match next.take() {
            Some(message) => Some(message),
            None => tokio::select! {
                _ = written.changed() => continue,
                message = queue.recv() => message,
            },
        };
        match message {
            Some(Ok(reply)) => match reply {
                Reply::Action(action) => {
                    let action_id = action.action_id.clone();
                    // Journaled (and started) before the ack, so a crash cannot lose it.
                    fleet.handle_action(action).await?;
                    send(Message::AckAction(v1::AckAction { action_id })).await?;
                }
                Reply::AckEvent(ack) => {
                    // The acknowledgements waiting behind it go in the same journal commit.
                    let mut acked = vec![ack.event_id];
                    while acked.len() < ACK_BATCH {
                        match queue.try_recv() {
                            Ok(Ok(Reply::AckEvent(ack))) => acked.push(ack.event_id),
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    journal.ack_events(&acked).await?;
                    unacked = (unacked - acked.len() as i64).max(0);
                }
                Reply::Welcome(_) => tracing::warn!("unexpected second welcome; ignoring it"),
                // The reader answers these itself.
                Reply::RenewKeyResponse(_) | Reply::RenewKeysResponse(_) => {}
            },
            Some(Err(status)) => return Err(anyhow::anyhow!("{}: {}", status.code(), status.message())),
            None => return Ok(()),
        }
    }
}
