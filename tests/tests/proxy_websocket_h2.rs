//! WebSockets over HTTP/2 (RFC 8441) through the proxy: an HTTP/2 client opens each WebSocket
//! with an extended CONNECT (`:protocol = websocket`) on one h2c connection, the proxy turns it
//! into an HTTP/1.1 upgrade towards the backend, and tungstenite speaks RFC 6455 over the stream.
//! Backends are the real test backend process (an echo endpoint) and, where a test needs to see
//! the handshake, close first or echo whole messages, a tungstenite server in the test. The last
//! test's client is headless chromium over TLS (HTTP/2 via ALPN), as a browser user's would be;
//! without chromium it prints a loud SKIP line, and fails when `HANGAR_REQUIRE_CHROMIUM=1`.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hangar::v1;
use hangar_server::proxy::{Proxy, ProxyConfig, RunningProxy};
use hangar_tests::proxy_plane::ProxyPlane;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, frame::coding::CloseCode};
use tokio_tungstenite::tungstenite::{Message, handshake::server};

const WAIT: Duration = Duration::from_secs(10);

type H2WebSocket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

struct Setup {
    plane: ProxyPlane,
    proxy: RunningProxy,
    _backend: KillOnDrop,
    /// The test backend process (`/ws` echoes every frame, `/request` is plain HTTP).
    echo_address: String,
}

struct KillOnDrop(std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn setup() -> Setup {
    setup_with(None).await
}

async fn setup_with(tls: Option<hangar_server::proxy::TlsFiles>) -> Setup {
    hangar_tests::init_logging();
    let (plane, control_url) = ProxyPlane::start().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let backend = KillOnDrop(
        std::process::Command::new(hangar_executor::testing::test_backend_binary())
            .env("PORT", port.to_string())
            .env("HANGAR_BACKEND_ID", "bk-echo")
            .spawn()
            .unwrap(),
    );
    let echo_address = format!("127.0.0.1:{port}");
    hangar_executor::testing::wait_for_http(&echo_address, "/", WAIT).await;
    let mut config = ProxyConfig::new(vec![control_url], "edge-h2");
    config.traffic_report_interval = Duration::from_millis(100);
    config.heartbeat_interval = Duration::from_millis(100);
    config.startup_wait = Duration::from_millis(300);
    config.tls = tls;
    let proxy = Proxy::start(config, tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).await.unwrap();
    Setup { plane, proxy, _backend: backend, echo_address }
}

/// One HTTP/2 (prior knowledge, h2c) connection to the proxy.
async fn h2_connection(setup: &Setup) -> SendRequest<Empty<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(setup.proxy.local_addr()).await.unwrap();
    let (send, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(connection);
    send
}

/// The extended CONNECT of RFC 8441 §4 for `path`, with extra headers.
fn extended_connect(
    setup: &Setup,
    path: &str,
    protocol: &'static str,
    headers: &[(&str, &str)],
) -> http::Request<Empty<Bytes>> {
    let mut request = http::Request::builder()
        .method(Method::CONNECT)
        .uri(format!("http://{}{path}", setup.proxy.local_addr()))
        .header("sec-websocket-version", "13")
        .extension(hyper::ext::Protocol::from_static(protocol));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Empty::new()).unwrap()
}

/// Opens a WebSocket on `send`'s connection; the 200's headers and the socket.
async fn open_websocket(
    setup: &Setup,
    send: &mut SendRequest<Empty<Bytes>>,
    path: &str,
    headers: &[(&str, &str)],
) -> (HeaderMap, H2WebSocket) {
    send.ready().await.unwrap();
    let mut response = send.send_request(extended_connect(setup, path, "websocket", headers)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "the proxy accepts the extended CONNECT: {response:?}");
    assert_eq!(response.version(), http::Version::HTTP_2);
    let upgraded = hyper::upgrade::on(&mut response).await.expect("the stream becomes the WebSocket");
    let socket = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    (response.headers().clone(), socket)
}

/// The status and `x-hangar-error` of an answer that opened no WebSocket.
async fn refused(
    setup: &Setup,
    send: &mut SendRequest<Empty<Bytes>>,
    path: &str,
    protocol: &'static str,
) -> (StatusCode, String) {
    send.ready().await.unwrap();
    let response = send.send_request(extended_connect(setup, path, protocol, &[])).await.unwrap();
    let error = response.headers().get("x-hangar-error").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let status = response.status();
    response.into_body().collect().await.unwrap();
    (status, error)
}

