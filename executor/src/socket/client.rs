//! The executor socket's client side, used by the drone: an [`ExecutorClient`] implements [`Runtime`] by calling
//! an executor over `hangar.executor.v1`, so the drone runs the same code against an in-process
//! runtime or a remote executor.
//!
//! Every connection starts with a handshake. When the executor dies, calls report
//! [`RuntimeError::Unavailable`]; the next call reconnects and handshakes again, and
//! [`ExecutorClient::reconcile`] tells the drone what the executor runs now.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use hangar::domain::duration_to_proto;
use hangar::executor::v1 as pb;
use hangar::executor::v1::executor_service_client::ExecutorServiceClient;
use hangar::executor::{PROTOCOL_MAJOR, PROTOCOL_MINOR};
use hangar_agent::telemetry::{self, traced_request};
use tonic::transport::{Channel, Endpoint};
use tracing::Instrument;

use super::DEFAULT_MAX_MESSAGE_BYTES;
use crate::runtime::{
    BackendInfo, BackendSpec, Capability, Condition, EventStream, ImageReady, PullPolicy, Runtime, RuntimeError,
    RuntimeEvent, RuntimeKind, Started, Stats, StatsStream,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const SERVICE: &str = "hangar.executor.v1.ExecutorService";
/// The protocol minor that added `BackendSpec.command`.
const ENTRYPOINT_MINOR: u32 = 1;

/// What the executor said about itself in the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutorInfo {
    pub protocol_major: u32,
    pub protocol_minor: u32,
    pub executor_name: String,
    pub executor_version: String,
    pub kind: RuntimeKind,
    pub capabilities: Vec<Capability>,
}

/// A [`Runtime`] behind a Unix socket.
pub struct ExecutorClient {
    socket: PathBuf,
    client_name: String,
    protocol_major: u32,
    /// The handshaken connection, if any. `None` after a failure: the next call reconnects.
    connection: tokio::sync::Mutex<Option<ExecutorServiceClient<Channel>>>,
    info: Mutex<ExecutorInfo>,
}

type Client = ExecutorServiceClient<Channel>;

async fn open_channel(socket: &Path) -> Result<Client, RuntimeError> {
    let socket = socket.to_path_buf();
    // The URI is required by the API but unused: the connector always dials the socket.
    let endpoint =
        Endpoint::try_from("http://[::]:50051").map_err(RuntimeError::internal)?.connect_timeout(CONNECT_TIMEOUT);
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(&socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|err| RuntimeError::Unavailable(format!("cannot connect to executor: {err}")))?;
    Ok(ExecutorServiceClient::new(channel)
        .max_decoding_message_size(DEFAULT_MAX_MESSAGE_BYTES)
        .max_encoding_message_size(DEFAULT_MAX_MESSAGE_BYTES))
}

async fn handshake(client: &mut Client, client_name: &str, protocol_major: u32) -> Result<ExecutorInfo, RuntimeError> {
    let response = client
        .handshake(pb::HandshakeRequest {
            protocol_major,
            protocol_minor: PROTOCOL_MINOR,
            client_name: client_name.to_string(),
            client_version: hangar::VERSION.to_string(),
        })
        .await
        .map_err(|status| RuntimeError::from_status(&status))?
        .into_inner();
    let kind = RuntimeKind::parse(&response.runtime_kind).ok_or_else(|| {
        RuntimeError::internal(format!("executor reports unknown runtime {:?}", response.runtime_kind))
    })?;
    Ok(ExecutorInfo {
        protocol_major: response.protocol_major,
        protocol_minor: response.protocol_minor,
        executor_name: response.executor_name,
        executor_version: response.executor_version,
        kind,
        capabilities: response.capabilities.into_iter().filter_map(Capability::from_proto).collect(),
    })
}

