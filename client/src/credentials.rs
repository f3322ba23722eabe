//! How a Hangar client proves who it is to a controller and checks that it talks to the right
//! one: a bearer token, TLS with the controller's CA, and a client certificate (mTLS). The CLI,
//! the SDK, the drone and the proxy all build their channels from one [`Credentials`]
//! (docs/design/security.md): [`Credentials::configure`] sets up TLS on the endpoint of an
//! `https://` URL, and [`Credentials::authorize`] puts the [`BearerToken`] interceptor in front
//! of the channel, giving the [`HangarChannel`] every generated client of the SDK runs on.

use crate::pem::{self, PemError};
use hangar::secret::Secret;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use tokio_rustls::rustls::RootCertStore;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint, Identity};

/// A client's credentials towards a controller. The default is none: plain `http://` without a
/// token, as against `hangar-server dev` on loopback.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// Sent as `authorization: Bearer …` on every call.
    pub token: Option<Secret>,
    /// A file holding the token (surrounding whitespace ignored), read each time a channel is
    /// built: a drone or proxy picks up a rotated token when it next reconnects. Give either
    /// this or `token`.
    pub token_file: Option<PathBuf>,
    /// TLS options for `https://` controllers.
    pub tls: Option<ClientTls>,
}

/// TLS towards a controller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM file of the CA(s) that signed the controller's certificate; the system's roots when
    /// absent.
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain, for controllers that require one (mTLS); needs `key`.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// The name to expect in the controller's certificate, when it differs from the URL's host.
    pub server_name: Option<String>,
}

/// The channel every Hangar client runs on: a tonic [`Channel`] whose calls carry the bearer
/// token, if there is one.
pub type HangarChannel = InterceptedService<Channel, BearerToken>;

/// Why credentials cannot be used. Each message names the file or setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("cannot read the token file {}: {source}", path.display())]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the token {} is empty", source_of_token(path.as_deref()))]
    EmptyToken { path: Option<PathBuf> },
    #[error(
        "the token {} holds characters an HTTP header cannot carry (only visible ASCII is allowed)",
        source_of_token(path.as_deref())
    )]
    TokenNotAscii { path: Option<PathBuf> },
    #[error("both {0} are set; give the token one way")]
    TokenTwice(&'static str),
    #[error(
        "the client {given} {} comes without its {missing}; give both the client certificate and its key, or neither",
        path.display()
    )]
    HalfIdentity { given: &'static str, missing: &'static str, path: PathBuf },
    #[error("{url} is plain http://, but TLS options are set ({options}); use an https:// URL")]
    TlsOverPlainHttp { url: String, options: String },
    #[error("cannot set up TLS towards {url}: {detail}")]
    Tls { url: String, detail: String },
}

fn source_of_token(path: Option<&Path>) -> String {
    path.map_or_else(|| "given".to_string(), |path| format!("in {}", path.display()))
}

/// Credentials as the command line gives them: the CLI and `hangar-drone run` take these flags
/// as they are; [`Credentials::from_env_and_flags`] fills what they leave out from the
/// environment.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CredentialFlags {
    /// Bearer token for the controller [env: HANGAR_TOKEN]. Other users of the host can see a
    /// command line: prefer --token-file or the variable.
    #[arg(long, global = true, value_name = "TOKEN", value_parser = parse_secret, display_order = 110)]
    pub token: Option<Secret>,
    /// File holding the bearer token, surrounding whitespace ignored [env: HANGAR_TOKEN_FILE].
    #[arg(long, global = true, value_name = "FILE", display_order = 111)]
    pub token_file: Option<PathBuf>,
    /// PEM file of the CA that signed the controller's certificate, for https:// URLs (default:
    /// the system's roots) [env: HANGAR_TLS_CA].
    #[arg(long, global = true, value_name = "FILE", display_order = 112)]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate, for a controller that requires one (mTLS); needs --tls-key
    /// [env: HANGAR_TLS_CERT].
    #[arg(long, global = true, value_name = "FILE", display_order = 113)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert [env: HANGAR_TLS_KEY].
    #[arg(long, global = true, value_name = "FILE", display_order = 114)]
    pub tls_key: Option<PathBuf>,
    /// Name the controller's certificate must carry, when it is not the URL's host
    /// [env: HANGAR_TLS_SERVER_NAME].
    #[arg(long, global = true, value_name = "NAME", display_order = 115)]
    pub tls_server_name: Option<String>,
}

