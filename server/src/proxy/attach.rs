//! The proxy's side of one `ProxyService.Attach` stream: registration as a PROXY node,
//! heartbeats, batched traffic reports for the idle sweep, and route invalidations. Moving between
//! controllers is [`hangar_agent::attach::attach_forever`]'s job; this file is what happens on one
//! stream.

use std::convert::Infallible;
use std::sync::Arc;

use hangar::domain::duration_from_proto;
use hangar::v1::{self, proxy_service_client::ProxyServiceClient};
use hangar_agent::HostResources;
use hangar_agent::admin::AttachedTo;
use hangar_agent::attach::{Attach, Attempt, StreamEnd};
use hangar_client::HangarChannel;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::traffic::Traffic;
use super::{ProxyConfig, RouteCache};

/// What every stream of one proxy shares, including one [`HostResources`] for its whole life, so
/// CPU usage is measured between heartbeats even across a reconnect.
pub struct ProxyAttach {
    config: ProxyConfig,
    public_url: String,
    routes: Arc<RouteCache>,
    traffic: Arc<Traffic>,
    host: HostResources,
    /// The controller this proxy is attached to right now, for its `/readyz`.
    attached: watch::Sender<Option<AttachedTo>>,
}

impl ProxyAttach {
    pub fn new(
        config: ProxyConfig,
        public_url: String,
        routes: Arc<RouteCache>,
        traffic: Arc<Traffic>,
        attached: watch::Sender<Option<AttachedTo>>,
    ) -> Self {
        ProxyAttach { config, public_url, routes, traffic, host: HostResources::new(), attached }
    }
}

impl Attach for ProxyAttach {
    /// A proxy retries forever.
    type Refusal = Infallible;
    const AGENT: &'static str = "proxy";

    async fn stream(&mut self, attempt: &mut Attempt<'_>, channel: HangarChannel) -> StreamEnd<Infallible> {
        let end = self.attach(attempt, channel).await;
        self.attached.send_replace(None);
        end.into()
    }
}

impl ProxyAttach {
    /// One stream, from the hello to its end.
    async fn attach(&mut self, attempt: &mut Attempt<'_>, channel: HangarChannel) -> anyhow::Result<()> {
        use v1::proxy_attach_request::Message;
        use v1::proxy_attach_response::Message as Reply;

        let mut client = ProxyServiceClient::new(channel);
        let (tx, rx) = mpsc::channel(16);
        let hello = v1::ProxyHello {
            name: self.config.name.clone(),
            cluster: self.config.cluster.clone(),
            version: hangar::VERSION.to_string(),
            labels: Default::default(),
            public_url: self.public_url.clone(),
            resources: Some(self.host.sample().into()),
        };
        tx.send(v1::ProxyAttachRequest { message: Some(Message::Hello(hello)) }).await?;
        let mut inbound = client.attach(ReceiverStream::new(rx)).await?.into_inner();
        let welcome = match inbound.message().await? {
            Some(v1::ProxyAttachResponse { message: Some(Reply::Welcome(welcome)) }) => welcome,
            other => anyhow::bail!("expected a welcome, got {other:?}"),
        };
        tracing::info!(node_id = %welcome.node_id, controller = %attempt.controller(), "proxy attached");
        let to = AttachedTo { controller: attempt.controller().to_string(), node_id: welcome.node_id.clone() };
        self.attached.send_replace(Some(to));
        attempt.welcomed();
        // The controller's interval, which its liveness timeouts count in; ours only for a
        // controller that does not say.
        let interval = welcome.heartbeat_interval.as_ref().and_then(duration_from_proto);
        let mut heartbeat = tokio::time::interval(interval.unwrap_or(self.config.heartbeat_interval));
        let mut report = tokio::time::interval(self.config.traffic_report_interval);
        loop {
            tokio::select! {
                _ = heartbeat.tick() => {
                    let hb = v1::ProxyHeartbeat { local_time: None, resources: Some(self.host.sample().into()) };
                    tx.send(v1::ProxyAttachRequest { message: Some(Message::Heartbeat(hb)) }).await?;
                }
                _ = report.tick() => {
                    let backend_ids = self.traffic.take();
                    if !backend_ids.is_empty() {
                        let report = v1::TrafficReport { backend_ids: backend_ids.clone() };
                        if tx.send(v1::ProxyAttachRequest { message: Some(Message::Traffic(report)) }).await.is_err() {
                            self.traffic.restore(backend_ids);
                            anyhow::bail!("the stream to the controller closed");
                        }
                    }
                }
                message = inbound.message() => match message? {
                    Some(v1::ProxyAttachResponse { message: Some(Reply::Invalidate(invalidation)) }) => {
                        tracing::debug!(backend_id = %invalidation.backend_id, "route invalidated");
                        self.routes.invalidate_backend(&invalidation.backend_id);
                    }
                    Some(other) => tracing::debug!(?other, "unexpected message from the controller"),
                    None => return Ok(()),
                }
            }
        }
    }
}
