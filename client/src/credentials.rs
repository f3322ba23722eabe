//! How a Hangar client proves who it is to a controller and checks that it talks to the right
//! one: a bearer token, TLS with the controller's CA, and a client certificate (mTLS). The CLI,
//! the SDK, the drone and the proxy all build their channels from one [`Credentials`]
//! (docs/design/security.md).

use hangar::secret::Secret;
use std::path::PathBuf;

/// A client's credentials towards a controller. The default is none: plain `http://` without a
/// token, as against `hangar-server dev` on loopback.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// Sent as `authorization: Bearer …` on every call.
    pub token: Option<Secret>,
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
