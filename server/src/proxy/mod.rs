//! The HTTP data plane: `http://PROXY/{token}/rest…` reaches the backend behind the token as
//! `/rest…`. Routes come from the controller (`ProxyService.LookupRoute`), are cached, and are
//! dropped when the controller says the backend went away; traffic is reported back in batches
//! for the idle sweep. HTTP/1.1 and HTTP/2 (h2c) from clients, WebSocket upgrades passed through
//! both ways (HTTP/1.1 upgrades, and HTTP/2 extended CONNECT as RFC 8441 has it), bodies
//! streamed without buffering.

mod attach;
mod forward;
mod routes;
mod traffic;

pub use crate::tls::TlsFiles;
pub use forward::ProxyError;
pub use routes::{Route, RouteCache};

use attach::ProxyAttach;
use hangar_agent::admin::{AdminServer, AttachedTo, Readiness};
use hangar_agent::attach::attach_forever;
use hangar_agent::{Backoff, check_controllers, controller_endpoint};
use hangar_client::{Credentials, HangarChannel};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Controller URLs; lookups go round-robin over them, failing over at once, and the attach
    /// stream moves between them.
    pub controllers: Vec<String>,
    /// Token and TLS towards the controllers (`https://` URLs).
    pub credentials: Credentials,
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
    /// Serve HTTPS with this certificate and key instead of plain HTTP.
    pub tls: Option<TlsFiles>,
    /// Where the admin listener serves `/metrics`, `/healthz` and `/readyz` (ready = attached
    /// to a controller); `None` serves none.
    pub admin_listen: Option<SocketAddr>,
}

impl ProxyConfig {
    pub fn new(controllers: Vec<String>, name: impl Into<String>) -> Self {
        ProxyConfig {
            controllers,
            credentials: Credentials::default(),
            name: name.into(),
            cluster: "default".into(),
            public_url: None,
            route_ttl: Duration::from_secs(5),
            startup_wait: Duration::from_secs(30),
            traffic_report_interval: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(5),
            tls: None,
            admin_listen: None,
        }
    }
}

/// A serving proxy; stop it with [`RunningProxy::shutdown`].
pub struct RunningProxy {
    local_addr: SocketAddr,
    scheme: &'static str,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    attached: watch::Receiver<Option<AttachedTo>>,
    admin: Option<AdminServer>,
}

impl RunningProxy {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.local_addr)
    }

    /// `http://ADDR` of the admin listener, if it serves one.
    pub fn admin_url(&self) -> Option<String> {
        self.admin.as_ref().map(AdminServer::url)
    }

    /// The proxy's readiness: attached to a controller (which one, as which node).
    pub fn readiness(&self) -> Readiness {
        readiness(self.attached.clone())
    }

    /// Stops accepting, lets open requests finish (5 s at most), ends the attach stream.
    pub async fn shutdown(self) {
        if let Some(admin) = self.admin {
            admin.shutdown().await;
        }
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
        // A bad certificate fails the start, not the first client; so do unusable credentials
        // towards the controllers.
        let tls = config.tls.as_ref().map(crate::tls::proxy_acceptor).transpose()?;
        check_controllers(&config.controllers, &config.credentials)?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let public_url = config.public_url.clone().unwrap_or_else(|| format!("{scheme}://{local_addr}"));
        let lookups = lookup_channels(&config.controllers, &config.credentials)?;
        let routes = Arc::new(RouteCache::new(lookups, config.route_ttl));
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let forwarder =
            Arc::new(forward::Forwarder::new(routes.clone(), config.startup_wait, tasks.clone(), shutdown.clone()));

        let (attached_tx, attached) = watch::channel(None);
        let mut attach =
            ProxyAttach::new(config.clone(), public_url.clone(), routes.clone(), forwarder.traffic(), attached_tx);
        let (controllers, credentials, stop) =
            (config.controllers.clone(), config.credentials.clone(), shutdown.clone());
        tasks.spawn(async move {
            // A proxy never gives up (its refusal type is Infallible): only the shutdown ends this.
            let Ok(()) = attach_forever(&controllers, &credentials, Backoff::default(), &mut attach, &stop).await;
        });
        let admin = match config.admin_listen {
            Some(addr) => {
                hangar_agent::admin::metrics_handle();
                hangar_agent::admin::describe(crate::metrics::PROXY);
                let router = hangar_agent::admin::router(readiness(attached.clone()));
                match AdminServer::bind(addr, router).await {
                    Ok(admin) => Some(admin),
                    Err(err) => {
                        shutdown.cancel();
                        return Err(err);
                    }
                }
            }
            None => None,
        };
        tasks.spawn(serve(listener, tls, forwarder, tasks.clone(), shutdown.clone()));
        tracing::info!(%local_addr, %public_url, "proxy serving");
        Ok(RunningProxy { local_addr, scheme, shutdown, tasks, attached, admin })
    }
}

/// Ready when attached to a controller.
fn readiness(attached: watch::Receiver<Option<AttachedTo>>) -> Readiness {
    Readiness::new(move || {
        let check = AttachedTo::check("proxy", attached.borrow().as_ref());
        async move { vec![check] }
    })
}

/// A channel to each controller (connected on first use), for route lookups.
fn lookup_channels(controllers: &[String], credentials: &Credentials) -> anyhow::Result<Vec<(String, HangarChannel)>> {
    controllers
        .iter()
        .map(|url| Ok((url.clone(), credentials.authorize(controller_endpoint(url, credentials)?.connect_lazy())?)))
        .collect()
}

async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    forwarder: Arc<forward::Forwarder>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
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
        let (forwarder, tls, stop) = (forwarder.clone(), tls.clone(), shutdown.clone());
        tasks.spawn(async move {
            let result = match tls {
                // The handshake runs in the connection's task so a slow client cannot stall accept.
                Some(tls) => match tokio::time::timeout(Duration::from_secs(10), tls.accept(stream)).await {
                    Ok(Ok(stream)) => serve_connection(stream, peer, forwarder, stop).await,
                    Ok(Err(err)) => {
                        tracing::debug!(%peer, error = %err, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
                None => serve_connection(stream, peer, forwarder, stop).await,
            };
            if let Err(err) = result {
                tracing::debug!(%peer, error = %err, "client connection ended with an error");
            }
        });
    }
}

async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    forwarder: Arc<forward::Forwarder>,
    stop: CancellationToken,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(forward::Conn::new(peer));
    let service = hyper::service::service_fn(move |req| {
        let (forwarder, conn) = (forwarder.clone(), conn.clone());
        async move { Ok::<_, std::convert::Infallible>(forwarder.handle(req, &conn).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // WebSockets over HTTP/2 (RFC 8441): SETTINGS_ENABLE_CONNECT_PROTOCOL, and `:protocol` on
    // requests.
    builder.http2().enable_connect_protocol();
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => return result,
        _ = stop.cancelled() => {}
    }
    // Shutting down: finish the requests in flight (HTTP/2 GOAWAY, HTTP/1 close after the
    // response), accept no new ones.
    connection.as_mut().graceful_shutdown();
    connection.await
}
