//! The executor socket's server side: any [`Runtime`] exposed as `hangar.executor.v1` on a Unix domain socket.
//!
//! The socket is local-only and guarded three ways: its directory is 0700 (nobody else can even
//! reach the file), the file is 0600, and every connection's peer uid (SO_PEERCRED) is checked
//! against an allow-list. A connection must handshake before any executor call; server
//! reflection (for `grpcurl -unix`) needs only an allowed peer.
//!
//! Any gRPC client is served with its default options: what a client sends passes through an
//! `:authority` rewrite below HTTP/2 (`authority.rs`), since grpc-core and grpc-java name the
//! socket path there, which tonic's HTTP/2 layer would refuse.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt};
use hangar::executor::v1::executor_service_server::{ExecutorService, ExecutorServiceServer};
use hangar::executor::v1::*;
use hangar::executor::{PROTOCOL_MAJOR, PROTOCOL_MINOR};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::DEFAULT_MAX_MESSAGE_BYTES;
use crate::runtime::{BackendSpec, Capability, PullPolicy, Runtime, RuntimeError};

mod authority;
mod listener;
mod reflection;
mod validate;

pub use self::listener::{MAX_SOCKET_PATH_BYTES, PeerConnection, PeerInfo, SocketError, bind_socket};

/// Shortest stats interval a client may ask for.
const MIN_STATS_INTERVAL: Duration = Duration::from_millis(100);

/// How the server runs.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Peer uids allowed to connect; empty = only the executor's own uid.
    pub allowed_uids: Vec<u32>,
    pub max_message_bytes: usize,
    /// Name reported in the handshake.
    pub executor_name: String,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            allowed_uids: Vec::new(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            executor_name: "hangar-executor".into(),
        }
    }
}

/// Serves `runtime` on `listener` until `shutdown` resolves, then drains: open event and stats
/// streams are ended, in-flight calls finish, and the runtime is shut down.
pub async fn serve(
    listener: UnixListener,
    runtime: Arc<dyn Runtime>,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    // Removed again after a graceful shutdown, so the next start finds no stale file.
    let socket_path = listener.local_addr().ok().and_then(|a| a.as_pathname().map(Path::to_path_buf));
    let allowed: Vec<u32> = if options.allowed_uids.is_empty() {
        vec![nix::unistd::getuid().as_raw()]
    } else {
        options.allowed_uids.clone()
    };
    let streams_done = CancellationToken::new();
    let service = ExecutorServiceImpl {
        runtime: runtime.clone(),
        executor_name: options.executor_name.clone(),
        allowed: allowed.clone(),
        streams_done: streams_done.clone(),
    };
    let (reflection_v1, reflection_v1alpha) = reflection::services(allowed.clone());
    let incoming = futures::stream::unfold(listener, move |listener| {
        let allowed = allowed.clone();
        async move {
            let accepted = listener.accept().await;
            if let Err(err) = &accepted {
                // tonic skips the error and accepts again; pausing keeps e.g. EMFILE from spinning.
                tracing::warn!(%err, "accepting an executor connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let accepted = accepted.map(|(stream, _)| {
                let cred = stream.peer_cred().ok();
                let uid = cred.map(|c| c.uid());
                let allowed = uid.is_some_and(|uid| allowed.contains(&uid));
                if !allowed {
                    tracing::warn!(?uid, "refusing executor peer: uid not in the allow-list");
                }
                PeerConnection::new(
                    stream,
                    PeerInfo {
                        uid,
                        pid: cred.and_then(|c| c.pid()),
                        allowed,
                        handshaken: Arc::new(AtomicBool::new(false)),
                    },
                )
            });
            Some((accepted, listener))
        }
    });
    let server = ExecutorServiceServer::new(service)
        .max_decoding_message_size(options.max_message_bytes)
        .max_encoding_message_size(options.max_message_bytes);
    let shutdown = async move {
        shutdown.await;
        // Streams never end by themselves; without this the graceful shutdown would wait forever.
        streams_done.cancel();
    };
    let result = tonic::transport::Server::builder()
        // A span per call, continuing the drone's trace from the call's `traceparent` metadata.
        .layer(hangar_agent::telemetry::GrpcTraceLayer)
        // A request over the message limit is RESOURCE_EXHAUSTED, as on the controller.
        .layer(hangar_agent::oversized::OversizedRequestLayer)
        .add_service(server)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    runtime.shutdown().await;
    if let Some(path) = socket_path {
        let _ = std::fs::remove_file(path);
    }
    result
}

