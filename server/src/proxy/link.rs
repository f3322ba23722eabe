//! The proxy's link to the controllers: registration as a PROXY node, heartbeats, batched traffic
//! reports for the idle sweep, and route invalidations.

use super::{ProxyConfig, RouteCache};
use hangar::v1::{self, proxy_service_client::ProxyServiceClient};
use hangar_executor::drone::{Backoff, HostResources};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

/// A channel balanced over every controller, for route lookups.
pub fn lookup_channel(controllers: &[String]) -> Result<Channel, tonic::transport::Error> {
    let endpoints = controllers
        .iter()
        .map(|url| Ok(Endpoint::from_shared(url.clone())?.connect_timeout(std::time::Duration::from_secs(5))))
        .collect::<Result<Vec<_>, tonic::transport::Error>>()?;
    Ok(Channel::balance_list(endpoints.into_iter()))
}

/// Backends that carried traffic since the last report.
#[derive(Default)]
pub struct Traffic(Mutex<HashSet<String>>);

impl Traffic {
    pub fn record(&self, backend_id: &str) {
        let mut seen = self.0.lock().unwrap();
        if !seen.contains(backend_id) {
            seen.insert(backend_id.to_string());
        }
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap()).into_iter().collect()
    }

    /// A report that could not be sent goes into the next one.
    fn restore(&self, ids: Vec<String>) {
        self.0.lock().unwrap().extend(ids);
    }
}

pub async fn run(
    config: ProxyConfig,
    public_url: String,
    routes: Arc<RouteCache>,
    traffic: Arc<Traffic>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::default();
    let mut next = 0;
    loop {
        let controller = &config.controllers[next % config.controllers.len()];
        next += 1;
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = session(&config, controller, &public_url, &routes, &traffic, &mut backoff) => result,
        };
        let delay = backoff.next_delay();
        match result {
            Ok(()) => tracing::warn!(%controller, retry_in = ?delay, "controller closed the proxy stream"),
            Err(err) => tracing::warn!(%controller, retry_in = ?delay, "proxy link failed: {err:#}"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

async fn session(
    config: &ProxyConfig,
    controller: &str,
    public_url: &str,
    routes: &RouteCache,
    traffic: &Traffic,
    backoff: &mut Backoff,
) -> anyhow::Result<()> {
    use v1::proxy_attach_request::Message;
    use v1::proxy_attach_response::Message as Reply;

    let channel = Endpoint::from_shared(controller.to_string())?
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await?;
    let mut client = ProxyServiceClient::new(channel);
    let mut host = HostResources::new();
    let (tx, rx) = mpsc::channel(16);
    let hello = v1::ProxyHello {
        name: config.name.clone(),
        cluster: config.cluster.clone(),
        version: hangar::VERSION.to_string(),
        labels: Default::default(),
        public_url: public_url.to_string(),
        resources: Some(host.sample().into()),
    };
    tx.send(v1::ProxyAttachRequest { message: Some(Message::Hello(hello)) }).await?;
    let mut inbound = client.attach(ReceiverStream::new(rx)).await?.into_inner();
    match inbound.message().await? {
        Some(v1::ProxyAttachResponse { message: Some(Reply::Welcome(welcome)) }) => {
            tracing::info!(node_id = %welcome.node_id, %controller, "proxy attached");
        }
        other => anyhow::bail!("expected a welcome, got {other:?}"),
    }
    backoff.reset();
    let mut heartbeat = tokio::time::interval(config.heartbeat_interval);
    let mut report = tokio::time::interval(config.traffic_report_interval);
    loop {
        tokio::select! {
            _ = heartbeat.tick() => {
                let hb = v1::ProxyHeartbeat { local_time: None, resources: Some(host.sample().into()) };
                tx.send(v1::ProxyAttachRequest { message: Some(Message::Heartbeat(hb)) }).await?;
            }
            _ = report.tick() => {
                let backend_ids = traffic.take();
                if !backend_ids.is_empty() {
                    let report = v1::TrafficReport { backend_ids: backend_ids.clone() };
                    if tx.send(v1::ProxyAttachRequest { message: Some(Message::Traffic(report)) }).await.is_err() {
                        traffic.restore(backend_ids);
                        anyhow::bail!("the stream to the controller closed");
                    }
                }
            }
            message = inbound.message() => match message? {
                Some(v1::ProxyAttachResponse { message: Some(Reply::Invalidate(invalidation)) }) => {
                    tracing::debug!(backend_id = %invalidation.backend_id, "route invalidated");
                    routes.invalidate_backend(&invalidation.backend_id);
                }
                Some(other) => tracing::debug!(?other, "unexpected message from the controller"),
                None => return Ok(()),
            }
        }
    }
}
