//! [`AuthLayer`]: the tower layer in front of every service of the controller (health and
//! reflection included). It names the caller's principal, checks the method against the
//! authorization table, and hands the call on with an `Arc<Principal>` in its extensions, or
//! answers it itself with UNAUTHENTICATED or PERMISSION_DENIED as a gRPC status (trailers-only),
//! for unary and streaming methods alike.
//!
//! Layers that come after it in `Server::builder().layer(…)` (the per-principal limits) find the
//! principal in the request's extensions.

use super::authenticator::{Authenticator, method_name};
use super::{PeerIdentity, audit};
use futures::future::{Either, Ready, ready};
use http::header::AUTHORIZATION;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::Status;
use tonic::transport::server::TcpConnectInfo;
use tower::{Layer, Service};

#[derive(Clone)]
pub struct AuthLayer {
    authenticator: Arc<Authenticator>,
}

impl AuthLayer {
    pub fn new(authenticator: Arc<Authenticator>) -> Self {
        AuthLayer { authenticator }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService { inner, authenticator: self.authenticator.clone() }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for AuthService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        // The bearer token goes no further than here: nothing behind this layer can log it,
        // whatever it prints of a request.
        let authorization = request.headers_mut().remove(AUTHORIZATION);
        let peer = request.extensions().get::<PeerIdentity>();
        let path = request.uri().path();
        match self.authenticator.admit(path, authorization.as_ref(), peer) {
            Ok(principal) => {
                request.extensions_mut().insert(principal);
                // Per-principal limits come next: a layer added after this one
                // (controller/server.rs) reads the principal just inserted.
                Either::Left(self.inner.call(request))
            }
            Err(refusal) => {
                let status = Status::from(refusal.error);
                let remote_addr = peer
                    .and_then(|p| p.remote_addr)
                    .or_else(|| request.extensions().get::<TcpConnectInfo>().and_then(TcpConnectInfo::remote_addr));
                audit::refused(refusal.principal.as_ref(), &method_name(path), remote_addr, &status);
                Either::Right(ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::table::Reflection;
    use crate::auth::{PeerCertificate, Principal, Role};
    use http::{HeaderValue, Request, Response};
    use std::convert::Infallible;
    use tower::ServiceExt;

    const SECRET: &str = "operator-secret-0123456789";

    /// A service that answers with what the layer left in the request.
    async fn echo(request: Request<()>) -> Result<Response<String>, Infallible> {
        let principal = request.extensions().get::<Arc<Principal>>().map(|p| format!("{}:{}", p.name, p.role));
        let authorization = request.headers().get(AUTHORIZATION).map(|v| format!("{v:?}"));
        Ok(Response::new(format!("{principal:?} {authorization:?}")))
    }

    fn layered() -> (impl Service<Request<()>, Response = Response<String>, Error = Infallible>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.toml");
        std::fs::write(
            &path,
            format!(
                "[[token]]\nname = \"ops\"\nrole = \"operator\"\nsecret = \"{SECRET}\"\n\
                 [[certificate]]\ncommon_name = \"drone-b\"\nrole = \"drone\"\n"
            ),
        )
        .unwrap();
        let authenticator = Arc::new(Authenticator::from_file(&path, Reflection::Open).unwrap());
        (AuthLayer::new(authenticator).layer(tower::service_fn(echo)), dir)
    }

    fn request(path: &str, token: Option<&str>) -> Request<()> {
        let mut request = Request::builder().uri(format!("http://controller{path}")).body(()).unwrap();
        if let Some(token) = token {
            request.headers_mut().insert(AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
        }
        request
    }

    #[tokio::test]
    async fn an_admitted_call_carries_its_principal_and_not_the_token() {
        let (service, _dir) = layered();
        let response = service.oneshot(request("/hangar.v1.NodeService/DrainNode", Some(SECRET))).await.unwrap();
        assert_eq!(response.body(), "Some(\"ops:operator\") None");
    }

    #[tokio::test]
    async fn a_refused_call_is_answered_as_a_grpc_status_without_reaching_the_service() {
        let (service, _dir) = layered();
        let response = service.oneshot(request("/hangar.v1.DroneService/Attach", Some(SECRET))).await.unwrap();
        assert_eq!(response.body(), "", "the service was called");
        assert_eq!(response.headers()["content-type"], "application/grpc");
        let status = Status::from_header_map(response.headers()).expect("a grpc-status header");
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        let (reason, meta) = hangar::error::error_info(&status).unwrap();
        assert_eq!((reason.as_str(), meta["required_role"].as_str()), ("ROLE_NOT_ALLOWED", "drone"));

        let (service, _dir) = layered();
        let response = service.oneshot(request("/hangar.v1.NodeService/ListNodes", None)).await.unwrap();
        let status = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }

    #[tokio::test]
    async fn the_connection_certificate_names_the_principal_when_there_is_no_token() {
        let (service, _dir) = layered();
        let mut req = request("/hangar.v1.DroneService/Attach", None);
        req.extensions_mut().insert(PeerIdentity {
            remote_addr: None,
            certificate: Some(Arc::new(PeerCertificate { common_name: Some("drone-b".into()), der: Vec::new() })),
        });
        let response = service.oneshot(req).await.unwrap();
        assert_eq!(*response.body(), format!("Some(\"drone-b:{}\") None", Role::Drone));
    }
}
