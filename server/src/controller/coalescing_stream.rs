//! [`CoalescingStream`]: the controller's accepted connections, tuned for many small streamed
//! messages by coalescing the small HTTP/2 writes of many streams into few system calls.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// Writes smaller than this wait for the scheduler's other ready tasks before they go out.
const COALESCE_BELOW: usize = 8 * 1024;
/// How many times a write waits at most, as long as each wait brought more data.
const MAX_YIELDS: u8 = 4;

/// A connection (TCP, or TLS over TCP) that batches the small writes of HTTP/2 streams into few
/// system calls.
///
/// A watch event is a few hundred bytes, and a controller with a thousand watchers sends it a
/// thousand times. Each stream's task hands its frame to the connection's task, which tokio runs
/// next (its LIFO slot), so h2 would write each frame on its own: one `send` per event per
/// watcher (what that cost is in BENCHMARKS.md, "Coalesced writes"). Two changes make the frames
/// of many streams go out together:
///
/// - The connection reports no vectored writes. h2 then copies DATA payloads of up to 1 KiB into
///   its 16 KiB write buffer (with vectored writes only up to 256 bytes; larger ones are written
///   on their own, one system call each).
/// - A write smaller than [`COALESCE_BELOW`] first yields: the connection's task wakes itself
///   and returns `Pending`, which puts it at the back of the run queue, behind the stream tasks
///   that have frames to add. When it runs again, h2 adds everything queued meanwhile to its
///   buffer and asks to write again; while that keeps bringing more data (up to [`MAX_YIELDS`]
///   times), it yields again, then writes it all at once. On an idle runtime the queue is empty
///   and the write goes out at the next poll, so this adds no latency of its own; under load,
///   the wait is a pass over tasks that were ready anyway.
///
/// On a TLS connection it sits above the encryption, where h2 writes: what it batches is then
/// sealed into few large TLS records instead of one record (and one `send`) per frame.
pub(crate) struct CoalescingStream<S> {
    inner: S,
    /// How often the pending write has yielded, and its size at the last yield.
    yielded: u8,
    yielded_at_len: usize,
}

impl<S> CoalescingStream<S> {
    pub(crate) fn new(stream: S) -> CoalescingStream<S> {
        CoalescingStream { inner: stream, yielded: 0, yielded_at_len: 0 }
    }
}

impl<S: Connected> Connected for CoalescingStream<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> S::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CoalescingStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CoalescingStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let wait = buf.len() < COALESCE_BELOW
            && (this.yielded == 0 || (this.yielded < MAX_YIELDS && buf.len() > this.yielded_at_len));
        if wait {
            this.yielded += 1;
            this.yielded_at_len = buf.len();
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.yielded = 0;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    // `poll_write_vectored` and `is_write_vectored` keep their defaults: one buffer at a time,
    // and "not vectored", which is half of the point of this type.
}