fn parse_secret(value: &str) -> Result<Secret, String> {
    Ok(Secret::new(value))
}

/// The environment variables [`Credentials::from_env_and_flags`] reads.
pub mod env {
    pub const TOKEN: &str = "HANGAR_TOKEN";
    pub const TOKEN_FILE: &str = "HANGAR_TOKEN_FILE";
    pub const TLS_CA: &str = "HANGAR_TLS_CA";
    pub const TLS_CERT: &str = "HANGAR_TLS_CERT";
    pub const TLS_KEY: &str = "HANGAR_TLS_KEY";
    pub const TLS_SERVER_NAME: &str = "HANGAR_TLS_SERVER_NAME";
}

impl Credentials {
    /// A bearer token and nothing else.
    pub fn token(token: impl Into<Secret>) -> Self {
        Credentials { token: Some(token.into()), ..Credentials::default() }
    }

    /// The flags, with what they leave out taken from the environment (`HANGAR_TOKEN`,
    /// `HANGAR_TOKEN_FILE`, `HANGAR_TLS_CA`, `HANGAR_TLS_CERT`, `HANGAR_TLS_KEY`,
    /// `HANGAR_TLS_SERVER_NAME`; an empty variable counts as unset). A token given on the
    /// command line, either way, wins over one in the environment. Files are not read here but
    /// when a channel is built.
    pub fn from_env_and_flags(flags: &CredentialFlags) -> Result<Self, CredentialsError> {
        Self::from_flags_and(flags, |name| std::env::var_os(name))
    }

    fn from_flags_and(
        flags: &CredentialFlags,
        env: impl Fn(&str) -> Option<OsString>,
    ) -> Result<Self, CredentialsError> {
        let env = |name: &str| env(name).filter(|value| !value.is_empty());
        let (token, token_file) = match (&flags.token, &flags.token_file) {
            (Some(_), Some(_)) => return Err(CredentialsError::TokenTwice("--token and --token-file")),
            (None, None) => match (env(env::TOKEN), env(env::TOKEN_FILE)) {
                (Some(_), Some(_)) => return Err(CredentialsError::TokenTwice("HANGAR_TOKEN and HANGAR_TOKEN_FILE")),
                (token, file) => (token.map(|t| Secret::new(t.to_string_lossy())), file.map(PathBuf::from)),
            },
            (token, file) => (token.clone(), file.clone()),
        };
        let path = |flag: &Option<PathBuf>, name: &str| flag.clone().or_else(|| env(name).map(PathBuf::from));
        let tls = ClientTls {
            ca: path(&flags.tls_ca, env::TLS_CA),
            cert: path(&flags.tls_cert, env::TLS_CERT),
            key: path(&flags.tls_key, env::TLS_KEY),
            server_name: flags
                .tls_server_name
                .clone()
                .or_else(|| env(env::TLS_SERVER_NAME).map(|name| name.to_string_lossy().into_owned())),
        };
        let tls = (tls != ClientTls::default()).then_some(tls);
        let credentials = Credentials { token, token_file, tls };
        credentials.check()?;
        Ok(credentials)
    }

