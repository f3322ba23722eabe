//! TLS for hangar-server's listeners: the controller's gRPC API (ALPN h2, optionally requiring
//! client certificates from a CA: mTLS) and the proxy's HTTP listener (ALPN h2 and HTTP/1.1).
//! Rustls on the ring provider; certificates, keys and client CAs come from PEM files, read by
//! [`hangar_client::pem`] so that a bad file is reported the same way on every side.
//!
//! The controller's material can be re-read while it runs ([`ControllerTls::reload`], on
//! SIGHUP): connections accepted afterwards use the new certificate and client CA; connections
//! already open keep the session they negotiated.

use anyhow::Context;
use hangar_client::pem::{self, PemError};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};

use crate::auth::PeerCertificate;

/// A certificate chain and its key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The controller's TLS: its certificate and key, and the CA its clients' certificates must
/// chain to, if it requires them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerTlsFiles {
    pub files: TlsFiles,
    /// With a client CA every client must present a certificate it signed, or the handshake
    /// fails; without one, client certificates are not asked for.
    pub client_ca: Option<PathBuf>,
}

/// The proxy's listener: HTTP/2 and HTTP/1.1, no client certificates.
pub fn proxy_acceptor(files: &TlsFiles) -> anyhow::Result<TlsAcceptor> {
    let config = server_config(files, None, &[b"h2", b"http/1.1"])?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn server_config(files: &TlsFiles, client_ca: Option<&Path>, alpn: &[&[u8]]) -> anyhow::Result<ServerConfig> {
    let (chain, key) = pem::key_pair(&files.cert, "certificate", &files.key, "private key")?;
    let provider = pem::provider();
    let builder = ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let what = "client CA certificate";
            let mut roots = RootCertStore::empty();
            for cert in pem::certificates(path, what)? {
                roots.add(cert).map_err(|err| unusable(what, path, &err))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|err| unusable(what, path, &err))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .with_context(|| format!("the certificate {} cannot be served", files.cert.display()))?;
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Ok(config)
}

fn unusable(what: &'static str, path: &Path, err: &dyn std::fmt::Display) -> PemError {
    PemError::Unusable { what, path: path.to_path_buf(), detail: err.to_string() }
}

/// The controller's TLS configuration, replaceable while the controller runs.
pub struct ControllerTls {
    files: ControllerTlsFiles,
    config: RwLock<Arc<ServerConfig>>,
}

impl ControllerTls {
    /// Reads the files; an unusable one fails here, naming it.
    pub fn load(files: ControllerTlsFiles) -> anyhow::Result<ControllerTls> {
        let config = Self::read(&files)?;
        Ok(ControllerTls { files, config: RwLock::new(Arc::new(config)) })
    }

    fn read(files: &ControllerTlsFiles) -> anyhow::Result<ServerConfig> {
        server_config(&files.files, files.client_ca.as_deref(), &[b"h2"])
    }

    /// Reads the files again. On success new connections use them; on failure the configuration
    /// in force stays and the error names the file and what is wrong with it.
    pub fn reload(&self) -> anyhow::Result<()> {
        let config = Self::read(&self.files)?;
        *self.config.write().unwrap() = Arc::new(config);
        tracing::info!(
            cert = %self.files.files.cert.display(),
            client_ca = ?self.files.client_ca,
            "TLS certificates reloaded; new connections use them"
        );
        Ok(())
    }

    /// The acceptor for the next connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.read().unwrap().clone())
    }

    /// Whether clients must present a certificate (mTLS).
    pub fn requires_client_certificates(&self) -> bool {
        self.files.client_ca.is_some()
    }
}

/// A verified client certificate as the auth layer sees it: its DER and its subject's common
/// name (the first CN, when it is UTF-8).
pub fn peer_certificate(der: &[u8]) -> PeerCertificate {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let common_name = X509Certificate::from_der(der).ok().and_then(|(_, cert)| {
        cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_string)
    });
    PeerCertificate { common_name, der: der.to_vec() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_name_is_read_from_the_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["drone-a".to_string()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "Hangar");
        params.distinguished_name.push(rcgen::DnType::CommonName, "drone-a");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let peer = peer_certificate(cert.der());
        assert_eq!(peer.common_name.as_deref(), Some("drone-a"));
        assert_eq!(peer.der, cert.der().to_vec());

        let anonymous = rcgen::CertificateParams::new(vec!["x".to_string()]).unwrap();
        let mut anonymous = anonymous;
        anonymous.distinguished_name = rcgen::DistinguishedName::new();
        let cert = anonymous.self_signed(&key).unwrap();
        assert_eq!(peer_certificate(cert.der()).common_name, None);
        assert_eq!(peer_certificate(b"not a certificate").common_name, None);
    }

    #[test]
    fn a_broken_file_fails_the_reload_and_keeps_the_configuration_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let files = TlsFiles { cert: dir.path().join("cert.pem"), key: dir.path().join("key.pem") };
        std::fs::write(&files.cert, cert.cert.pem()).unwrap();
        std::fs::write(&files.key, cert.signing_key.serialize_pem()).unwrap();
        let tls = ControllerTls::load(ControllerTlsFiles { files: files.clone(), client_ca: None }).unwrap();
        let before = tls.acceptor();

        std::fs::write(&files.cert, "garbage").unwrap();
        let err = tls.reload().unwrap_err();
        assert!(format!("{err:#}").contains(&files.cert.display().to_string()), "{err:#}");
        assert!(Arc::ptr_eq(before.config(), tls.acceptor().config()), "the old configuration stays");

        let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(&files.cert, other.cert.pem()).unwrap();
        let err = tls.reload().unwrap_err();
        assert!(format!("{err:#}").contains("does not match the certificate"), "{err:#}");

        std::fs::write(&files.key, other.signing_key.serialize_pem()).unwrap();
        tls.reload().unwrap();
        assert!(!Arc::ptr_eq(before.config(), tls.acceptor().config()), "new connections use the new files");
    }
}
