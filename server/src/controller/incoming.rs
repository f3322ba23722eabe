//! The controller's accepted connections: TCP with TCP_NODELAY, the TLS handshake when TLS is on,
//! small writes coalesced ([`CoalescingStream`]), and who is at the other end
//! ([`PeerIdentity`], each connection's tonic `ConnectInfo` and so in every request's
//! extensions).
//!
//! Handshakes run in their own tasks, at most [`HANDSHAKE_TIMEOUT`] each, so a client that
//! connects and says nothing (or says it slowly) cannot hold up the connections behind it. They
//! belong to the incoming stream: when the server stops accepting, the stream is dropped and
//! the handshakes still running end with it.

use super::coalescing_stream::CoalescingStream;
use crate::auth::PeerIdentity;
use crate::tls::{ControllerTls, peer_certificate};
use futures::Stream;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

/// How long a client has for its TLS handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The connections `listener` accepts, as tonic serves them. Accept errors (out of file
/// descriptors, say) are logged and retried after a short pause; failed handshakes are logged at
/// debug level (they are the client's problem) and dropped.
pub(crate) fn incoming(
    listener: TcpListener,
    tls: Option<Arc<ControllerTls>>,
) -> impl Stream<Item = Result<CoalescingStream<Connection>, io::Error>> {
    async_stream::stream! {
        let mut handshakes = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, remote)) => {
                        // Without TCP_NODELAY, Nagle holds back the small writes of watch events
                        // until the peer's delayed ACK.
                        if let Err(err) = tcp.set_nodelay(true) {
                            tracing::debug!(%remote, error = %err, "cannot set TCP_NODELAY");
                        }
                        match &tls {
                            None => yield Ok(CoalescingStream::new(Connection::plain(tcp, remote))),
                            Some(tls) => {
                                handshakes.spawn(handshake(tls.acceptor(), tcp, remote));
                            }
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(done) = handshakes.join_next(), if !handshakes.is_empty() => {
                    if let Ok(Some(connection)) = done {
                        yield Ok(CoalescingStream::new(connection));
                    }
                }
            }
        }
    }
}

async fn handshake(acceptor: tokio_rustls::TlsAcceptor, tcp: TcpStream, remote: SocketAddr) -> Option<Connection> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp).into_fallible()).await {
        Ok(Ok(stream)) => {
            // With a client CA, rustls has verified the chain by now; without one, no client
            // certificate was asked for.
            let certificate = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|leaf| Arc::new(peer_certificate(leaf)));
            let peer = PeerIdentity { remote_addr: Some(remote), certificate };
            Some(Connection { transport: Transport::Tls(Box::new(stream)), peer })
        }
        Ok(Err((err, tcp))) => {
            tracing::debug!(%remote, error = %err, "TLS handshake failed");
            let_the_alert_arrive(tcp).await;
            None
        }
        Err(_) => {
            tracing::debug!(%remote, timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake timed out");
            None
        }
    }
}

/// After a refused handshake (a missing or foreign client certificate), lets the client read
/// the alert that says why. In TLS 1.3 the client takes the handshake for done and starts
/// sending (its HTTP/2 preface) before the server's verdict; closing a socket with such data
/// unread resets the connection, and the client then sees a reset or a broken pipe instead of
/// the alert. So: close the sending side (the alert is out), and read what the client sends
/// until it hangs up, for a second at most.
async fn let_the_alert_arrive(mut tcp: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if tcp.shutdown().await.is_err() {
        return;
    }
    let mut discard = [0u8; 4096];
    let drain = async { while let Ok(1..) = tcp.read(&mut discard).await {} };
    let _ = tokio::time::timeout(LINGER_AFTER_REFUSAL, drain).await;
}

/// How long a refused client has to read the alert and hang up.
const LINGER_AFTER_REFUSAL: Duration = Duration::from_secs(1);

/// One accepted connection, plain or TLS, with what is known about its peer.
pub(crate) struct Connection {
    transport: Transport,
    peer: PeerIdentity,
}

enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection {
    fn plain(tcp: TcpStream, remote: SocketAddr) -> Connection {
        Connection {
            transport: Transport::Plain(tcp),
            peer: PeerIdentity { remote_addr: Some(remote), certificate: None },
        }
    }
}

impl Connected for Connection {
    type ConnectInfo = PeerIdentity;

