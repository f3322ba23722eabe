//! [`ReleasedAtEnd`]: a response body that holds a watch's [`Slot`] until the stream is over.

use super::counters::Slot;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

/// A streaming response's body, holding its caller's watch slot until its last frame (the
/// trailers with the status) has gone out, or until it is dropped: the client went away or
/// reset the stream, or the connection closed.
pub(super) struct ReleasedAtEnd {
    inner: tonic::body::Body,
    slot: Option<Slot>,
}

impl ReleasedAtEnd {
    pub(super) fn new(inner: tonic::body::Body, slot: Slot) -> Self {
        ReleasedAtEnd { inner, slot: Some(slot) }
    }
}

impl Body for ReleasedAtEnd {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) {
            self.slot = None;
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
