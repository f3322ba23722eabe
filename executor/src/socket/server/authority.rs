//! The bytes a client sends on the executor socket, with any `:authority` that tonic's HTTP/2
//! layer would refuse replaced by `localhost` (docs/design/executor-protocol.md#stock-grpc-clients).
//!
//! gRPC clients disagree on the authority of a Unix socket target: tonic and grpc-go send
//! `localhost` (or a placeholder host), grpc-core ≥ 1.57 (Python, C++, Ruby) the percent-encoded
//! socket path (`tmp%2Frun%2Fexecutor.sock`), grpc-java the path itself. h2 parses `:authority` as
//! an RFC 3986 authority and resets the stream with PROTOCOL_ERROR when it is not one, before any
//! service or tower layer sees the request. The executor has one socket and ignores the authority,
//! so the fix lives below h2, on the connection: every header block from the client is decoded
//! (HPACK, keeping the client's dynamic table) and passed on re-encoded without indexing, an
//! invalid `:authority` replaced. Frames other than HEADERS and CONTINUATION pass through
//! unchanged and unbuffered. The server's direction is not touched.
//!
//! Anything unexpected (a header block that does not decode, a frame inside a header block)
//! switches the connection to plain pass-through from the original bytes on, so h2 meets the
//! client's own bytes and answers with the error it would have given anyway.

use bytes::{Buf, BytesMut};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Re-encoded header blocks are cut into frames of this size: the initial SETTINGS_MAX_FRAME_SIZE
/// of RFC 9113, which every HTTP/2 server accepts.
const MAX_FRAME: usize = 16_384;
/// A header block growing past this is not buffered further: it goes on as sent, and h2's own
/// header-list limit (far smaller) refuses it, so a flood of CONTINUATION frames cannot make the
/// rewrite hold unbounded memory.
const MAX_BLOCK: usize = 1024 * 1024;
/// What an authority h2 would refuse becomes.
pub(super) const REPLACEMENT: &str = "localhost";

/// One connection's client-to-server byte stream, rewritten. Feed it what was read with
/// [`push`](Self::push); hand h2 what [`output`](Self::output) holds.
pub(super) struct AuthorityRewrite {
    input: BytesMut,
    output: BytesMut,
    preface_seen: bool,
    /// Bytes of the current non-header frame still to pass on unchanged.
    passthrough: usize,
    /// A HEADERS frame waiting for its CONTINUATIONs.
    block: Option<PendingBlock>,
    decoder: loona_hpack::Decoder<'static>,
    /// Set after anything unexpected: from then on every byte passes unchanged.
    verbatim: bool,
}

struct PendingBlock {
    stream_id: u32,
    end_stream: bool,
    fragment: Vec<u8>,
    /// The frames as received, for the fall-back to pass-through.
    raw: Vec<u8>,
}

impl Default for AuthorityRewrite {
    fn default() -> Self {
        AuthorityRewrite {
            input: BytesMut::new(),
            output: BytesMut::new(),
            preface_seen: false,
            passthrough: 0,
            block: None,
            decoder: loona_hpack::Decoder::new(),
            verbatim: false,
        }
    }
}

impl AuthorityRewrite {
    /// Takes bytes read from the client and rewrites every complete header block in them.
    pub(super) fn push(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
        self.process();
    }

    /// The client closed its side: whatever is left incomplete goes on as it is.
    pub(super) fn finish(&mut self) {
        if let Some(block) = self.block.take() {
            self.output.extend_from_slice(&block.raw);
        }
        let rest = self.input.split();
        self.output.extend_from_slice(&rest);
    }

    /// Bytes ready for the HTTP/2 server.
    pub(super) fn output(&mut self) -> &mut BytesMut {
        &mut self.output
    }

    /// Moves as much output as fits into `into`.
    pub(super) fn take_output(&mut self, into: &mut tokio::io::ReadBuf<'_>) {
        let n = into.remaining().min(self.output.len());
        into.put_slice(&self.output[..n]);
        self.output.advance(n);
    }

