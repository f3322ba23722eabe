//! Hangar Rust SDK and the `hangar` CLI.
//!
//! ```no_run
//! # async fn example() -> Result<(), hangar_client::ClientError> {
//! use hangar_client::{HangarClient, domain::{NodeFilter, NodeState}};
//!
//! let client = HangarClient::connect("http://127.0.0.1:7070").await?;
//! let filter = NodeFilter { states: vec![NodeState::Ready], ..NodeFilter::default() };
//! let listing = client.list_all_nodes(&filter).await?;
//! println!("{} ready nodes at revision {}", listing.nodes.len(), listing.revision);
//! # Ok(()) }
//! ```
//!
//! Calls speak the domain's types (`hangar::domain`: nodes, keys, states, pull policies, resource
//! limits) and fail with a typed [`ClientError`]; backends come back as [`BackendView`]s, what
//! the controller tells a reader about one. Idempotent calls are retried after UNAVAILABLE
//! according to [`RetryPolicy`]. A listing's `revision` is where a watch starts so that nothing
//! is missed between the two.
//!
//! A cluster's controllers, comma-separated, make one client that fails over between them: each
//! call goes to the first controller that has not failed lately, and a call that is safe to
//! repeat (list, get, a keyed Connect, terminate, undrain) and that a controller does not answer
//! (UNAVAILABLE: refused, reset, no connection within the connect timeout) goes to the next one
//! at once. The controller that failed is tried last for a cooldown (0.5 s, doubling while it
//! keeps failing, up to 15 s; the proxy's route lookups use the same, [`failover`]). A keyless
//! Connect or a drain is never repeated; its UNAVAILABLE reaches the caller. Watches resume on
//! the next controller:
//!
//! ```no_run
//! # async fn example() -> Result<(), hangar_client::ClientError> {
//! let client = hangar_client::HangarClient::connect("http://ctl-a:7070,http://ctl-b:7070").await?;
//! # Ok(()) }
//! ```
//!
//! A controller behind TLS with client certificates (mTLS), and a bearer token, take
//! [`Credentials`] (docs/security.md); [`Credentials::from_env_and_flags`] reads them as the CLI
//! does:
//!
//! ```no_run
//! # async fn example() -> Result<(), hangar_client::ClientError> {
//! use hangar_client::{ClientOptions, ClientTls, Credentials, HangarClient};
//!
//! let credentials = Credentials {
//!     token_file: Some("/run/secrets/hangar-token".into()),
//!     tls: Some(ClientTls {
//!         ca: Some("ca.pem".into()),
//!         cert: Some("alice.pem".into()),
//!         key: Some("alice.key".into()),
//!         server_name: None,
//!     }),
//!     ..Credentials::default()
//! };
//! let options = ClientOptions { credentials, ..ClientOptions::default() };
//! let client = HangarClient::connect_with("https://ctl.example.com:7070", options).await?;
//! # Ok(()) }
//! ```
//!
//! [`HangarClient::watch_nodes`] does both in one call: the current nodes, then every change,
//! resuming after dropped streams and controller restarts, and listing again when its revision
//! was compacted (the kube-rs watcher). Feed its events to a [`NodeStore`] for an always-current
//! copy (the reflector's store), and wait for the nodes to be as needed with
//! [`NodeStore::wait_for`]:
//!
//! ```no_run
//! # async fn example(client: hangar_client::HangarClient) -> Result<(), hangar_client::ClientError> {
//! use hangar_client::{NodeStore, WatchOptions, domain::{NodeFilter, NodeState}};
//!
//! let mut watch = std::pin::pin!(client.watch_nodes(NodeFilter::default(), WatchOptions::default()));
//! let mut nodes = NodeStore::default();
//! nodes.wait_for(&mut watch, |nodes| nodes.nodes().values().any(|n| n.state == NodeState::Ready)).await?;
//! # Ok(()) }
//! ```

mod backend_views;
mod backends;
pub mod cli;
mod client;
mod credentials;
mod error;
pub mod failover;
mod node_store;
pub mod pem;
mod retry;
mod watch;

pub use backend_views::{BackendPage, BackendStatusView, BackendView, ConnectRequest, Connection, SpawnSpec};
pub use client::{ClientOptions, DEFAULT_CONTROLLER, HangarClient, NodeList, NodePage};
pub use credentials::{BearerToken, ClientTls, CredentialFlags, Credentials, CredentialsError, HangarChannel};
pub use error::ClientError;
pub use node_store::NodeStore;
pub use retry::RetryPolicy;
pub use watch::{BackendWatchEvent, NodeWatchEvent, Reconnect, Resume, WatchEvent, WatchOptions};

/// The shared domain types the SDK speaks in.
pub use hangar::domain;
