//! gRPC adapters: thin tonic services over the controller's domain code. Every error leaves
//! through [`ApiError`] and its single mapping to a status.

mod attach;
mod backend_service;
mod errors;
mod node_service;
mod page_token;
mod validate;

pub use attach::{DroneLink, PUBLIC_URL_LABEL, ProxyLink, RUNTIME_LABEL};
pub use backend_service::{BackendApi, BackendSettings, token_hash};
pub use errors::ApiError;
pub use node_service::NodeApi;
pub use page_token::PageTokens;