struct ExecutorServiceImpl {
    runtime: Arc<dyn Runtime>,
    executor_name: String,
    allowed: Vec<u32>,
    streams_done: CancellationToken,
}

type BoxedStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl ExecutorServiceImpl {
    /// Every call but the handshake passes here: allowed peer, handshake done.
    fn admit<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let peer = self.peer(request)?;
        if !peer.handshaken.load(Ordering::Acquire) {
            return Err(RuntimeError::HandshakeRequired("call Handshake first on this connection".into()).into());
        }
        Ok(())
    }

    fn peer<'a, T>(&self, request: &'a Request<T>) -> Result<&'a PeerInfo, Status> {
        allowed_peer(request.extensions(), &self.allowed)
    }

    fn require(&self, capability: Capability, what: &str) -> Result<(), Status> {
        if self.runtime.capabilities().contains(&capability) {
            Ok(())
        } else {
            Err(RuntimeError::Unsupported(format!("{what} is not supported by the {} runtime", self.runtime.kind()))
                .into())
        }
    }
}

/// The peer of a request, if its uid is allowed; PERMISSION_DENIED otherwise. Every service on
/// the socket checks it on every call.
fn allowed_peer<'a>(extensions: &'a tonic::Extensions, allowed: &[u32]) -> Result<&'a PeerInfo, Status> {
    let peer = extensions
        .get::<PeerInfo>()
        .ok_or_else(|| Status::from(RuntimeError::internal("connection without peer information")))?;
    if !peer.allowed {
        let uid = peer.uid.map_or("unknown".to_string(), |u| u.to_string());
        return Err(RuntimeError::PermissionDenied(format!(
            "peer uid {uid} may not use this executor (allowed: {allowed:?})"
        ))
        .into());
    }
    Ok(peer)
}

fn backend_id_arg(id: &str) -> Result<(), Status> {
    crate::runtime::validate_backend_id(id).map_err(Status::from)
}

#[tonic::async_trait]
impl ExecutorService for ExecutorServiceImpl {
    async fn handshake(&self, request: Request<HandshakeRequest>) -> Result<Response<HandshakeResponse>, Status> {
        let peer = self.peer(&request)?.clone();
        let req = request.into_inner();
        if req.protocol_major != PROTOCOL_MAJOR {
            return Err(RuntimeError::VersionMismatch(format!(
                "client speaks hangar.executor.v{}, this executor speaks v{PROTOCOL_MAJOR}",
                req.protocol_major
            ))
            .into());
        }
        peer.handshaken.store(true, Ordering::Release);
        tracing::info!(client = req.client_name, version = req.client_version, uid = ?peer.uid, pid = ?peer.pid, "executor handshake");
        Ok(Response::new(HandshakeResponse {
            protocol_major: PROTOCOL_MAJOR,
            protocol_minor: PROTOCOL_MINOR,
            executor_name: self.executor_name.clone(),
            executor_version: hangar::VERSION.to_string(),
            runtime_kind: self.runtime.kind().as_str().to_string(),
            capabilities: self.runtime.capabilities().into_iter().map(|c| c.to_proto().into()).collect(),
        }))
    }

    async fn status(&self, request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        self.admit(&request)?;
        let conditions = self.runtime.status().await.iter().map(|c| c.to_proto()).collect();
        Ok(Response::new(StatusResponse { conditions }))
    }