    fn process(&mut self) {
        loop {
            if self.verbatim {
                let rest = self.input.split();
                self.output.extend_from_slice(&rest);
                return;
            }
            if !self.preface_seen {
                let n = self.input.len().min(PREFACE.len());
                if self.input[..n] != PREFACE[..n] {
                    // Not HTTP/2 with prior knowledge: h2 will say so.
                    self.verbatim = true;
                    continue;
                }
                if n < PREFACE.len() {
                    return;
                }
                let preface = self.input.split_to(PREFACE.len());
                self.output.extend_from_slice(&preface);
                self.preface_seen = true;
                continue;
            }
            if self.passthrough > 0 {
                let n = self.passthrough.min(self.input.len());
                if n == 0 {
                    return;
                }
                let bytes = self.input.split_to(n);
                self.output.extend_from_slice(&bytes);
                self.passthrough -= n;
                continue;
            }
            if self.input.len() < FRAME_HEADER {
                return;
            }
            let length = u32::from_be_bytes([0, self.input[0], self.input[1], self.input[2]]) as usize;
            let (kind, flags) = (self.input[3], self.input[4]);
            let stream_id =
                u32::from_be_bytes([self.input[5], self.input[6], self.input[7], self.input[8]]) & 0x7fff_ffff;
            let continues_block = self.block.as_ref().map(|b| b.stream_id);
            match (kind, continues_block) {
                (HEADERS, None) => {}
                (CONTINUATION, Some(id)) if id == stream_id => {}
                (_, Some(_)) | (CONTINUATION, None) => {
                    // RFC 9113 §6.10: nothing may interleave with a header block. h2 will reject it.
                    self.give_up();
                    continue;
                }
                (_, None) => {
                    let header = self.input.split_to(FRAME_HEADER);
                    self.output.extend_from_slice(&header);
                    self.passthrough = length;
                    continue;
                }
            }
            if self.input.len() < FRAME_HEADER + length {
                return;
            }
            let frame = self.input.split_to(FRAME_HEADER + length);
            let payload = &frame[FRAME_HEADER..];
            if kind == HEADERS {
                let Some(fragment) = headers_fragment(flags, payload) else {
                    self.output.extend_from_slice(&frame);
                    self.verbatim = true;
                    continue;
                };
                self.block = Some(PendingBlock {
                    stream_id,
                    end_stream: flags & END_STREAM != 0,
                    fragment: fragment.to_vec(),
                    raw: frame.to_vec(),
                });
            } else if let Some(block) = &mut self.block {
                block.fragment.extend_from_slice(payload);
                block.raw.extend_from_slice(&frame);
                if block.raw.len() > MAX_BLOCK {
                    self.give_up();
                    continue;
                }
            }
            if flags & END_HEADERS != 0
                && let Some(block) = self.block.take()
            {
                self.emit(block);
            }
        }
    }

    /// Passes the pending block and everything after it on unchanged.
    fn give_up(&mut self) {
        if let Some(block) = self.block.take() {
            self.output.extend_from_slice(&block.raw);
        }
        self.verbatim = true;
    }

    fn emit(&mut self, block: PendingBlock) {
        let mut fields = Vec::new();
        let decoded = self.decoder.decode_with_cb(&block.fragment, |name, value| {
            let value = if &*name == b":authority" && http::uri::Authority::try_from(&*value).is_err() {
                REPLACEMENT.as_bytes().to_vec()
            } else {
                value.into_owned()
            };
            fields.push((name.into_owned(), value));
        });
        if let Err(err) = decoded {
            tracing::debug!(?err, "a client's header block does not decode; passing its bytes on unchanged");
            self.output.extend_from_slice(&block.raw);
            self.verbatim = true;
            return;
        }
        let encoded = encode_without_indexing(&fields);
        let mut chunks = encoded.chunks(MAX_FRAME).peekable();
        let mut first = true;
        // An empty block still needs its one HEADERS frame.
        let empty: &[u8] = &[];
        let mut next = chunks.next().or(Some(empty));
        while let Some(chunk) = next {
            next = chunks.next();
            let mut flags = 0;
            if first && block.end_stream {
                flags |= END_STREAM;
            }
            if next.is_none() {
                flags |= END_HEADERS;
            }
            let kind = if first { HEADERS } else { CONTINUATION };
            let length = (chunk.len() as u32).to_be_bytes();
            self.output.extend_from_slice(&[length[1], length[2], length[3], kind, flags]);
            self.output.extend_from_slice(&block.stream_id.to_be_bytes());
            self.output.extend_from_slice(chunk);
            first = false;
        }
    }
}