async fn echo(socket: &mut H2WebSocket, message: Message) {
    socket.send(message.clone()).await.unwrap();
    let echoed = tokio::time::timeout(WAIT, socket.next()).await.expect("an echo in time").unwrap().unwrap();
    assert_eq!(echoed, message);
}

#[tokio::test]
async fn websockets_over_http2_echo_text_binary_and_a_2_mib_frame_side_by_side_on_one_connection() {
    let s = setup().await;
    s.plane.route("tok", "bk-echo", v1::BackendState::Ready, &s.echo_address);
    let mut send = h2_connection(&s).await;
    let (_, mut first) = open_websocket(&s, &mut send, "/tok/ws", &[]).await;
    let (_, mut second) = open_websocket(&s, &mut send, "/tok/ws", &[]).await;

    echo(&mut first, Message::text("hello over h2")).await;
    echo(&mut second, Message::text("the second stream")).await;
    echo(&mut first, Message::binary(vec![0u8, 1, 2, 255])).await;
    // Larger than any HTTP/2 window or frame: the proxy streams it through flow control.
    let large: Vec<u8> = (0..2 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    echo(&mut first, Message::binary(large)).await;
    // An ordinary request still goes over the same connection while both are open.
    send.ready().await.unwrap();
    let plain = http::Request::get(format!("http://{}/tok/request?beside=ws", s.proxy.local_addr()))
        .body(Empty::new())
        .unwrap();
    let response = send.send_request(plain).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(String::from_utf8_lossy(&body).trim(), "GET /request?beside=ws");

    // An open WebSocket is its backend in use: it is reported as traffic.
    let mut traffic = s.plane.traffic.subscribe();
    traffic.borrow_and_update();
    s.plane.traffic.send_modify(Vec::clear);
    tokio::time::timeout(WAIT, traffic.wait_for(|seen| seen.iter().any(|id| id == "bk-echo")))
        .await
        .expect("the open WebSocket is reported as traffic")
        .unwrap();

    // The client closes; the backend's echoed close comes back and the stream ends.
    first.close(None).await.unwrap();
    match tokio::time::timeout(WAIT, first.next()).await.expect("the close is answered") {
        Some(Ok(Message::Close(_))) | None => {}
        other => panic!("expected the close handshake to finish, got {other:?}"),
    }
    assert!(tokio::time::timeout(WAIT, first.next()).await.expect("the stream ends").is_none());
    // The other WebSocket on the connection is untouched.
    echo(&mut second, Message::text("still open")).await;
    second.close(None).await.unwrap();
    s.proxy.shutdown().await;
}

/// A backend in the test that echoes whole WebSocket messages (tungstenite reassembles fragmented
/// ones), on any number of connections.
async fn message_echo_backend() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(socket) = tokio_tungstenite::accept_async(tcp).await else { return };
                let (mut write, mut read) = socket.split();
                while let Some(Ok(message)) = read.next().await {
                    if message.is_close() {
                        break; // tungstenite answers the close itself
                    }
                    if message.is_text() || message.is_binary() {
                        let _ = write.send(message).await;
                    }
                }
                let _ = write.flush().await;
            });
        }
    });
    address
}

/// A backend in the test, speaking RFC 6455 with tungstenite: records the handshake it got,
/// picks the `chat` subprotocol, sends one message and closes first.
async fn closing_backend() -> (String, Arc<Mutex<Option<http::Request<()>>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(None));
    let record = seen.clone();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        #[expect(clippy::result_large_err, reason = "the signature is tungstenite's handshake callback")]
        let callback = |request: &server::Request, mut response: server::Response| {
            let mut copy = http::Request::new(());
            (*copy.method_mut(), *copy.uri_mut(), *copy.headers_mut()) =
                (request.method().clone(), request.uri().clone(), request.headers().clone());
            *record.lock().unwrap() = Some(copy);
            response.headers_mut().insert("sec-websocket-protocol", "chat".parse().unwrap());
            Ok(response)
        };
        let mut socket = tokio_tungstenite::accept_hdr_async(tcp, callback).await.unwrap();
        socket.send(Message::text("from the backend")).await.unwrap();
        socket.close(Some(CloseFrame { code: CloseCode::Normal, reason: "done".into() })).await.unwrap();
        // Reads the client's answer to the close; the stream then ends.
        while let Some(Ok(_)) = socket.next().await {}
    });
    (address, seen)
}

