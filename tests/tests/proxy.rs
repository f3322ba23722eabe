//! The proxy against a scripted control plane (the ProxyService routes are set by each test) and
//! the real test backend as a local process: what a client sees through a connection URL.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hangar::v1;
use hangar_server::proxy::{Proxy, ProxyConfig, RunningProxy};
use hangar_testkit::{check, eventually};
use hangar_tests::proxy_plane::ProxyPlane;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(5);

struct Setup {
    plane: ProxyPlane,
    proxy: RunningProxy,
    backend: KillOnDrop,
    backend_address: String,
}

struct KillOnDrop(std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    hangar_testkit::free_address().rsplit(':').next().unwrap().parse().unwrap()
}

async fn setup() -> Setup {
    setup_with(|_| {}).await
}

async fn setup_with(configure: impl FnOnce(&mut ProxyConfig)) -> Setup {
    hangar_tests::init_logging();
    let (plane, control_url) = ProxyPlane::start().await;

    let port = free_port();
    let backend = KillOnDrop(
        std::process::Command::new(hangar_executor::testing::test_backend_binary())
            .env("PORT", port.to_string())
            .env("HANGAR_BACKEND_ID", "bk-1")
            .spawn()
            .unwrap(),
    );
    let backend_address = format!("127.0.0.1:{port}");
    hangar_executor::testing::wait_for_http(&backend_address, "/", Duration::from_secs(10)).await;

    let mut config = ProxyConfig::new(vec![control_url], "edge-test");
    config.traffic_report_interval = Duration::from_millis(100);
    config.heartbeat_interval = Duration::from_millis(100);
    config.startup_wait = Duration::from_millis(600);
    configure(&mut config);
    let proxy = Proxy::start(config, tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).await.unwrap();
    Setup { plane, proxy, backend, backend_address }
}

/// `token` leads to backend bk-1 at `address`, for alice of team blue.
fn route(setup: &Setup, token: &str, state: v1::BackendState, address: &str) {
    setup.plane.route_with_auth(token, "bk-1", state, address, &[("team", "blue")]);
}

