//! [`FirstRequestDeadline`]: an accepted connection that must start a request in time.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use tonic::transport::server::Connected;

/// The client's connection preface: `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`.
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

/// A connection that is closed unless the client's first request — the HTTP/2 preface and one
/// complete header block — arrives within a deadline of its acceptance. HTTP/2's own limits
/// bound what an open connection may cost, but not how long a client may hold one while sending
/// nothing, or a byte now and then (slow loris).
///
/// It reads the plaintext HTTP/2 byte stream, so it wraps whatever carries it: the TCP stream,
/// or the TLS stream over it. Until the first header block is complete it follows frame
/// boundaries (nine header bytes, then skips the payload); after that it only passes bytes on.
/// Past the deadline, a read fails with `TimedOut`, and the server drops the connection.
pub struct FirstRequestDeadline<S> {
    inner: S,
    /// `None` once the first request arrived.
    watch: Option<Box<Watch>>,
}

struct Watch {
    deadline: Pin<Box<Sleep>>,
    within: Duration,
    frames: FrameScan,
}

impl<S> FirstRequestDeadline<S> {
    /// Starts the clock now: call it when the connection is accepted.
    pub fn new(inner: S, within: Duration) -> Self {
        let watch = Watch { deadline: Box::pin(tokio::time::sleep(within)), within, frames: FrameScan::default() };
        FirstRequestDeadline { inner, watch: Some(Box::new(watch)) }
    }

    /// Whether the first request has arrived (the deadline no longer applies).
    pub fn saw_request(&self) -> bool {
        self.watch.is_none()
    }
}

impl<S: Connected> Connected for FirstRequestDeadline<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> S::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FirstRequestDeadline<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(watch) = &mut this.watch else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if watch.frames.feed(&buf.filled()[before..]) {
                    this.watch = None;
                    return Poll::Ready(Ok(()));
                }
                // Bytes, but no request yet: a trickle does not move the deadline.
                if watch.deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(no_request(watch.within)));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match watch.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(no_request(watch.within))),
                Poll::Pending => Poll::Pending,
            },
            failed => failed,
        }
    }
}

fn no_request(within: Duration) -> io::Error {
    tracing::debug!(?within, "closing a connection that sent no request in time");
    io::Error::new(io::ErrorKind::TimedOut, format!("no request within {within:?} of connecting"))
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FirstRequestDeadline<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    // Whatever the inner stream says: over CoalescingStream, "not vectored" is half its point.
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Follows the client's bytes frame by frame until a header block is complete. It checks
/// nothing else: the HTTP/2 server reads the same bytes and refuses what is malformed.
#[derive(Debug, Default)]
struct FrameScan {
    /// Preface bytes still to skip.
    preface_seen: usize,
    /// The frame header being read.
    header: [u8; FRAME_HEADER_LEN],
    header_len: usize,
    /// Payload bytes of the current frame still to skip.
    payload_left: usize,
}

impl FrameScan {
    /// Feeds the next bytes; true once a HEADERS or CONTINUATION frame with END_HEADERS has
    /// been seen (its payload need not have arrived: the request is under way).
    fn feed(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            if self.preface_seen < PREFACE_LEN {
                let take = (PREFACE_LEN - self.preface_seen).min(bytes.len());
                self.preface_seen += take;
                bytes = &bytes[take..];
            } else if self.payload_left > 0 {
                let take = self.payload_left.min(bytes.len());
                self.payload_left -= take;
                bytes = &bytes[take..];
            } else {
                let take = (FRAME_HEADER_LEN - self.header_len).min(bytes.len());
                self.header[self.header_len..self.header_len + take].copy_from_slice(&bytes[..take]);
                self.header_len += take;
                bytes = &bytes[take..];
                if self.header_len == FRAME_HEADER_LEN {
                    let [l0, l1, l2, kind, flags, ..] = self.header;
                    if matches!(kind, HEADERS | CONTINUATION) && flags & END_HEADERS != 0 {
                        return true;
                    }
                    self.payload_left = u32::from_be_bytes([0, l0, l1, l2]) as usize;
                    self.header_len = 0;
                }
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut frame = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 1];
        frame.extend_from_slice(payload);
        frame
    }

    #[test]
    fn a_header_block_is_found_after_the_preface_and_other_frames_whatever_the_chunks() {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, &[0; 12])); // SETTINGS
        bytes.extend(frame(0x8, 0, &[0, 0, 0, 1])); // WINDOW_UPDATE
        bytes.extend(frame(HEADERS, 0, &[1, 2, 3])); // a header block still open…
        let open = bytes.len();
        bytes.extend(frame(CONTINUATION, END_HEADERS, &[4])); // …complete here
        for chunk in [1, 2, 5, 9, 64, bytes.len()] {
            let mut scan = FrameScan::default();
            let mut fed = 0;
            let mut found_at = None;
            for piece in bytes.chunks(chunk) {
                fed += piece.len();
                if scan.feed(piece) {
                    found_at = Some(fed);
                    break;
                }
            }
            let found_at = found_at.unwrap_or_else(|| panic!("no request found in chunks of {chunk}"));
            assert!(found_at > open + 4, "chunks of {chunk}: found before the CONTINUATION's header ended");
        }
        let mut scan = FrameScan::default();
        assert!(!scan.feed(&bytes[..open]), "a header block without END_HEADERS is not a request yet");
    }

    #[tokio::test]
    async fn a_silent_or_trickling_client_is_cut_off_and_a_prompt_one_is_not() {
        let within = Duration::from_millis(200);
        let (client, server) = tokio::io::duplex(1024);
        let mut guarded = FirstRequestDeadline::new(server, within);
        let mut buf = [0u8; 64];
        let err = guarded.read(&mut buf).await.expect_err("a silent client is cut off");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(client);

        let (mut client, server) = tokio::io::duplex(1024);
        let mut guarded = FirstRequestDeadline::new(server, within);
        let trickle = tokio::spawn(async move {
            for byte in PREFACE {
                if client.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        });
        let cut = loop {
            match guarded.read(&mut buf).await {
                Ok(0) => panic!("the trickle ended first"),
                Ok(_) => continue,
                Err(err) => break err,
            }
        };
        assert_eq!(cut.kind(), io::ErrorKind::TimedOut, "a trickle does not move the deadline");
        trickle.abort();

        let (mut client, server) = tokio::io::duplex(1024);
        let mut guarded = FirstRequestDeadline::new(server, within);
        let mut request = PREFACE.to_vec();
        request.extend(frame(HEADERS, END_HEADERS | 0x1, &[0x82]));
        client.write_all(&request).await.unwrap();
        let mut read = 0;
        while !guarded.saw_request() {
            read += guarded.read(&mut buf).await.unwrap();
        }
        assert_eq!(read, request.len());
        // An idle connection after its first request is HTTP/2 keep-alive's business.
        tokio::time::sleep(within * 2).await;
        client.write_all(b"more").await.unwrap();
        assert_eq!(guarded.read(&mut buf).await.unwrap(), 4);
    }
}