    /// What can be checked without reading a file: one way to give the token, and a client
    /// certificate only with its key.
    fn check(&self) -> Result<(), CredentialsError> {
        if self.token.is_some() && self.token_file.is_some() {
            return Err(CredentialsError::TokenTwice("a token and a token file"));
        }
        if let Some(tls) = &self.tls {
            match (&tls.cert, &tls.key) {
                (Some(cert), None) => {
                    let path = cert.clone();
                    return Err(CredentialsError::HalfIdentity { given: "certificate", missing: "key", path });
                }
                (None, Some(key)) => {
                    let path = key.clone();
                    return Err(CredentialsError::HalfIdentity { given: "key", missing: "certificate", path });
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Sets up `endpoint` for these credentials: TLS for an `https://` endpoint, with the CA
    /// file as its only roots (else the system's) and the client certificate, all read now; an
    /// `http://` endpoint with TLS options is refused, since they would be silently ignored.
    pub fn configure(&self, endpoint: Endpoint) -> Result<Endpoint, CredentialsError> {
        self.check()?;
        let url = endpoint.uri().to_string();
        let tls = self.tls.clone().unwrap_or_default();
        if endpoint.uri().scheme_str() != Some("https") {
            if self.tls.is_none() {
                return Ok(endpoint);
            }
            let options = [
                tls.ca.as_ref().map(|_| "a CA file"),
                tls.cert.as_ref().map(|_| "a client certificate"),
                tls.server_name.as_ref().map(|_| "a server name"),
            ];
            let options = options.into_iter().flatten().collect::<Vec<_>>().join(", ");
            return Err(CredentialsError::TlsOverPlainHttp { url: url.trim_end_matches('/').to_string(), options });
        }
        let mut config = ClientTlsConfig::new();
        match &tls.ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in pem::certificates(ca, "CA certificate")? {
                    roots.add(cert).map_err(|err| PemError::Unusable {
                        what: "CA certificate",
                        path: ca.clone(),
                        detail: err.to_string(),
                    })?;
                }
                config = config.trust_anchors(roots.roots);
            }
            None => config = config.with_native_roots(),
        }
        if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
            pem::key_pair(cert, "client certificate", key, "client key")?;
            let read = |path: &Path, what| {
                std::fs::read(path).map_err(|source| PemError::Read { what, path: path.to_path_buf(), source })
            };
            config = config.identity(Identity::from_pem(read(cert, "client certificate")?, read(key, "client key")?));
        }
        if let Some(name) = &tls.server_name {
            config = config.domain_name(name.clone());
        }
        endpoint.tls_config(config).map_err(|err| CredentialsError::Tls { url, detail: error_chain(&err) })
    }

    /// The interceptor that adds the token to every call; reads the token file now.
    pub fn bearer(&self) -> Result<BearerToken, CredentialsError> {
        self.check()?;
        let (token, path) = match (&self.token, &self.token_file) {
            (Some(token), _) => (token.clone(), None),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| CredentialsError::TokenFile { path: path.clone(), source })?;
                (Secret::new(text.trim()), Some(path.clone()))
            }
            (None, None) => return Ok(BearerToken::none()),
        };
        if token.is_empty() {
            return Err(CredentialsError::EmptyToken { path });
        }
        let mut header = AsciiMetadataValue::try_from(format!("Bearer {}", token.expose()))
            .ok()
            .filter(|_| token.expose().bytes().all(|b| b.is_ascii_graphic()))
            .ok_or(CredentialsError::TokenNotAscii { path })?;
        // Kept out of HTTP/2 header compression tables and of `Debug` output.
        header.set_sensitive(true);
        Ok(BearerToken { header: Some(header) })
    }

    /// `channel` behind the token interceptor: what every Hangar client calls through.
    pub fn authorize(&self, channel: Channel) -> Result<HangarChannel, CredentialsError> {
        Ok(InterceptedService::new(channel, self.bearer()?))
    }
}

/// Adds `authorization: Bearer …` (marked sensitive) to every call that does not carry one.
#[derive(Clone, Default)]
pub struct BearerToken {
    header: Option<AsciiMetadataValue>,
}

impl BearerToken {
    /// No token: calls go out as they are.
    pub fn none() -> Self {
        BearerToken::default()
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let token = if self.header.is_some() { hangar::secret::REDACTED } else { "none" };
        f.debug_struct("BearerToken").field("token", &format_args!("{token}")).finish()
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(header) = &self.header
            && !request.metadata().contains_key("authorization")
        {
            request.metadata_mut().insert("authorization", header.clone());
        }
        Ok(request)
    }
}