#[tokio::test]
async fn the_backend_gets_a_websocket_upgrade_with_the_clients_subprotocols_and_its_close_reaches_the_client() {
    let s = setup().await;
    let (address, seen) = closing_backend().await;
    s.plane.route("chat", "bk-chat", v1::BackendState::Ready, &address);
    let mut send = h2_connection(&s).await;
    let offered = [("sec-websocket-protocol", "chat, superchat"), ("sec-websocket-extensions", "x-test; a=1")];
    let (headers, mut socket) = open_websocket(&s, &mut send, "/chat/room?name=a", &offered).await;
    assert_eq!(headers["sec-websocket-protocol"], "chat", "the backend's choice reaches the client");
    assert!(!headers.contains_key("sec-websocket-accept") && !headers.contains_key("upgrade"));

    let request = seen.lock().unwrap().take().expect("the backend saw the handshake");
    assert_eq!((request.method(), request.uri().to_string()), (&Method::GET, "/room?name=a".to_string()));
    let header = |name: &str| request.headers().get(name).map(|v| v.to_str().unwrap().to_string());
    assert_eq!(header("upgrade").as_deref(), Some("websocket"));
    assert_eq!(header("sec-websocket-version").as_deref(), Some("13"));
    assert_eq!(header("sec-websocket-key").map(|k| k.len()), Some(24), "a base64 16-byte key");
    assert_eq!(header("sec-websocket-protocol").as_deref(), Some("chat, superchat"));
    assert_eq!(header("sec-websocket-extensions").as_deref(), Some("x-test; a=1"));
    assert_eq!(header("x-hangar-backend-id").as_deref(), Some("bk-chat"));
    assert_eq!(header("x-verified-user").as_deref(), Some("alice"));

    let message = tokio::time::timeout(WAIT, socket.next()).await.expect("a message in time").unwrap().unwrap();
    assert_eq!(message, Message::text("from the backend"));
    match tokio::time::timeout(WAIT, socket.next()).await.expect("the close in time") {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!((frame.code, frame.reason.as_str()), (CloseCode::Normal, "done"))
        }
        other => panic!("expected the backend's close frame, got {other:?}"),
    }
    // tungstenite answered the close; the backend then ends the connection and the stream ends.
    assert!(tokio::time::timeout(WAIT, socket.next()).await.expect("the stream ends").is_none());
    s.proxy.shutdown().await;
}

#[tokio::test]
async fn refusals_reach_the_http2_client_as_they_reach_an_http1_client() {
    let s = setup().await;
    let address = s.echo_address.clone();
    s.plane.route("tok", "bk-echo", v1::BackendState::Ready, &address);
    s.plane.route("starting", "bk-echo", v1::BackendState::Starting, &address);
    s.plane.route("gone", "bk-echo", v1::BackendState::Terminated, &address);
    let mut send = h2_connection(&s).await;

    // The backend's own refusal (its 404) is passed back as it is.
    assert_eq!(refused(&s, &mut send, "/tok/no-such-path", "websocket").await, (StatusCode::NOT_FOUND, String::new()));
    // A 200 without switching protocols must not open a tunnel the backend never agreed to.
    assert_eq!(
        refused(&s, &mut send, "/tok/request", "websocket").await,
        (StatusCode::BAD_GATEWAY, "upgrade-refused".into())
    );
    assert_eq!(
        refused(&s, &mut send, "/tok/ws", "connect-udp").await,
        (StatusCode::NOT_IMPLEMENTED, "unsupported-protocol".into())
    );
    // Routes that are not READY answer what an HTTP/1.1 WebSocket handshake gets.
    for (path, status, error) in [
        ("/starting/ws", StatusCode::SERVICE_UNAVAILABLE, "backend-starting"),
        ("/gone/ws", StatusCode::GONE, "backend-terminated"),
        ("/unknown/ws", StatusCode::NOT_FOUND, "unknown-token"),
    ] {
        assert_eq!(refused(&s, &mut send, path, "websocket").await, (status, error.to_string()), "{path} over h2");
        let url = format!("ws://{}{path}", s.proxy.local_addr());
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(
                    (response.status(), response.headers()["x-hangar-error"].to_str().unwrap()),
                    (status, error)
                );
            }
            other => panic!("expected {status} over HTTP/1.1 for {path}, got {other:?}"),
        }
    }
    // The connection survived every refusal.
    let (_, mut socket) = open_websocket(&s, &mut send, "/tok/ws", &[]).await;
    echo(&mut socket, Message::text("after the refusals")).await;
    s.proxy.shutdown().await;
}

