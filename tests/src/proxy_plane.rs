//! A scripted control plane for proxy tests: a real `ProxyService` gRPC server on port 0 whose
//! routes each test sets, which welcomes a proxy's attach stream, records (for tests to wait on)
//! the backends of its traffic reports and the tokens it was asked to look up, and can tell the
//! proxy a route is no longer valid.

use hangar::v1::{
    self,
    proxy_service_server::{ProxyService, ProxyServiceServer},
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

type AttachSender = tokio::sync::mpsc::Sender<Result<v1::ProxyAttachResponse, Status>>;

#[derive(Clone, Default)]
pub struct ProxyPlane {
    routes: Arc<Mutex<HashMap<String, v1::LookupRouteResponse>>>,
    /// Every backend id the proxy reported traffic for, in order.
    pub traffic: watch::Sender<Vec<String>>,
    /// Every token the proxy looked up, in order, recorded once the answer is settled.
    pub lookups: watch::Sender<Vec<String>>,
    /// The stream of the latest proxy to attach.
    attached: Arc<Mutex<Option<AttachSender>>>,
}

impl ProxyPlane {
    /// Serves on 127.0.0.1:0; returns the plane and its `http://` URL.
    pub async fn start() -> (ProxyPlane, String) {
        let plane = ProxyPlane::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let url = format!("http://{}", listener.local_addr().expect("local address"));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(ProxyServiceServer::new(plane.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (plane, url)
    }

    /// `token` leads to backend `backend_id` at `address`, in `state`.
    pub fn route(&self, token: &str, backend_id: &str, state: v1::BackendState, address: &str) {
        self.route_with_auth(token, backend_id, state, address, &[]);
    }

    /// As [`ProxyPlane::route`], for user "alice" with the given verified `auth` claims.
    pub fn route_with_auth(
        &self,
        token: &str,
        backend_id: &str,
        state: v1::BackendState,
        address: &str,
        auth: &[(&str, &str)],
    ) {
        let response = v1::LookupRouteResponse {
            backend_id: backend_id.into(),
            state: state as i32,
            address: address.into(),
            user: "alice".into(),
            auth: auth.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            expires_at: None,
        };
        self.routes.lock().unwrap().insert(token.into(), response);
    }

    /// The route of `token`, already set, now answers with `state`.
    pub fn set_state(&self, token: &str, state: v1::BackendState) {
        self.routes.lock().unwrap().get_mut(token).expect("the token has a route").state = state as i32;
    }

    /// Tells the latest attached proxy that the routes to `backend_id` are no longer valid.
    pub async fn invalidate(&self, backend_id: &str) {
        let tx = self.attached.lock().unwrap().clone().expect("a proxy is attached");
        let invalidation = v1::RouteInvalidation { backend_id: backend_id.into() };
        let message = v1::proxy_attach_response::Message::Invalidate(invalidation);
        tx.send(Ok(v1::ProxyAttachResponse { message: Some(message) })).await.expect("the stream is open");
    }
}

#[tonic::async_trait]
impl ProxyService for ProxyPlane {
    type AttachStream = ReceiverStream<Result<v1::ProxyAttachResponse, Status>>;

    async fn attach(
        &self,
        req: Request<Streaming<v1::ProxyAttachRequest>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let welcome = v1::ProxyWelcome {
            node_id: "proxy-node".into(),
            controller_id: "scripted".into(),
            heartbeat_interval: None,
        };
        let welcome = v1::ProxyAttachResponse { message: Some(v1::proxy_attach_response::Message::Welcome(welcome)) };
        tx.send(Ok(welcome)).await.expect("the stream is open");
        *self.attached.lock().unwrap() = Some(tx.clone());
        let traffic = self.traffic.clone();
        tokio::spawn(async move {
            // Holding `tx` keeps the proxy's stream open for as long as it sends.
            let _tx = tx;
            while let Ok(Some(message)) = inbound.message().await {
                if let Some(v1::proxy_attach_request::Message::Traffic(report)) = message.message {
                    traffic.send_modify(|seen| seen.extend(report.backend_ids));
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn lookup_route(
        &self,
        req: Request<v1::LookupRouteRequest>,
    ) -> Result<Response<v1::LookupRouteResponse>, Status> {
        let token = req.into_inner().token;
        let route = self.routes.lock().unwrap().get(&token).cloned();
        // Recorded once the answer is settled, so a test that changes the route when it sees the
        // lookup changes the next answer, not this one.
        self.lookups.send_modify(|tokens| tokens.push(token));
        match route {
            Some(route) => Ok(Response::new(route)),
            None => Err(Status::not_found("no such token")),
        }
    }
}