/// "transport error: tcp connect error: Connection refused (os error 111)" rather than only the
/// outermost "transport error".
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn merged(flags: &CredentialFlags, env: &[(&str, &str)]) -> Result<Credentials, CredentialsError> {
        let env: HashMap<String, OsString> = env.iter().map(|(k, v)| (k.to_string(), OsString::from(v))).collect();
        Credentials::from_flags_and(flags, |name| env.get(name).cloned())
    }

    #[test]
    fn flags_win_over_the_environment_and_an_empty_variable_is_unset() {
        let flags = CredentialFlags { tls_ca: Some("/flag/ca.pem".into()), ..CredentialFlags::default() };
        let env = [("HANGAR_TLS_CA", "/env/ca.pem"), ("HANGAR_TOKEN", "from-env"), ("HANGAR_TLS_CERT", "")];
        let credentials = merged(&flags, &env).unwrap();
        assert_eq!(credentials.token, Some(Secret::new("from-env")));
        let tls = credentials.tls.unwrap();
        assert_eq!(tls.ca, Some(PathBuf::from("/flag/ca.pem")));
        assert_eq!(tls.cert, None);

        // A token file on the command line beats a token in the environment.
        let flags = CredentialFlags { token_file: Some("/run/token".into()), ..CredentialFlags::default() };
        let credentials = merged(&flags, &[("HANGAR_TOKEN", "from-env")]).unwrap();
        assert_eq!((credentials.token, credentials.token_file), (None, Some(PathBuf::from("/run/token"))));
        assert_eq!(merged(&CredentialFlags::default(), &[]).unwrap(), Credentials::default());
    }

    #[test]
    fn a_token_given_twice_or_a_certificate_without_its_key_is_refused() {
        let flags = CredentialFlags {
            token: Some(Secret::new("t")),
            token_file: Some("/f".into()),
            ..CredentialFlags::default()
        };
        assert!(merged(&flags, &[]).unwrap_err().to_string().contains("--token and --token-file"));
        let err = merged(&CredentialFlags::default(), &[("HANGAR_TOKEN", "t"), ("HANGAR_TOKEN_FILE", "/f")]);
        assert!(err.unwrap_err().to_string().contains("HANGAR_TOKEN and HANGAR_TOKEN_FILE"));

        let flags = CredentialFlags { tls_cert: Some("/c.pem".into()), ..CredentialFlags::default() };
        let err = merged(&flags, &[]).unwrap_err().to_string();
        assert!(err.contains("/c.pem") && err.contains("without its key"), "{err}");
        let err = merged(&CredentialFlags::default(), &[("HANGAR_TLS_KEY", "/k.pem")]).unwrap_err().to_string();
        assert!(err.contains("/k.pem") && err.contains("without its certificate"), "{err}");
    }

    #[test]
    fn tls_options_on_a_plain_http_url_are_an_error_that_says_so() {
        let credentials = Credentials {
            tls: Some(ClientTls { ca: Some("/ca.pem".into()), ..ClientTls::default() }),
            ..Credentials::default()
        };
        let err = credentials.configure(Endpoint::from_static("http://ctl:7070")).unwrap_err().to_string();
        assert!(err.contains("http://ctl:7070 is plain http://") && err.contains("a CA file"), "{err}");
        assert!(err.contains("use an https:// URL"), "{err}");
        // Without TLS options, http stays plain.
        assert!(Credentials::default().configure(Endpoint::from_static("http://ctl:7070")).is_ok());
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let credentials = Credentials {
            tls: Some(ClientTls { ca: Some("/no/such/ca.pem".into()), ..ClientTls::default() }),
            ..Credentials::default()
        };
        let err = credentials.configure(Endpoint::from_static("https://ctl:7070")).unwrap_err().to_string();
        assert!(err.starts_with("cannot read the CA certificate /no/such/ca.pem"), "{err}");
    }

    #[test]
    fn the_token_file_is_read_and_trimmed_and_the_header_is_sensitive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  s3cret-token-value\n").unwrap();
        let credentials = Credentials { token_file: Some(path.clone()), ..Credentials::default() };
        let mut bearer = credentials.bearer().unwrap();
        let request = bearer.call(tonic::Request::new(())).unwrap();
        let header = request.metadata().get("authorization").unwrap();
        assert_eq!(header.to_str().unwrap(), "Bearer s3cret-token-value");
        assert!(header.is_sensitive());
        assert!(!format!("{bearer:?}").contains("s3cret"), "{bearer:?}");

        std::fs::write(&path, "\n").unwrap();
        let err = credentials.bearer().unwrap_err().to_string();
        assert_eq!(err, format!("the token in {} is empty", path.display()));
        std::fs::write(&path, "tab\there").unwrap();
        assert!(credentials.bearer().unwrap_err().to_string().contains("visible ASCII"));
        let missing = Credentials { token_file: Some(dir.path().join("nope")), ..Credentials::default() };
        assert!(missing.bearer().unwrap_err().to_string().contains("cannot read the token file"));

        // No token: nothing is added.
        let mut none = Credentials::default().bearer().unwrap();
        assert!(none.call(tonic::Request::new(())).unwrap().metadata().get("authorization").is_none());
    }
}