    async fn prepare_image(
        &self,
        request: Request<PrepareImageRequest>,
    ) -> Result<Response<PrepareImageResponse>, Status> {
        self.admit(&request)?;
        self.require(Capability::PrepareImage, "PrepareImage")?;
        let req = request.into_inner();
        validate::image(&req.image)?;
        // UNSPECIFIED means the default.
        let policy = match req.pull_policy {
            0 => PullPolicy::default(),
            value => PullPolicy::from_executor_proto(value)
                .ok_or_else(|| RuntimeError::invalid_spec("pull_policy", format!("unknown pull policy {value}")))?,
        };
        let ready = self.runtime.prepare_image(&req.image, policy).await?;
        Ok(Response::new(PrepareImageResponse { image_id: ready.image_id, pulled: ready.pulled }))
    }

    async fn start_backend(
        &self,
        request: Request<StartBackendRequest>,
    ) -> Result<Response<StartBackendResponse>, Status> {
        self.admit(&request)?;
        let spec =
            request.into_inner().spec.ok_or_else(|| Status::from(RuntimeError::invalid_spec("spec", "required")))?;
        let spec = BackendSpec::from_proto(spec)?;
        validate::spec(&spec)?;
        let started = self.runtime.start(spec).await?;
        Ok(Response::new(StartBackendResponse { runtime_id: started.runtime_id, address: started.address }))
    }

    async fn stop_backend(
        &self,
        request: Request<StopBackendRequest>,
    ) -> Result<Response<StopBackendResponse>, Status> {
        self.admit(&request)?;
        let req = request.into_inner();
        backend_id_arg(&req.backend_id)?;
        let grace = validate::duration("grace", req.grace)?;
        self.runtime.stop(&req.backend_id, grace).await?;
        Ok(Response::new(StopBackendResponse {}))
    }

    async fn remove_backend(
        &self,
        request: Request<RemoveBackendRequest>,
    ) -> Result<Response<RemoveBackendResponse>, Status> {
        self.admit(&request)?;
        let req = request.into_inner();
        backend_id_arg(&req.backend_id)?;
        self.runtime.remove(&req.backend_id).await?;
        Ok(Response::new(RemoveBackendResponse {}))
    }

    async fn inspect_backend(
        &self,
        request: Request<InspectBackendRequest>,
    ) -> Result<Response<InspectBackendResponse>, Status> {
        self.admit(&request)?;
        let req = request.into_inner();
        backend_id_arg(&req.backend_id)?;
        let info = self.runtime.inspect(&req.backend_id).await?;
        Ok(Response::new(InspectBackendResponse { backend: Some(info.to_proto()) }))
    }

    async fn list_backends(
        &self,
        request: Request<ListBackendsRequest>,
    ) -> Result<Response<ListBackendsResponse>, Status> {
        self.admit(&request)?;
        let backends = self.runtime.list().await?.iter().map(|b| b.to_proto()).collect();
        Ok(Response::new(ListBackendsResponse { backends }))
    }

    type WatchEventsStream = BoxedStream<WatchEventsResponse>;

    async fn watch_events(
        &self,
        request: Request<WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        self.admit(&request)?;
        self.require(Capability::Events, "WatchEvents")?;
        let events = self.runtime.events().await?;
        let done = self.streams_done.clone();
        let stream = events
            .map(|item| item.map(|event| WatchEventsResponse { event: Some(event.to_proto()) }).map_err(Status::from))
            .take_until(done.cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }

    type StreamStatsStream = BoxedStream<StreamStatsResponse>;

    async fn stream_stats(
        &self,
        request: Request<StreamStatsRequest>,
    ) -> Result<Response<Self::StreamStatsStream>, Status> {
        self.admit(&request)?;
        self.require(Capability::Stats, "StreamStats")?;
        let req = request.into_inner();
        backend_id_arg(&req.backend_id)?;
        let interval = validate::duration("interval", req.interval)?.max(MIN_STATS_INTERVAL);
        let stats = self.runtime.stats(&req.backend_id, interval).await?;
        let done = self.streams_done.clone();
        let stream = stats
            .map(|item| item.map(|stats| StreamStatsResponse { stats: Some(stats.to_proto()) }).map_err(Status::from))
            .take_until(done.cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }
}