/// The header block fragment of a HEADERS frame, without padding and priority; `None` when the
/// padding does not fit.
fn headers_fragment(flags: u8, payload: &[u8]) -> Option<&[u8]> {
    let mut payload = payload;
    let mut padding = 0;
    if flags & PADDED != 0 {
        padding = *payload.first()? as usize;
        payload = &payload[1..];
    }
    if flags & PRIORITY != 0 {
        payload = payload.get(5..)?;
    }
    payload.get(..payload.len().checked_sub(padding)?)
}

/// Every field as a literal without indexing and with a literal name (RFC 7541 §6.2.2), so the
/// server's dynamic table stays empty and nothing depends on the client's.
fn encode_without_indexing(fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0);
        for string in [name, value] {
            // Writing to a Vec cannot fail.
            let _ = loona_hpack::encoder::encode_integer_into(string.len(), 7, 0, &mut out);
            out.extend_from_slice(string);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let length = (payload.len() as u32).to_be_bytes();
        let mut out = vec![length[1], length[2], length[3], kind, flags];
        out.extend_from_slice(&stream_id.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// A frame as the server reads it: type, flags, stream id, payload.
    type Frame = (u8, u8, u32, Vec<u8>);
    /// A decoded header block: (name, value) pairs.
    type Block = Vec<(String, String)>;

    /// Splits rewritten output into frames and decodes every header block with a fresh decoder
    /// (the output never indexes, so a fresh one must do).
    fn server_view(mut bytes: &[u8]) -> (Vec<Frame>, Vec<Block>) {
        assert!(bytes.starts_with(PREFACE));
        bytes = &bytes[PREFACE.len()..];
        let mut frames = Vec::new();
        let mut blocks = Vec::new();
        let mut block = Vec::new();
        while !bytes.is_empty() {
            let length = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
            let (kind, flags) = (bytes[3], bytes[4]);
            let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
            let payload = bytes[FRAME_HEADER..FRAME_HEADER + length].to_vec();
            if kind == HEADERS || kind == CONTINUATION {
                block.extend_from_slice(&payload);
                if flags & END_HEADERS != 0 {
                    let fields = loona_hpack::Decoder::new().decode(&block).expect("output decodes without state");
                    blocks.push(
                        fields
                            .into_iter()
                            .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
                            .collect(),
                    );
                    block.clear();
                }
            }
            frames.push((kind, flags, stream, payload));
            bytes = &bytes[FRAME_HEADER + length..];
        }
        (frames, blocks)
    }

    fn authority(block: &[(String, String)]) -> Option<&str> {
        block.iter().find(|(n, _)| n == ":authority").map(|(_, v)| v.as_str())
    }

    /// The literal header block grpc-python 1.85 sends for `unix:///tmp/authx/s.sock`, captured
    /// on a socket: `:authority` as a literal with incremental indexing and a literal name.
    fn grpc_python_block(path: &str) -> Vec<u8> {
        let mut block = vec![0x40, 5];
        block.extend_from_slice(b":path");
        block.push(path.len() as u8);
        block.extend_from_slice(path.as_bytes());
        block.extend_from_slice(&[0x40, 10]);
        block.extend_from_slice(b":authority");
        block.push(20);
        block.extend_from_slice(b"tmp%2Fauthx%2Fs.sock");
        block.extend_from_slice(&[0x83, 0x86]); // :method POST, :scheme http (static table)
        block
    }

    #[test]
    fn a_percent_encoded_socket_path_becomes_localhost_also_when_indexed_later() {
        let mut rewrite = AuthorityRewrite::default();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        input.extend(frame(HEADERS, END_HEADERS, 1, &grpc_python_block("/a")));
        input.extend(frame(0x0, END_STREAM, 1, b"hello"));
        // The second call on the connection refers to the dynamic table: index 62 is the newest
        // entry (`:authority`), 63 the `:path` before it.
        input.extend(frame(HEADERS, END_HEADERS, 3, &[0x80 | 63, 0x80 | 62, 0x83, 0x86]));
        // Fed a byte at a time: frames are reassembled whatever the reads.
        for byte in &input {
            rewrite.push(std::slice::from_ref(byte));
        }
        let (frames, blocks) = server_view(rewrite.output());
        assert_eq!(blocks.len(), 2);
        for block in &blocks {
            assert_eq!(authority(block), Some(REPLACEMENT), "{block:?}");
            assert!(block.contains(&(":path".into(), "/a".into())), "{block:?}");
        }
        let data: Vec<_> = frames.iter().filter(|f| f.0 == 0x0).collect();
        assert_eq!(data, [&(0x0, END_STREAM, 1, b"hello".to_vec())], "DATA passes unchanged");
    }

    #[test]
    fn a_valid_authority_is_kept_and_padding_priority_and_continuations_are_undone() {
        let mut encoder = loona_hpack::Encoder::new();
        let long = "x".repeat(40_000);
        let fields: Vec<(&[u8], &[u8])> =
            vec![(b":authority", b"localhost:50051"), (b":path", b"/p"), (b"x-long", long.as_bytes())];
        let block = encoder.encode(fields.iter().map(|(n, v)| (*n, *v)));
        let (head, tail) = block.split_at(100);
        let mut headers = vec![3]; // pad length
        headers.extend_from_slice(&[0, 0, 0, 0, 16]); // priority
        headers.extend_from_slice(head);
        headers.extend_from_slice(&[0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 5, &headers));
        for (i, chunk) in tail.chunks(10_000).enumerate() {
            let last = (i + 1) * 10_000 >= tail.len();
            input.extend(frame(CONTINUATION, if last { END_HEADERS } else { 0 }, 5, chunk));
        }
        let mut rewrite = AuthorityRewrite::default();
        rewrite.push(&input);
        let (frames, blocks) = server_view(rewrite.output());
        assert_eq!(authority(&blocks[0]), Some("localhost:50051"));
        assert_eq!(blocks[0][2].1.len(), 40_000);
        assert_eq!(frames[0].0, HEADERS);
        assert_eq!(frames[0].1, END_STREAM, "padding and priority are gone, END_STREAM kept");
        assert!(frames.iter().all(|f| f.3.len() <= MAX_FRAME));
        assert_eq!(frames.last().unwrap().1 & END_HEADERS, END_HEADERS);
    }

    #[test]
    fn an_endless_header_block_is_not_buffered_but_passed_on() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, &[0x82]));
        for _ in 0..(MAX_BLOCK / 16_000 + 1) {
            input.extend(frame(CONTINUATION, 0, 1, &[0x82; 16_000]));
        }
        let mut rewrite = AuthorityRewrite::default();
        rewrite.push(&input);
        assert!(rewrite.block.is_none() && rewrite.verbatim);
        assert_eq!(&rewrite.output()[..], &input[..], "everything went on unchanged");
    }

    #[test]
    fn a_broken_header_block_reaches_the_server_as_it_was_sent() {
        let mut input = PREFACE.to_vec();
        let broken = frame(HEADERS, END_HEADERS, 1, &[0x80 | 100]); // index 100 does not exist
        input.extend(&broken);
        input.extend(frame(0x0, 0, 1, b"after"));
        let mut rewrite = AuthorityRewrite::default();
        rewrite.push(&input);
        assert_eq!(&rewrite.output()[..], &input[..]);
    }
}