#[tokio::test]
async fn a_shutting_down_proxy_closes_http2_websockets_with_a_going_away_frame() {
    let s = setup().await;
    s.plane.route("tok", "bk-echo", v1::BackendState::Ready, &s.echo_address);
    let mut send = h2_connection(&s).await;
    let (_, mut socket) = open_websocket(&s, &mut send, "/tok/ws", &[]).await;
    echo(&mut socket, Message::text("before")).await;

    let shutdown = tokio::spawn(s.proxy.shutdown());
    match tokio::time::timeout(WAIT, socket.next()).await.expect("a message before the grace ends") {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected a close frame (1001), got {other:?}"),
    }
    while let Some(Ok(_)) = tokio::time::timeout(WAIT, socket.next()).await.expect("the stream ends") {}
    tokio::time::timeout(WAIT, shutdown).await.expect("the shutdown ends once the WebSocket is closed").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_browser_opens_its_websocket_as_an_http2_stream_and_echoes_text_and_1_mib() {
    use hangar_tests::browser::{Browser, Page, chromium_or_skip};
    let test = "a_real_browser_opens_its_websocket_as_an_http2_stream_and_echoes_text_and_1_mib";
    let Some(chromium) = chromium_or_skip(test) else { return };
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let s = setup_with(Some(hangar_server::proxy::TlsFiles { cert: cert_path, key: key_path })).await;
    // Chromium splits large messages into frames; this backend echoes whole messages.
    s.plane.route("tok", "bk-echo", v1::BackendState::Ready, &message_echo_backend().await);
    let origin = format!("127.0.0.1:{}", s.proxy.local_addr().port());

    // Browsers speak HTTP/2 over TLS only; the certificate is the test's own.
    let browser = Browser::launch(&chromium, &["--ignore-certificate-errors"]).await;
    let mut page = Page::open(&browser, &format!("https://{origin}/tok/")).await;
    assert_eq!(page.eval("performance.getEntriesByType('navigation')[0].nextHopProtocol").await, "h2");
    let script = format!(
        r#"new Promise((resolve, reject) => {{
            const ws = new WebSocket('wss://{origin}/tok/ws');
            ws.binaryType = 'arraybuffer';
            const large = new Uint8Array(1 << 20).map((_, i) => i % 251);
            const got = [];
            ws.onopen = () => {{ ws.send('hello from chromium'); ws.send(large); }};
            ws.onmessage = (event) => {{
                if (typeof event.data === 'string') {{ got.push(event.data); return; }}
                const echoed = new Uint8Array(event.data);
                got.push(echoed.length === large.length && echoed.every((b, i) => b === large[i])
                    ? 'the 1 MiB frame came back whole' : 'the 1 MiB frame came back different');
                ws.close(1000, 'done');
            }};
            ws.onclose = (event) => resolve({{ got, code: event.code, reason: event.reason, clean: event.wasClean }});
            ws.onerror = () => reject(new Error('the WebSocket failed'));
        }})"#
    );
    let outcome = page.try_eval(&script).await.unwrap_or_else(|exception| {
        let network: Vec<_> = page
            .events
            .iter()
            .filter(|e| matches!(e["method"].as_str(), Some("Network.webSocketFrameError" | "Network.webSocketClosed")))
            .collect();
        panic!("the WebSocket failed: {exception}\nits errors: {network:#?}")
    });
    assert_eq!(
        outcome,
        serde_json::json!({
            "got": ["hello from chromium", "the 1 MiB frame came back whole"],
            "code": 1000, "reason": "done", "clean": true,
        }),
        "chromium's stderr:\n{}",
        browser.log.lock().unwrap().join("\n")
    );
    // Over HTTP/1.1 the handshake's answer is a 101; over HTTP/2 (RFC 8441) it is a 200.
    let handshake = page.wait_for_event("Network.webSocketHandshakeResponseReceived").await;
    assert_eq!(handshake["params"]["response"]["status"], 200, "the WebSocket went over HTTP/2: {handshake:#}");
    drop(page);
    drop(browser);
    s.proxy.shutdown().await;
}