async fn get(url: &str, headers: &[(&str, &str)]) -> (http::StatusCode, http::HeaderMap, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = http::Request::get(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = client.request(request.body(Full::default()).unwrap()).await.unwrap();
    let (parts, body) = response.into_parts();
    (parts.status, parts.headers, String::from_utf8_lossy(&body.collect().await.unwrap().to_bytes()).into_owned())
}

#[tokio::test]
async fn request_reaches_the_backend_with_its_id_and_without_spoofed_identity() {
    let s = setup().await;
    route(&s, "tok", v1::BackendState::Ready, &s.backend_address);
    let base = s.proxy.url();
    let (status, _, body) =
        get(&format!("{base}/tok/headers"), &[("x-verified-user", "mallory"), ("x-verified-admin", "yes")]).await;
    assert_eq!(status, 200);
    let lower = body.to_ascii_lowercase();
    assert!(lower.contains("x-hangar-backend-id: bk-1"), "{body}");
    assert!(lower.contains("x-verified-user: alice") && !lower.contains("mallory"), "{body}");
    assert!(lower.contains("x-verified-team: blue") && !lower.contains("x-verified-admin"), "{body}");

    let (status, _, body) = get(&format!("{base}/tok/request?a=1&b=two"), &[]).await;
    assert_eq!((status.as_u16(), body.trim()), (200, "GET /request?a=1&b=two"), "path and query reach the backend");

    // The traffic reaches the controller in a report, for the idle sweep.
    let mut reported = s.plane.traffic.subscribe();
    tokio::time::timeout(WAIT, reported.wait_for(|backends| backends.iter().any(|b| b == "bk-1")))
        .await
        .expect("a traffic report names bk-1")
        .unwrap();
    drop(s.backend);
    s.proxy.shutdown().await;
}

#[tokio::test]
async fn unknown_token_terminated_backend_and_unreachable_backend_get_distinct_answers() {
    let s = setup().await;
    let base = s.proxy.url();
    let (status, headers, body) = get(&format!("{base}/nope/"), &[]).await;
    assert_eq!(
        (status.as_u16(), &headers["x-hangar-error"]),
        (404, &"unknown-token".parse::<http::HeaderValue>().unwrap())
    );
    assert!(body.contains("Connect"), "{body}");

    route(&s, "gone", v1::BackendState::Terminated, &s.backend_address);
    let (status, headers, _) = get(&format!("{base}/gone/"), &[]).await;
    assert_eq!((status.as_u16(), headers["x-hangar-error"].to_str().unwrap()), (410, "backend-terminated"));

    route(&s, "dead", v1::BackendState::Ready, &format!("127.0.0.1:{}", free_port()));
    let (status, headers, _) = get(&format!("{base}/dead/"), &[]).await;
    assert_eq!((status.as_u16(), headers["x-hangar-error"].to_str().unwrap()), (502, "backend-unreachable"));

    route(&s, "slow", v1::BackendState::Starting, &s.backend_address);
    let (status, headers, _) = get(&format!("{base}/slow/"), &[]).await;
    assert_eq!((status.as_u16(), headers["x-hangar-error"].to_str().unwrap()), (503, "backend-starting"));
    assert!(headers.contains_key("retry-after"));

    let (status, headers, _) = get(&format!("{base}/"), &[]).await;
    assert_eq!((status.as_u16(), headers["x-hangar-error"].to_str().unwrap()), (404, "no-token"));
    s.proxy.shutdown().await;
}

#[tokio::test]
async fn a_request_for_a_starting_backend_waits_until_it_is_ready() {
    let s = setup().await;
    route(&s, "warm", v1::BackendState::Waiting, &s.backend_address);
    // The backend turns READY only once the proxy has seen it still starting, so the request
    // is answered only if the proxy waits and looks again.
    let plane = s.plane.clone();
    let mut lookups = s.plane.lookups.subscribe();
    let turns_ready = tokio::spawn(async move {
        lookups.wait_for(|tokens| tokens.iter().any(|t| t == "warm")).await.unwrap();
        plane.set_state("warm", v1::BackendState::Ready);
    });
    let (status, _, body) = get(&format!("{}/warm/", s.proxy.url()), &[]).await;
    assert_eq!(status, 200, "{body}");
    turns_ready.await.unwrap();
    let looked_up = s.plane.lookups.borrow().iter().filter(|t| *t == "warm").count();
    assert!(looked_up >= 2, "looked up again after seeing it starting: {looked_up} lookups");
    s.proxy.shutdown().await;
}

#[tokio::test]
async fn websocket_echo_passes_through_both_ways() {
    let s = setup().await;
    route(&s, "ws", v1::BackendState::Ready, &s.backend_address);
    let url = format!("ws://{}/ws/ws", s.proxy.local_addr());
    let (mut socket, response) =
        tokio_tungstenite::connect_async(url).await.expect("websocket handshake through the proxy");
    assert_eq!(response.status(), 101);
    use tokio_tungstenite::tungstenite::Message;
    for text in ["hello", "through the proxy", &"x".repeat(70_000)] {
        socket.send(Message::text(text)).await.unwrap();
        let echoed = socket.next().await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    socket.send(Message::binary(vec![0u8, 1, 2, 255])).await.unwrap();
    assert_eq!(socket.next().await.unwrap().unwrap().into_data().as_ref(), [0u8, 1, 2, 255]);
    socket.close(None).await.unwrap();
    s.proxy.shutdown().await;
}

#[tokio::test]
async fn a_10_mib_upload_streams_through_whole() {
    let s = setup().await;
    route(&s, "up", v1::BackendState::Ready, &s.backend_address);
    // Sent as a stream of chunks (no content-length): the proxy must pass it on as it comes.
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 160; // 10 MiB
    let mut expected = 0xcbf29ce484222325u64;
    let chunk: Vec<u8> = (0..CHUNK).map(|i| (i % 251) as u8).collect();
    for _ in 0..CHUNKS {
        expected = chunk.iter().fold(expected, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100000001b3));
    }
    let frames = futures::stream::iter(
        (0..CHUNKS)
            .map(move |_| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(chunk.clone())))),
    );
    let client = Client::builder(TokioExecutor::new()).build_http();
    let request = http::Request::post(format!("{}/up/upload", s.proxy.url())).body(StreamBody::new(frames)).unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert_eq!(body.trim(), format!("{} {expected:016x}", CHUNK * CHUNKS), "every byte arrived, in order");
    s.proxy.shutdown().await;
}

