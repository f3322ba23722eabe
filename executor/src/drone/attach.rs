//! The drone's side of one `DroneService.Attach` stream: Hello, Welcome, then heartbeats and
//! journaled events out, actions, acks and renewal answers in. Moving between controllers is
//! [`hangar_agent::attach::attach_forever`]'s job; this file is what happens on one stream.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hangar::domain::duration_from_proto;
use hangar::v1::{self, drone_service_client::DroneServiceClient};
use hangar_agent::HostResources;
use hangar_agent::attach::{Attach, Attempt, StreamEnd};
use hangar_client::HangarChannel;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::fleet::Fleet;
use super::{AttachState, DroneConfig};

/// Events sent per journal read; keeps one replay from holding a huge batch in memory.
const EVENT_BATCH: i64 = 256;

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
        let mut client = DroneServiceClient::new(channel);
        let (tx, rx) = mpsc::channel(64);
        let hello = v1::DroneHello {
            name: config.name.clone(),
            cluster: config.cluster.clone(),
            pool: config.pool.clone(),
            version: hangar::VERSION.to_string(),
            labels: config.labels.clone().into_iter().collect(),
            backend_capacity: config.backend_capacity,
            resources: Some(self.host.sample().into()),
            runtime: config.runtime.as_ref().map_or("none", |r| r.kind().as_str()).to_string(),
        };
        tx.send(v1::DroneAttachRequest { message: Some(Message::Hello(hello)) }).await?;
        // The status itself is the error, so that `stream` can tell a refusal from a transient
        // failure.
        let mut inbound = client.attach(ReceiverStream::new(rx)).await?.into_inner();

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
        let generation = outbox.stream.attach(tx.clone());
        let result = self.attached(&tx, &mut inbound, interval, generation).await;
        outbox.stream.detach(generation);
        result
    }

    /// The attached part of a stream: heartbeats, journaled events out (all unacknowledged ones
    /// first, in order), actions, acks and renewal answers in.
    async fn attached(
        &mut self,
        tx: &mpsc::Sender<v1::DroneAttachRequest>,
        inbound: &mut tonic::Streaming<v1::DroneAttachResponse>,
        interval: Duration,
        generation: u64,
    ) -> anyhow::Result<()> {
        use v1::drone_attach_request::Message;
        use v1::drone_attach_response::Message as Reply;

        let send = |message: Message| async move {
            tx.send(v1::DroneAttachRequest { message: Some(message) })
                .await
                .map_err(|_| anyhow::anyhow!("the stream to the controller closed"))
        };
        let fleet = self.fleet;
        let journal = &fleet.outbox.journal;
        let mut written = fleet.outbox.written.subscribe();
        // Every attach starts from the beginning of the journal: whatever is still there was not
        // acknowledged, whichever controller it was sent to.
        let mut cursor = 0;
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            written.borrow_and_update();
            loop {
                let batch = journal.events_after(cursor, EVENT_BATCH).await?;
                let full = batch.len() as i64 == EVENT_BATCH;
                for (seq, event) in batch {
                    send(Message::BackendEvent(event)).await?;
                    cursor = seq;
                }
                if !full {
                    break;
                }
            }
            tokio::select! {
                _ = ticker.tick() => {
                    let heartbeat = v1::DroneHeartbeat {
                        local_time: Some(hangar::domain::timestamp_to_proto(chrono::Utc::now())),
                        resources: Some(self.host.sample().into()),
                        backend_count: fleet.live_count(),
                    };
                    send(Message::Heartbeat(heartbeat)).await?;
                }
                _ = written.changed() => {}
                message = inbound.message() => match message {
                    Ok(Some(v1::DroneAttachResponse { message: Some(reply) })) => match reply {
                        Reply::Action(action) => {
                            let action_id = action.action_id.clone();
                            // Journaled (and started) before the ack, so a crash cannot lose it.
                            fleet.handle_action(action).await?;
                            send(Message::AckAction(v1::AckAction { action_id })).await?;
                        }
                        Reply::AckEvent(ack) => journal.ack_event(&ack.event_id).await?,
                        Reply::RenewKeyResponse(answer) => fleet.renewal_answer(generation, answer),
                        Reply::Welcome(_) => tracing::warn!("unexpected second welcome; ignoring it"),
                    },
                    Ok(Some(_)) => tracing::debug!("empty message from the controller"),
                    Ok(None) => return Ok(()),
                    Err(status) => return Err(anyhow::anyhow!("{}: {}", status.code(), status.message())),
                }
            }
        }
    }
}