impl ExecutorClient {
    /// Connects and handshakes; fails if the executor is not there or speaks another major.
    pub async fn connect(socket: impl AsRef<Path>, client_name: &str) -> Result<Self, RuntimeError> {
        Self::connect_with_protocol(socket, client_name, PROTOCOL_MAJOR).await
    }

    /// Like [`connect`](Self::connect), claiming another protocol major; for tests of the refusal.
    pub async fn connect_with_protocol(
        socket: impl AsRef<Path>,
        client_name: &str,
        protocol_major: u32,
    ) -> Result<Self, RuntimeError> {
        let socket = socket.as_ref().to_path_buf();
        let mut client = open_channel(&socket).await?;
        let info = handshake(&mut client, client_name, protocol_major).await?;
        Ok(ExecutorClient {
            socket,
            client_name: client_name.to_string(),
            protocol_major,
            connection: tokio::sync::Mutex::new(Some(client)),
            info: Mutex::new(info),
        })
    }

    /// The latest handshake's answer.
    pub fn info(&self) -> ExecutorInfo {
        self.info.lock().unwrap().clone()
    }

    /// Everything the executor runs now, to be compared with what the drone believes; call it
    /// after the executor came back.
    pub async fn reconcile(&self) -> Result<Vec<BackendInfo>, RuntimeError> {
        self.list().await
    }

    /// The current connection, or a new one with a fresh handshake.
    async fn client(&self) -> Result<Client, RuntimeError> {
        let mut connection = self.connection.lock().await;
        if let Some(client) = connection.as_ref() {
            return Ok(client.clone());
        }
        let mut client = open_channel(&self.socket).await?;
        let info = handshake(&mut client, &self.client_name, self.protocol_major).await?;
        tracing::info!(executor = info.executor_name, runtime = %info.kind, "reconnected to executor");
        *self.info.lock().unwrap() = info;
        *connection = Some(client.clone());
        Ok(client)
    }

    async fn forget_connection(&self) {
        *self.connection.lock().await = None;
    }

    /// Runs one call. A dead executor gives UNAVAILABLE (and the next call reconnects); a
    /// connection that tonic silently re-established to a restarted executor gets HANDSHAKE_REQUIRED,
    /// and then the call is retried once on a fresh, handshaken connection.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, RuntimeError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut retried = false;
        loop {
            let client = self.client().await?;
            let result = f(client).await;
            // On the call's client span, when the caller opened one (the backend steps do).
            let code = result.as_ref().map_or_else(|status| status.code() as i32, |_| 0);
            telemetry::record_client_status(&tracing::Span::current(), code);
            match result {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => match RuntimeError::from_status(&status) {
                    RuntimeError::HandshakeRequired(_) if !retried => {
                        retried = true;
                        self.forget_connection().await;
                    }
                    err @ (RuntimeError::Unavailable(_) | RuntimeError::HandshakeRequired(_)) => {
                        self.forget_connection().await;
                        return Err(err);
                    }
                    err => return Err(err),
                },
            }
        }
    }
}

#[async_trait]
impl Runtime for ExecutorClient {
    fn kind(&self) -> RuntimeKind {
        self.info.lock().unwrap().kind
    }

    fn capabilities(&self) -> Vec<Capability> {
        self.info.lock().unwrap().capabilities.clone()
    }

    async fn status(&self) -> Vec<Condition> {
        match self.call(|mut c| async move { c.status(pb::StatusRequest {}).await }).await {
            Ok(response) => response.conditions.into_iter().map(Condition::from_proto).collect(),
            Err(err) => vec![Condition::new("RuntimeReachable", false, "ExecutorUnreachable", err.to_string())],
        }
    }

    async fn prepare_image(&self, image: &str, policy: PullPolicy) -> Result<ImageReady, RuntimeError> {
        let request =
            pb::PrepareImageRequest { image: image.to_string(), pull_policy: policy.to_executor_proto().into() };
        let response = self
            .call(|mut c| {
                let r = traced_request(request.clone());
                async move { c.prepare_image(r).await }
            })
            .instrument(telemetry::client_span(SERVICE, "PrepareImage"))
            .await?;
        Ok(ImageReady { image_id: response.image_id, pulled: response.pulled })
    }