#[tokio::test]
async fn http2_clients_are_served() {
    let s = setup().await;
    route(&s, "h2", v1::BackendState::Ready, &s.backend_address);
    let client = Client::builder(TokioExecutor::new()).http2_only(true).build_http::<Full<Bytes>>();
    let mut handles = Vec::new();
    for _ in 0..10 {
        let client = client.clone();
        let url = format!("{}/h2/request?via=h2", s.proxy.url());
        handles.push(tokio::spawn(async move {
            let response = client.request(http::Request::get(url).body(Full::default()).unwrap()).await.unwrap();
            assert_eq!(response.version(), http::Version::HTTP_2);
            String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
        }));
    }
    for handle in handles {
        assert_eq!(handle.await.unwrap().trim(), "GET /request?via=h2");
    }
    s.proxy.shutdown().await;
}

#[tokio::test]
async fn a_route_invalidation_from_the_controller_drops_the_cached_route() {
    // Cached far longer than the wait below: only the invalidation can drop the route in time.
    let s = setup_with(|c| c.route_ttl = Duration::from_secs(60)).await;
    route(&s, "inv", v1::BackendState::Ready, &s.backend_address);
    let base = s.proxy.url();
    assert_eq!(get(&format!("{base}/inv/"), &[]).await.0, 200);
    // The backend goes away: the controller's view changes and it tells the proxy.
    route(&s, "inv", v1::BackendState::Terminated, &s.backend_address);
    assert_eq!(get(&format!("{base}/inv/"), &[]).await.0, 200, "still cached");
    s.plane.invalidate("bk-1").await;
    eventually(WAIT, "the proxy to drop the invalidated route", async || {
        check(get(&format!("{base}/inv/"), &[]).await.0, |status| *status == 410)
    })
    .await;
    s.proxy.shutdown().await;
}

#[tokio::test]
async fn https_with_the_configured_certificate() {
    use hyper_util::rt::TokioIo;
    use tokio_rustls::rustls;
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let files = hangar_server::proxy::TlsFiles { cert: cert_path, key: key_path };
    let s = setup_with(|c| c.tls = Some(files)).await;
    route(&s, "tls", v1::BackendState::Ready, &s.backend_address);
    assert!(s.proxy.url().starts_with("https://"));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(s.proxy.local_addr()).await.unwrap();
    let server_name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(server_name, tcp)
        .await
        .expect("TLS handshake");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(connection);
    let request =
        http::Request::get("/tls/request?secure=1").header("host", "localhost").body(Full::<Bytes>::default()).unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(String::from_utf8_lossy(&body).trim(), "GET /request?secure=1");
    s.proxy.shutdown().await;
}

