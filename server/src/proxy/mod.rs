//! The HTTP data plane: `http://PROXY/{token}/rest…` reaches the backend behind the token as
//! `/rest…`. Routes come from the controller (`ProxyService.LookupRoute`), are cached, and are
//! dropped when the controller says the backend went away; traffic is reported back in batches
//! for the idle sweep. HTTP/1.1 and HTTP/2 (h2c) from clients, WebSocket upgrades passed through
//! both ways, bodies streamed without buffering.

mod forward;
mod link;
mod routes;

pub use forward::ProxyError;
pub use routes::{Route, RouteCache};

use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Controller URLs; lookups are balanced over them and the attach stream moves between them.
    pub controllers: Vec<String>,
    /// Name of this proxy node, unique in its cluster.
    pub name: String,
    pub cluster: String,
    /// Base URL clients reach this proxy at (recorded on its node). Default: `http://LISTEN`.
    pub public_url: Option<String>,
    /// How long a looked-up route is trusted before it is looked up again.
    pub route_ttl: Duration,
    /// How long a request for a backend that is still starting waits for it to become READY.
    pub startup_wait: Duration,
    /// How often backends that carried traffic are reported to the controller.
    pub traffic_report_interval: Duration,
    pub heartbeat_interval: Duration,
}

impl ProxyConfig {
    pub fn new(controllers: Vec<String>, name: impl Into<String>) -> Self {
        ProxyConfig {
            controllers,
            name: name.into(),
            cluster: "default".into(),
            public_url: None,
            route_ttl: Duration::from_secs(5),
            startup_wait: Duration::from_secs(30),
            traffic_report_interval: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(5),
        }
    }
}

/// A serving proxy; stop it with [`RunningProxy::shutdown`].
pub struct RunningProxy {
    local_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl RunningProxy {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// Stops accepting, lets open requests finish (5 s at most), ends the controller link.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await.is_err() {
            tracing::warn!("open proxy connections outlived the shutdown grace");
        }
    }
}

pub struct Proxy;

impl Proxy {
    pub async fn start(config: ProxyConfig, listener: TcpListener) -> anyhow::Result<RunningProxy> {
        anyhow::ensure!(!config.controllers.is_empty(), "the proxy needs at least one controller URL");
        let local_addr = listener.local_addr()?;
        let public_url = config.public_url.clone().unwrap_or_else(|| format!("http://{local_addr}"));
        let lookups = link::lookup_channel(&config.controllers).context("invalid controller URL")?;
        let routes = Arc::new(RouteCache::new(lookups, config.route_ttl));
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let forwarder = Arc::new(forward::Forwarder::new(routes.clone(), config.startup_wait));

        tasks.spawn(link::run(
            config.clone(),
            public_url.clone(),
            routes.clone(),
            forwarder.traffic(),
            shutdown.clone(),
        ));
        tasks.spawn(serve(listener, forwarder, tasks.clone(), shutdown.clone()));
        tracing::info!(%local_addr, %public_url, "proxy serving");
        Ok(RunningProxy { local_addr, shutdown, tasks })
    }
}

async fn serve(
    listener: TcpListener,
    forwarder: Arc<forward::Forwarder>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let forwarder = forwarder.clone();
        let service = hyper::service::service_fn(move |req| {
            let forwarder = forwarder.clone();
            async move { Ok::<_, std::convert::Infallible>(forwarder.handle(req, peer).await) }
        });
        let connection = auto::Builder::new(TokioExecutor::new())
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tasks.spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%peer, error = %err, "client connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