    async fn start(&self, spec: BackendSpec) -> Result<Started, RuntimeError> {
        let minor = self.info().protocol_minor;
        if !spec.command.is_empty() && minor < ENTRYPOINT_MINOR {
            // A 1.0 executor would drop the field and run the image's own entrypoint instead.
            return Err(RuntimeError::Unsupported(format!(
                "the executor speaks hangar.executor.v1 minor {minor}, which cannot override the image's \
                 entrypoint (`command` needs minor {ENTRYPOINT_MINOR}); upgrade the executor"
            )));
        }
        let request = pb::StartBackendRequest { spec: Some(spec.to_proto()) };
        let response = self
            .call(|mut c| {
                let r = traced_request(request.clone());
                async move { c.start_backend(r).await }
            })
            .instrument(telemetry::client_span(SERVICE, "StartBackend"))
            .await?;
        Ok(Started { runtime_id: response.runtime_id, address: response.address })
    }

    async fn stop(&self, backend_id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let request =
            pb::StopBackendRequest { backend_id: backend_id.to_string(), grace: Some(duration_to_proto(grace)) };
        self.call(|mut c| {
            let r = traced_request(request.clone());
            async move { c.stop_backend(r).await }
        })
        .instrument(telemetry::client_span(SERVICE, "StopBackend"))
        .await?;
        Ok(())
    }

    async fn remove(&self, backend_id: &str) -> Result<(), RuntimeError> {
        let request = pb::RemoveBackendRequest { backend_id: backend_id.to_string() };
        self.call(|mut c| {
            let r = request.clone();
            async move { c.remove_backend(r).await }
        })
        .await?;
        Ok(())
    }

    async fn inspect(&self, backend_id: &str) -> Result<BackendInfo, RuntimeError> {
        let request = pb::InspectBackendRequest { backend_id: backend_id.to_string() };
        let response = self
            .call(|mut c| {
                let r = request.clone();
                async move { c.inspect_backend(r).await }
            })
            .await?;
        let info =
            response.backend.ok_or_else(|| RuntimeError::internal("InspectBackend answered without a backend"))?;
        Ok(BackendInfo::from_proto(info))
    }

    async fn list(&self) -> Result<Vec<BackendInfo>, RuntimeError> {
        let response = self.call(|mut c| async move { c.list_backends(pb::ListBackendsRequest {}).await }).await?;
        Ok(response.backends.into_iter().map(BackendInfo::from_proto).collect())
    }

    async fn events(&self) -> Result<EventStream, RuntimeError> {
        let stream = self.call(|mut c| async move { c.watch_events(pb::WatchEventsRequest {}).await }).await?;
        Ok(stream
            .map(|item| match item {
                Ok(response) => RuntimeEvent::from_proto(
                    response.event.ok_or_else(|| RuntimeError::internal("WatchEvents sent an empty message"))?,
                ),
                Err(status) => Err(RuntimeError::from_status(&status)),
            })
            .boxed())
    }

    async fn stats(&self, backend_id: &str, interval: Duration) -> Result<StatsStream, RuntimeError> {
        let request =
            pb::StreamStatsRequest { backend_id: backend_id.to_string(), interval: Some(duration_to_proto(interval)) };
        let stream = self
            .call(|mut c| {
                let r = request.clone();
                async move { c.stream_stats(r).await }
            })
            .await?;
        Ok(stream
            .map(|item| match item {
                Ok(response) => Ok(Stats::from_proto(
                    response.stats.ok_or_else(|| RuntimeError::internal("StreamStats sent an empty message"))?,
                )),
                Err(status) => Err(RuntimeError::from_status(&status)),
            })
            .boxed())
    }
}
