//! Certificates made in the test: a CA, server certificates for 127.0.0.1 and localhost, and
//! client certificates with a given common name, written as PEM files into a temporary
//! directory that lives as long as the [`TestCa`].

use hangar_client::{ClientTls, Credentials};
use hangar_server::tls::{ControllerTlsFiles, TlsFiles};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// A certificate authority and the certificates it issued.
pub struct TestCa {
    dir: tempfile::TempDir,
    name: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    /// The (leaf) certificate, DER-encoded.
    pub fn der(&self) -> Vec<u8> {
        hangar_client::pem::certificates(&self.cert, "certificate").expect("a PEM certificate")[0].to_vec()
    }
}

/// The certificate a fresh TLS connection to `url` (`https://127.0.0.1:PORT`) is served, checked
/// against `ca`; no client certificate is presented, so this works against a controller whether
/// or not it requires one (the server's certificate comes before its verdict on the client's).
pub async fn served_certificate(url: &str, ca: &TestCa) -> Vec<u8> {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for cert in hangar_client::pem::certificates(&ca.ca(), "CA certificate").expect("the CA") {
        roots.add(cert).expect("a CA certificate");
    }
    let config = rustls::ClientConfig::builder_with_provider(hangar_client::pem::provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(url.trim_start_matches("https://")).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("a server name");
    let tls =
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await.expect("TLS handshake");
    tls.get_ref().1.peer_certificates().expect("a server certificate")[0].to_vec()
}

impl TestCa {
    /// A CA called `name` (its files are named after it too).
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA");
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join(format!("{name}.pem")), issuer.pem()).expect("write the CA");
        TestCa { dir, name: name.to_string(), issuer }
    }

    /// The CA certificate's PEM file.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join(format!("{}.pem", self.name))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A server certificate for 127.0.0.1 and localhost, with `name` as its common name.
    pub fn server(&self, name: &str) -> CertFiles {
        self.issue(name, &["127.0.0.1", "localhost"], ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate whose subject's common name is `common_name`.
    pub fn client(&self, common_name: &str) -> CertFiles {
        self.issue(common_name, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, name: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) -> CertFiles {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("certificate parameters");
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let files = CertFiles {
            cert: self.dir.path().join(format!("{name}.crt.pem")),
            key: self.dir.path().join(format!("{name}.key.pem")),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write the certificate");
        std::fs::write(&files.key, key.serialize_pem()).expect("write the key");
        files
    }

    /// The TLS of a controller serving `server`, requiring client certificates from this CA
    /// when `mtls`.
    pub fn controller_tls(&self, server: &CertFiles, mtls: bool) -> ControllerTlsFiles {
        ControllerTlsFiles {
            files: TlsFiles { cert: server.cert.clone(), key: server.key.clone() },
            client_ca: mtls.then(|| self.ca()),
        }
    }

    /// Client credentials that trust this CA and present `identity`, if any.
    pub fn credentials(&self, identity: Option<&CertFiles>) -> Credentials {
        let tls = ClientTls {
            ca: Some(self.ca()),
            cert: identity.map(|files| files.cert.clone()),
            key: identity.map(|files| files.key.clone()),
            server_name: None,
        };
        Credentials { tls: Some(tls), ..Credentials::default() }
    }
}
