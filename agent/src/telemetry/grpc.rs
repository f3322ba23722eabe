//! [`GrpcTraceLayer`]: one server span per gRPC call, named and attributed after OpenTelemetry's
//! RPC conventions (`hangar.v1.BackendService/Connect`; `rpc.system`, `rpc.service`,
//! `rpc.method`, `rpc.grpc.status_code`), continuing the caller's trace from its `traceparent`
//! metadata. The span lasts until the response's last frame (the trailers with the status): for
//! a stream, the whole stream. With traces off it passes every call through untouched.

use super::{SPAN_TARGET, enabled, set_parent_from_headers};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tracing::Instrument;
use tracing::instrument::Instrumented;

/// Wraps a gRPC server's routes (the controller's, the executor's) in [`GrpcTrace`].
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcTraceLayer;

impl<S> tower::Layer<S> for GrpcTraceLayer {
    type Service = GrpcTrace<S>;

    fn layer(&self, inner: S) -> GrpcTrace<S> {
        GrpcTrace { inner }
    }
}

/// The service [`GrpcTraceLayer`] makes.
#[derive(Debug, Clone)]
pub struct GrpcTrace<S> {
    inner: S,
}

/// The span of one call, named `service/method` from the request path.
pub fn server_span(path: &str) -> tracing::Span {
    let name = path.trim_start_matches('/');
    let (service, method) = name.split_once('/').unwrap_or((name, ""));
    tracing::info_span!(
        target: SPAN_TARGET,
        "grpc.server",
        otel.name = name,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
    )
}

/// The span of a call this process makes, `service/method`; its context goes out with
/// [`traced_request`](super::traced_request) when the call is made inside it.
pub fn client_span(service: &str, method: &str) -> tracing::Span {
    tracing::info_span!(
        target: SPAN_TARGET,
        "grpc.client",
        otel.name = format_args!("{service}/{method}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
    )
}

/// Records a gRPC status code on the span: `rpc.grpc.status_code`, and an error status for the
/// codes OpenTelemetry counts as a server's errors.
pub fn record_status(span: &tracing::Span, code: i32) {
    span.record("rpc.grpc.status_code", code);
    // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
    if matches!(code, 2 | 4 | 12 | 13 | 14 | 15) {
        span.record("otel.status_code", "ERROR");
    }
}

/// Records the status of a call this process made: any code but OK is an error for a client.
pub fn record_client_status(span: &tracing::Span, code: i32) {
    span.record("rpc.grpc.status_code", code);
    if code != 0 {
        span.record("otel.status_code", "ERROR");
    }
}

fn status_in(headers: &http::HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for GrpcTrace<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<TracedBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        if !enabled() {
            return ResponseFuture { inner: self.inner.call(request).instrument(tracing::Span::none()), span: None };
        }
        let span = server_span(request.uri().path());
        set_parent_from_headers(&span, request.headers());
        // The handler runs inside the span: the store's spans, and the context a Connect stores
        // with its spawn action, descend from it.
        let inner = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        ResponseFuture { inner: inner.instrument(span.clone()), span: Some(span) }
    }
}

pin_project_lite::pin_project! {
    /// The call's future, inside its span; hands the span to the response body.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Instrumented<F>,
        span: Option<tracing::Span>,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Result<http::Response<TracedBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = match this.inner.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
            Poll::Ready(Ok(response)) => response,
        };
        let span = this.span.take();
        if let Some(span) = &span
            && let Some(code) = status_in(response.headers())
        {
            // A trailers-only answer (an error before any message): the status is in the headers.
            record_status(span, code);
        }
        Poll::Ready(Ok(response.map(|inner| TracedBody { inner, span })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its call's span open until the trailers (with the status) went
    /// out or the body was dropped (the client went away).
    pub struct TracedBody<B> {
        #[pin]
        inner: B,
        span: Option<tracing::Span>,
    }
}

impl<B> Body for TracedBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        let ended = match &polled {
            Poll::Pending => false,
            // The trailers are the last frame: the call is over once they are out.
            Poll::Ready(Some(Ok(frame))) => match (frame.trailers_ref(), this.span.as_ref()) {
                (Some(trailers), Some(span)) => {
                    if let Some(code) = status_in(trailers) {
                        record_status(span, code);
                    }
                    true
                }
                _ => false,
            },
            Poll::Ready(None | Some(Err(_))) => true,
        };
        if ended {
            *this.span = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
