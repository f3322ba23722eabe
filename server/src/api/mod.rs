//! gRPC adapters: thin tonic services over the controller's domain code. Every error leaves
//! through [`ApiError`] and its single mapping to a status.

mod backend_service;
mod drone_reports;
mod drone_service;
mod errors;
mod key_renewals;
mod node_service;
mod page_token;
mod proxy_service;
mod queue;
mod session;
mod validate;

pub use backend_service::{BackendApi, BackendSettings, token_hash};
pub use drone_service::{DroneApi, RUNTIME_LABEL};
pub use errors::ApiError;
pub use node_service::NodeApi;
pub use page_token::{MAX_PAGE_TOKEN, PageCursor, PageTokens};
pub use proxy_service::{PUBLIC_URL_LABEL, ProxyApi};