    fn connect_info(&self) -> PeerIdentity {
        self.peer.clone()
    }
}

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().transport {
            Transport::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Transport::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().transport {
            Transport::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Transport::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().transport {
            Transport::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Transport::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().transport {
            Transport::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Transport::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }

    // Vectored writes keep their defaults (one buffer at a time, "not vectored"): the
    // `CoalescingStream` above reports none anyway, on purpose.
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{ControllerTlsFiles, TlsFiles};
    use hangar_client::{ClientTls, Credentials};
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    /// A CA, and certificates it signs, as PEM files in `dir`.
    struct Pki {
        dir: tempfile::TempDir,
        ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    }

    impl Pki {
        fn new() -> Pki {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params.distinguished_name.push(rcgen::DnType::CommonName, "test CA");
            let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
            Pki { dir, ca }
        }

        fn ca(&self) -> PathBuf {
            self.dir.path().join("ca.pem")
        }

        /// A certificate for `name` (its CN) that also names 127.0.0.1; (cert, key).
        fn issue(&self, name: &str) -> (PathBuf, PathBuf) {
            let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
            params.distinguished_name.push(rcgen::DnType::CommonName, name);
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.ca).unwrap();
            let path = |suffix: &str| self.dir.path().join(format!("{name}{suffix}"));
            std::fs::write(path(".pem"), cert.pem()).unwrap();
            std::fs::write(path("-key.pem"), key.serialize_pem()).unwrap();
            (path(".pem"), path("-key.pem"))
        }
    }

    /// A health server on `incoming` whose calls note the `PeerIdentity` they carry.
    async fn serve(tls: Option<Arc<ControllerTls>>) -> (String, Arc<Mutex<Vec<PeerIdentity>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let noted = seen.clone();
        let note = move |request: tonic::Request<()>| {
            noted.lock().unwrap().push(request.extensions().get::<PeerIdentity>().cloned().expect("a PeerIdentity"));
            Ok(request)
        };
        let (_, health) = tonic_health::server::health_reporter();
        let router =
            tonic::transport::Server::builder().layer(tonic::service::InterceptorLayer::new(note)).add_service(health);
        tokio::spawn(router.serve_with_incoming(incoming(listener, tls)));
        (url, seen)
    }

    async fn check(url: &str, credentials: &Credentials) -> Result<(), String> {
        check_within(url, credentials, Duration::from_secs(10)).await
    }

    async fn check_within(url: &str, credentials: &Credentials, within: Duration) -> Result<(), String> {
        let endpoint = credentials.configure(tonic::transport::Endpoint::from_shared(url.to_string()).unwrap());
        let call = async {
            let channel = endpoint.map_err(|e| e.to_string())?.connect().await.map_err(|e| format!("{e:?}"))?;
            let mut health = HealthClient::new(credentials.authorize(channel).unwrap());
            health.check(HealthCheckRequest::default()).await.map(|_| ()).map_err(|e| format!("{e:?}"))
        };
        // A refusal must be an error, never a hang.
        tokio::time::timeout(within, call).await.unwrap_or_else(|_| panic!("no answer nor error within {within:?}"))
    }

    fn mtls(pki: &Pki, cert: Option<(PathBuf, PathBuf)>) -> Credentials {
        let (cert, key) = cert.unzip();
        let tls = ClientTls { ca: Some(pki.ca()), cert, key, server_name: None };
        Credentials { tls: Some(tls), ..Credentials::default() }
    }

    fn controller_tls(cert: (PathBuf, PathBuf), client_ca: Option<&Path>) -> Arc<ControllerTls> {
        let files = ControllerTlsFiles {
            files: TlsFiles { cert: cert.0, key: cert.1 },
            client_ca: client_ca.map(Path::to_path_buf),
        };
        Arc::new(ControllerTls::load(files).unwrap())
    }

    #[tokio::test]
    async fn the_verified_common_name_reaches_every_call_as_its_peer_identity() {
        let pki = Pki::new();
        let tls = controller_tls(pki.issue("controller"), Some(&pki.ca()));
        let (url, seen) = serve(Some(tls)).await;
        check(&url, &mtls(&pki, Some(pki.issue("drone-a")))).await.unwrap();
        let peer = seen.lock().unwrap().pop().unwrap();
        let certificate = peer.certificate.expect("the client certificate");
        assert_eq!(certificate.common_name.as_deref(), Some("drone-a"));
        assert_eq!(certificate.der, rustls_der(&pki.dir.path().join("drone-a.pem")));
        assert_eq!(peer.remote_addr.unwrap().ip(), std::net::Ipv4Addr::LOCALHOST);
    }

    fn rustls_der(path: &Path) -> Vec<u8> {
        hangar_client::pem::certificates(path, "certificate").unwrap()[0].to_vec()
    }

    #[tokio::test]
    async fn without_a_client_ca_no_certificate_is_asked_for_and_plain_connections_have_an_address() {
        let pki = Pki::new();
        let (url, seen) = serve(Some(controller_tls(pki.issue("controller"), None))).await;
        // A client certificate offered anyway is not asked for, so not seen.
        check(&url, &mtls(&pki, Some(pki.issue("drone-a")))).await.unwrap();
        let peer = seen.lock().unwrap().pop().unwrap();
        assert!(peer.certificate.is_none() && peer.remote_addr.is_some(), "{peer:?}");

        let (url, seen) = serve(None).await;
        check(&url, &Credentials::default()).await.unwrap();
        let peer = seen.lock().unwrap().pop().unwrap();
        assert!(peer.certificate.is_none() && peer.remote_addr.is_some(), "{peer:?}");
    }

    #[tokio::test]
    async fn a_silent_client_does_not_hold_up_the_handshakes_behind_it() {
        let pki = Pki::new();
        let (url, _) = serve(Some(controller_tls(pki.issue("controller"), None))).await;
        // Connects and never says a word: its handshake waits out its timeout in its own task,
        // while the next client's goes ahead (well before that timeout).
        let _silent = TcpStream::connect(url.trim_start_matches("https://")).await.unwrap();
        check_within(&url, &mtls(&pki, None), HANDSHAKE_TIMEOUT / 4).await.unwrap();
    }
}
