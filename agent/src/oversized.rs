//! [`OversizedRequestLayer`]: a request message over the size limit is RESOURCE_EXHAUSTED.

use futures::TryFutureExt;
use http::HeaderValue;
use std::task::{Context, Poll};
use tonic::Code;

/// How tonic's decoder begins its refusal of a message over `max_decoding_message_size`.
const DECODED_TOO_LARGE: &str = "Error, decoded message length too large";

/// Answers a request message over the server's `max_decoding_message_size` with
/// RESOURCE_EXHAUSTED, gRPC's code for it (grpc-go and grpc-java answer it), where tonic's
/// decoder says OUT_OF_RANGE. OUT_OF_RANGE keeps its own meanings on this API: a compacted
/// revision, an expired page token.
///
/// tonic decodes a unary or server-streaming call's request before the handler runs, and
/// refuses an oversized one with a trailers-only response: its status is in the response
/// headers, which is all this layer looks at. The handlers of client streams (a node's
/// `Attach` on the controller) read their messages themselves and answer for themselves. The message, which
/// names the size and the limit, is left as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct OversizedRequestLayer;

impl<S> tower::Layer<S> for OversizedRequestLayer {
    type Service = OversizedRequest<S>;

    fn layer(&self, inner: S) -> OversizedRequest<S> {
        OversizedRequest { inner }
    }
}

/// The service [`OversizedRequestLayer`] wraps around a server's routes.
#[derive(Debug, Clone)]
pub struct OversizedRequest<S> {
    inner: S,
}

type Rewrite<B> = fn(http::Response<B>) -> http::Response<B>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for OversizedRequest<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = futures::future::MapOk<S::Future, Rewrite<ResBody>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        self.inner.call(request).map_ok(rewrite as Rewrite<ResBody>)
    }
}

fn rewrite<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    // Most responses carry no status in their headers; only those that do are decoded.
    let out_of_range = (Code::OutOfRange as i32).to_string();
    if headers.get("grpc-status").is_some_and(|code| code.as_bytes() == out_of_range.as_bytes())
        && tonic::Status::from_header_map(headers).is_some_and(|s| s.message().starts_with(DECODED_TOO_LARGE))
    {
        let exhausted = (Code::ResourceExhausted as i32).to_string();
        headers.insert("grpc-status", HeaderValue::from_str(&exhausted).expect("a number is a header value"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service, ServiceExt};

    async fn answer(status: tonic::Status) -> tonic::Status {
        let mut service = OversizedRequestLayer.layer(tower::service_fn(move |_: http::Request<()>| {
            let status = status.clone();
            async move { Ok::<_, std::convert::Infallible>(status.into_http::<tonic::body::Body>()) }
        }));
        let response = service.ready().await.unwrap().call(http::Request::new(())).await.unwrap();
        tonic::Status::from_header_map(response.headers()).expect("a trailers-only response")
    }

    #[tokio::test]
    async fn only_tonics_oversized_request_becomes_resource_exhausted_with_its_message() {
        let message = format!("{DECODED_TOO_LARGE}: found 5242885 bytes, the limit is: 4194304 bytes");
        let refused = answer(tonic::Status::out_of_range(message.clone())).await;
        assert_eq!((refused.code(), refused.message()), (Code::ResourceExhausted, message.as_str()));

        for other in [
            tonic::Status::out_of_range("revision 3 is compacted"),
            tonic::Status::invalid_argument(DECODED_TOO_LARGE),
            tonic::Status::ok(""),
        ] {
            let code = other.code();
            assert_eq!(answer(other).await.code(), code, "left as it is");
        }
    }
}
