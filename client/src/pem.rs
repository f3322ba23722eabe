//! PEM files for TLS: certificate chains, private keys, and whether a key belongs to its
//! certificate. Every side that loads them reads them here (the clients' CA and client
//! certificate; the controller's and the proxy's listeners in `hangar-server`), so a bad file is
//! reported the same way everywhere: which file, and what is wrong with it.

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::sign::CertifiedKey;

/// What is wrong with a PEM file. `what` names the file's role ("CA certificate", "client key",
/// …) so the message says which of several files failed.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("cannot read the {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {what} {} is not PEM: {detail}", path.display())]
    NotPem { what: &'static str, path: PathBuf, detail: String },
    #[error("the {what} {} cannot be used: {detail}", path.display())]
    Unusable { what: &'static str, path: PathBuf, detail: String },
    #[error("the private key {} does not match the certificate {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
}

/// The crypto every Hangar TLS endpoint uses: rustls on ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(tokio_rustls::rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM file (a chain, leaf first, or a CA bundle); at least one.
pub fn certificates(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let bytes = read(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| not_pem(path, what, &err, "CERTIFICATE"))?;
    if certs.is_empty() {
        return Err(not_pem(path, what, &pem::Error::NoItemsFound, "CERTIFICATE"));
    }
    Ok(certs)
}

/// The private key of a PEM file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
pub fn private_key(path: &Path, what: &'static str) -> Result<PrivateKeyDer<'static>, PemError> {
    let bytes = read(path, what)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|err| not_pem(path, what, &err, "PRIVATE KEY"))
}

/// A certificate chain and its private key, checked to belong together (the key's public half
/// is the leaf certificate's).
pub fn key_pair(
    cert: &Path,
    cert_what: &'static str,
    key: &Path,
    key_what: &'static str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PemError> {
    let chain = certificates(cert, cert_what)?;
    let private = private_key(key, key_what)?;
    match CertifiedKey::from_der(chain.clone(), private.clone_key(), &provider()) {
        Ok(_) => Ok((chain, private)),
        Err(tokio_rustls::rustls::Error::InconsistentKeys(_)) => {
            Err(PemError::KeyMismatch { cert: cert.to_path_buf(), key: key.to_path_buf() })
        }
        Err(err) => Err(PemError::Unusable { what: key_what, path: key.to_path_buf(), detail: err.to_string() }),
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|source| PemError::Read { what, path: path.to_path_buf(), source })
}

fn not_pem(path: &Path, what: &'static str, err: &pem::Error, label: &str) -> PemError {
    let detail = match err {
        pem::Error::NoItemsFound => format!("it holds no -----BEGIN {label}----- block"),
        pem::Error::MissingSectionEnd { .. } => "a block has no -----END …----- line".to_string(),
        pem::Error::IllegalSectionStart { .. } => "a -----BEGIN …----- line is malformed".to_string(),
        other => other.to_string(),
    };
    PemError::NotPem { what, path: path.to_path_buf(), detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn a_matching_pair_loads_and_each_bad_file_is_named_with_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let one = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = write(dir.path(), "cert.pem", one.cert.pem());
        let key = write(dir.path(), "key.pem", one.signing_key.serialize_pem());
        let other_key = write(dir.path(), "other-key.pem", other.signing_key.serialize_pem());
        let garbage = write(dir.path(), "garbage.pem", "hello");

        let (chain, _) = key_pair(&cert, "certificate", &key, "key").unwrap();
        assert_eq!(chain.len(), 1);

        let missing = dir.path().join("missing.pem");
        let err = certificates(&missing, "CA certificate").unwrap_err().to_string();
        assert!(err.starts_with(&format!("cannot read the CA certificate {}", missing.display())), "{err}");

        let err = certificates(&garbage, "CA certificate").unwrap_err().to_string();
        assert!(err.contains(&garbage.display().to_string()) && err.contains("BEGIN CERTIFICATE"), "{err}");
        let err = private_key(&cert, "client key").unwrap_err().to_string();
        assert!(err.contains("client key") && err.contains("BEGIN PRIVATE KEY"), "{err}");

        let err = key_pair(&cert, "certificate", &other_key, "key").unwrap_err();
        assert!(matches!(err, PemError::KeyMismatch { .. }), "{err}");
        assert!(err.to_string().contains("does not match the certificate"), "{err}");
    }
}
