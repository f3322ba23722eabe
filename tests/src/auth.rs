//! Calling a controller that has an auth file: a channel that sends a bearer token, and drones
//! and proxies that attach with one.

use crate::{channel, drone_hello};
use hangar::v1::{self, drone_service_client::DroneServiceClient, proxy_service_client::ProxyServiceClient};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Adds `authorization: Bearer …` to every call, when there is a token.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel whose calls carry a bearer token (or none).
pub type Authed = InterceptedService<Channel, Bearer>;

/// A channel to `url` whose calls carry `token`, if any.
pub async fn authed(url: &str, token: Option<&str>) -> Authed {
    let header = token.map(|t| format!("Bearer {t}").parse().expect("an ASCII token"));
    InterceptedService::new(channel(url).await, Bearer(header))
}

/// A drone attached over `DroneService.Attach` with a token; its stream stays open while held.
pub struct TokenDrone {
    pub node_id: String,
    pub outbound: mpsc::Sender<v1::DroneAttachRequest>,
    pub inbound: tonic::Streaming<v1::DroneAttachResponse>,
}

/// Attaches a drone named `name` with `token`; the controller's refusal, if it refuses.
pub async fn attach_drone(url: &str, token: &str, name: &str) -> Result<TokenDrone, Status> {
    let (outbound, rx) = mpsc::channel(4);
    let hello = v1::DroneAttachRequest { message: Some(v1::drone_attach_request::Message::Hello(drone_hello(name))) };
    outbound.send(hello).await.expect("the stream is open");
    let mut inbound =
        DroneServiceClient::new(authed(url, Some(token)).await).attach(ReceiverStream::new(rx)).await?.into_inner();
    match inbound.message().await? {
        Some(v1::DroneAttachResponse { message: Some(v1::drone_attach_response::Message::Welcome(w)) }) => {
            Ok(TokenDrone { node_id: w.node_id, outbound, inbound })
        }
        other => panic!("expected a welcome, got {other:?}"),
    }
}

/// A proxy attached over `ProxyService.Attach` with a token; its stream stays open while held.
pub struct TokenProxy {
    pub node_id: String,
    pub outbound: mpsc::Sender<v1::ProxyAttachRequest>,
    pub inbound: tonic::Streaming<v1::ProxyAttachResponse>,
}

/// Attaches a proxy named `name` with `token`; the controller's refusal, if it refuses.
pub async fn attach_proxy(url: &str, token: &str, name: &str) -> Result<TokenProxy, Status> {
    let (outbound, rx) = mpsc::channel(4);
    let hello = v1::ProxyHello { name: name.into(), version: "test".into(), ..Default::default() };
    let hello = v1::ProxyAttachRequest { message: Some(v1::proxy_attach_request::Message::Hello(hello)) };
    outbound.send(hello).await.expect("the stream is open");
    let mut inbound =
        ProxyServiceClient::new(authed(url, Some(token)).await).attach(ReceiverStream::new(rx)).await?.into_inner();
    match inbound.message().await? {
        Some(v1::ProxyAttachResponse { message: Some(v1::proxy_attach_response::Message::Welcome(w)) }) => {
            Ok(TokenProxy { node_id: w.node_id, outbound, inbound })
        }
        other => panic!("expected a welcome, got {other:?}"),
    }
}
