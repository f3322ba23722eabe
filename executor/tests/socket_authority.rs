//! Clients that send a socket path as `:authority` are served
//! (docs/design/executor-protocol.md#stock-grpc-clients). tonic's own client cannot send such an
//! authority, so this test speaks HTTP/2 by hand on the socket, as grpc-core (percent-encoded
//! path) and grpc-java (the path) do; the Python tests do the same with a stock grpcio channel.

use std::sync::Arc;
use std::time::Duration;

use hangar::executor::v1 as pb;
use hangar_executor::runtime::mock::MockRuntime;
use hangar_executor::testing::TestExecutor;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let length = (payload.len() as u32).to_be_bytes();
    let mut out = vec![length[1], length[2], length[3], kind, flags];
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A unary gRPC call on `stream_id`: HEADERS encoded with `encoder` (which indexes, as grpc-core's
/// does, so the second call refers to the first's table entries), then the message.
fn handshake_call(encoder: &mut loona_hpack::Encoder, stream_id: u32, authority: &str) -> Vec<u8> {
    let headers: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", b"/hangar.executor.v1.ExecutorService/Handshake"),
        (b":authority", authority.as_bytes()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ];
    let block = encoder.encode(headers);
    let message = pb::HandshakeRequest { protocol_major: 1, client_name: "by-hand".into(), ..Default::default() };
    let body = message.encode_to_vec();
    let mut grpc = vec![0];
    grpc.extend_from_slice(&(body.len() as u32).to_be_bytes());
    grpc.extend_from_slice(&body);
    let mut out = frame(HEADERS, END_HEADERS, stream_id, &block);
    out.extend(frame(DATA, END_STREAM, stream_id, &grpc));
    out
}

#[tokio::test]
async fn calls_with_a_socket_path_as_authority_complete_the_handshake() {
    let exec = TestExecutor::start(Arc::new(MockRuntime::new())).await.unwrap();
    let mut socket = tokio::net::UnixStream::connect(&exec.socket).await.unwrap();
    let path = exec.socket.display().to_string();
    // grpc-core's form, then grpc-java's, on one connection.
    let percent_encoded = path.trim_start_matches('/').replace('/', "%2F");
    let mut encoder = loona_hpack::Encoder::new();
    let mut request = PREFACE.to_vec();
    request.extend(frame(SETTINGS, 0, 0, &[]));
    request.extend(handshake_call(&mut encoder, 1, &percent_encoded));
    request.extend(handshake_call(&mut encoder, 3, &path));
    socket.write_all(&request).await.unwrap();

    // Read until both streams ended with trailers; fail on a reset.
    let mut decoder = loona_hpack::Decoder::new();
    let mut statuses = std::collections::BTreeMap::new();
    let mut answers = std::collections::BTreeMap::new();
    let mut buffer = Vec::new();
    let read = async {
        while statuses.len() < 2 {
            let mut chunk = [0u8; 4096];
            let n = socket.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the executor closed the connection; statuses so far: {statuses:?}");
            buffer.extend_from_slice(&chunk[..n]);
            while buffer.len() >= 9 {
                let length = u32::from_be_bytes([0, buffer[0], buffer[1], buffer[2]]) as usize;
                if buffer.len() < 9 + length {
                    break;
                }
                let (kind, flags) = (buffer[3], buffer[4]);
                let stream = u32::from_be_bytes([buffer[5], buffer[6], buffer[7], buffer[8]]);
                let payload: Vec<u8> = buffer.drain(..9 + length).skip(9).collect();
                match kind {
                    RST_STREAM => panic!("the executor reset stream {stream}: error code {:?}", &payload[..4]),
                    GOAWAY => panic!("the executor sent GOAWAY: {payload:?}"),
                    HEADERS => {
                        let fields = decoder.decode(&payload).expect("the executor's headers decode");
                        if let Some((_, status)) = fields.iter().find(|(name, _)| name == b"grpc-status") {
                            statuses.insert(stream, String::from_utf8(status.clone()).unwrap());
                        }
                        assert_ne!(flags & END_HEADERS, 0, "small header blocks come in one frame");
                    }
                    DATA if payload.len() > 5 => {
                        answers.insert(stream, pb::HandshakeResponse::decode(&payload[5..]).unwrap());
                    }
                    _ => {}
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.expect("both calls answered within 10 s");
    assert_eq!(statuses.values().collect::<Vec<_>>(), ["0", "0"], "both calls succeed: {statuses:?}");
    for stream in [1, 3] {
        assert_eq!(answers[&stream].protocol_major, 1, "stream {stream}: {:?}", answers[&stream]);
        assert_eq!(answers[&stream].runtime_kind, "mock");
    }
}