#[tokio::test]
async fn a_missing_certificate_fails_the_start_with_the_path() {
    let mut config = ProxyConfig::new(vec!["http://127.0.0.1:1".into()], "edge");
    config.tls =
        Some(hangar_server::proxy::TlsFiles { cert: "/no/such/cert.pem".into(), key: "/no/such/key.pem".into() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = Proxy::start(config, listener).await.err().expect("refused");
    assert!(format!("{err:#}").contains("/no/such/cert.pem"), "{err:#}");
}

/// A keep-alive HTTP/1.1 backend that counts the requests it gets and answers each only once
/// `open` is true; `seen` is the count so far.
struct GatedBackend {
    address: String,
    seen: watch::Receiver<usize>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    open: watch::Sender<bool>,
}

async fn gated_backend(open: bool) -> GatedBackend {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (seen_tx, seen) = watch::channel(0usize);
    let (open_tx, open_rx) = watch::channel(open);
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let accepted = connections.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (seen_tx, mut open_rx) = (seen_tx.clone(), open_rx.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    buf.drain(..end);
                    seen_tx.send_modify(|n| *n += 1);
                    let _ = open_rx.wait_for(|open| *open).await;
                    if stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    GatedBackend { address, seen, connections, open: open_tx }
}

#[tokio::test]
async fn a_shutting_down_proxy_finishes_the_request_in_flight_and_accepts_no_new_connection() {
    let s = setup().await;
    let mut backend = gated_backend(false).await;
    route(&s, "slow", v1::BackendState::Ready, &backend.address);
    let (url, proxy_addr) = (format!("{}/slow/work", s.proxy.url()), s.proxy.local_addr());
    let in_flight = tokio::spawn(async move { get(&url, &[]).await });
    tokio::time::timeout(WAIT, backend.seen.wait_for(|n| *n == 1))
        .await
        .expect("the request reaches the backend")
        .unwrap();

    let began = std::time::Instant::now();
    let shutdown = tokio::spawn(s.proxy.shutdown());
    eventually(WAIT, "the proxy to stop accepting", async || {
        check(tokio::net::TcpStream::connect(proxy_addr).await.is_err(), |refused| *refused)
    })
    .await;
    assert!(!in_flight.is_finished() && !shutdown.is_finished(), "the shutdown waits for the request in flight");
    backend.open.send(true).unwrap();
    let (status, _, body) = tokio::time::timeout(WAIT, in_flight).await.expect("answered").unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "done"), "the request in flight is answered whole");
    tokio::time::timeout(WAIT, shutdown).await.expect("the shutdown ends once the request is done").unwrap();
    assert!(began.elapsed() < Duration::from_secs(5), "ended by the request, not by the grace period");
}

#[tokio::test]
async fn a_shutting_down_proxy_closes_websockets_with_a_going_away_frame() {
    use tokio_tungstenite::tungstenite::{Message, protocol::frame::coding::CloseCode};
    let s = setup().await;
    route(&s, "ws", v1::BackendState::Ready, &s.backend_address);
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws/ws", s.proxy.local_addr())).await.unwrap();
    socket.send(Message::text("before")).await.unwrap();
    assert_eq!(socket.next().await.unwrap().unwrap().into_text().unwrap().as_str(), "before");

    let shutdown = tokio::spawn(s.proxy.shutdown());
    let message = tokio::time::timeout(WAIT, socket.next()).await.expect("a message before the grace ends");
    match message {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected a close frame (1001), got {other:?}"),
    }
    // The client answers the close (tungstenite does so itself) and the connection ends.
    while let Some(Ok(_)) = tokio::time::timeout(WAIT, socket.next()).await.expect("the connection ends") {}
    tokio::time::timeout(WAIT, shutdown).await.expect("the shutdown ends once the WebSocket is closed").unwrap();
}

#[tokio::test]
async fn a_terminating_backend_gets_no_new_request_even_on_a_connection_that_used_it() {
    let s = setup_with(|c| c.route_ttl = Duration::from_secs(60)).await;
    let backend = gated_backend(true).await;
    route(&s, "term", v1::BackendState::Ready, &backend.address);
    // One client: its keep-alive connection remembers the route.
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let url = format!("{}/term/", s.proxy.url());
    let status = async || {
        let response = client.request(http::Request::get(&url).body(Full::default()).unwrap()).await.unwrap();
        let status = response.status().as_u16();
        response.into_body().collect().await.unwrap();
        status
    };
    assert_eq!(status().await, 200);
    assert_eq!(status().await, 200);

    route(&s, "term", v1::BackendState::Terminating, &backend.address);
    s.plane.invalidate("bk-1").await;
    eventually(WAIT, "the invalidation to reach the proxy", async || check(status().await, |s| *s == 410)).await;
    let served = *backend.seen.borrow();
    for _ in 0..5 {
        assert_eq!(status().await, 410);
    }
    assert_eq!(*backend.seen.borrow(), served, "no request reached the TERMINATING backend");
    s.proxy.shutdown().await;
}

#[tokio::test]
async fn a_keep_alive_client_reuses_one_backend_connection() {
    let s = setup().await;
    let backend = gated_backend(true).await;
    route(&s, "reuse", v1::BackendState::Ready, &backend.address);
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    for _ in 0..20 {
        let request = http::Request::get(format!("{}/reuse/", s.proxy.url())).body(Full::default()).unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(&response.into_body().collect().await.unwrap().to_bytes()[..], b"done");
    }
    assert_eq!(*backend.seen.borrow(), 20);
    assert_eq!(
        backend.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one backend connection for 20 requests"
    );
    s.proxy.shutdown().await;
}
