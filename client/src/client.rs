//! `HangarClient`: one connection to a controller, and the node calls made over it (the backend
//! calls are in `backends`, the watches in `watch`).

use crate::credentials::error_chain;
use crate::{ClientError, Credentials, HangarChannel, RetryPolicy};
use hangar::domain::{Node, NodeFilter, duration_to_proto};
use hangar::error::reason;
use hangar::v1::{self, node_service_client::NodeServiceClient};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tonic::transport::Endpoint;

/// Default controller address of the CLI and of `hangar-server dev`.
pub const DEFAULT_CONTROLLER: &str = "http://127.0.0.1:7070";

/// Page size `list_all_nodes` asks for: few round trips, pages well under the message limit.
const LIST_ALL_PAGE_SIZE: i32 = 500;

/// How often `list_all_nodes` starts over when its page token expired mid-listing.
const LIST_ALL_RESTARTS: u32 = 3;

/// Timeouts, retries and credentials of a [`HangarClient`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// How long `connect` waits for the TCP (and HTTP/2) connection.
    pub connect_timeout: Duration,
    /// Deadline of each unary call, sent to the server as `grpc-timeout`. Streams (watch) have
    /// none.
    pub request_timeout: Duration,
    /// Retries of idempotent calls after UNAVAILABLE.
    pub retry: RetryPolicy,
    /// Token and TLS settings (none by default: plain http without a token).
    pub credentials: Credentials,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            credentials: Credentials::default(),
        }
    }
}

/// One page of `ListNodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePage {
    pub nodes: Vec<Node>,
    /// Token of the next page; `None` on the last page.
    pub next_page_token: Option<String>,
    /// Snapshot revision of the whole listing.
    pub revision: u64,
}

/// Every node matching a filter, read from one snapshot. Watching from `revision` afterwards
/// misses no change and repeats none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeList {
    pub revision: u64,
    pub nodes: Vec<Node>,
}

/// A connection to a Hangar controller. Cheap to clone; clones share the connection, which
/// reconnects by itself after the controller comes back.
#[derive(Debug, Clone)]
pub struct HangarClient {
    channel: HangarChannel,
    address: String,
    options: ClientOptions,
}

impl HangarClient {
    /// Connects to a controller at an `http://host:port` or `https://host:port` URL (a bare
    /// `host:port` is taken as http, or as https when the credentials hold TLS options) with
    /// [`ClientOptions::default`].
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        Self::connect_with(url, ClientOptions::default()).await
    }

    /// Connects with `options`; their credentials' files (token file, CA, client certificate)
    /// are read now.
    pub async fn connect_with(url: &str, options: ClientOptions) -> Result<Self, ClientError> {
        let (address, endpoint) = endpoint(url, &options)?;
        let bearer = options.credentials.bearer()?;
        let channel = match tokio::time::timeout(options.connect_timeout, endpoint.connect()).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(e)) => return Err(ClientError::Connect { address, detail: error_chain(&e) }),
            Err(_) => {
                let detail = format!("no answer within {}", humantime::format_duration(options.connect_timeout));
                return Err(ClientError::Connect { address, detail });
            }
        };
        Ok(HangarClient { channel: HangarChannel::new(channel, bearer), address, options })
    }

    /// A client whose connection is made on first use and remade after failures, so that it can
    /// be created for a controller that is down right now (a watch's fallback controllers).
    /// Only the address and the credentials are checked here.
    pub fn connect_lazy(url: &str, options: ClientOptions) -> Result<Self, ClientError> {
        let (address, endpoint) = endpoint(url, &options)?;
        let channel = options.credentials.authorize(endpoint.connect_lazy())?;
        Ok(HangarClient { channel, address, options })
    }

    /// A client over an existing channel (custom transports, other interceptors); make one from
    /// a tonic `Channel` with [`Credentials::authorize`]. `options.credentials` are not applied
    /// again.
    pub fn from_channel(channel: HangarChannel, address: impl Into<String>, options: ClientOptions) -> Self {
        HangarClient { channel, address: address.into(), options }
    }

    /// The controller URL this client talks to.
    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// The generated `NodeService` client on this connection, for calls the SDK does not wrap.
    pub fn node_service(&self) -> NodeServiceClient<HangarChannel> {
        NodeServiceClient::new(self.channel.clone())
    }

    pub(crate) fn channel(&self) -> HangarChannel {
        self.channel.clone()
    }

    /// A unary request carrying the call deadline.
    pub(crate) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.options.request_timeout);
        request
    }

    /// One page of nodes matching `filter`. `page_size` 0 means the server default (100); pass
    /// the previous page's `next_page_token` to continue. Retried after UNAVAILABLE.
    pub async fn list_nodes(
        &self,
        filter: &NodeFilter,
        page_size: i32,
        page_token: Option<&str>,
    ) -> Result<NodePage, ClientError> {
        let message = v1::ListNodesRequest {
            filter: Some(filter.to_proto()),
            page_size,
            page_token: page_token.unwrap_or_default().to_string(),
        };
        let response = self
            .options
            .retry
            .run(|| async { Ok(self.node_service().list_nodes(self.request(message.clone())).await?.into_inner()) })
            .await?;
        Ok(NodePage {
            nodes: response.nodes.iter().map(node_from_proto).collect::<Result<_, _>>()?,
            next_page_token: (!response.next_page_token.is_empty()).then_some(response.next_page_token),
            revision: response.revision,
        })
    }

    /// Every node matching `filter`, following page tokens, all from one snapshot revision.
    ///
    /// Fails with [`ClientError::InvalidResponse`] if two pages carry different revisions. When
    /// the snapshot is compacted mid-listing (reason `PAGE_TOKEN_EXPIRED`) the listing starts
    /// over, a few times at most.
    pub async fn list_all_nodes(&self, filter: &NodeFilter) -> Result<NodeList, ClientError> {
        let mut restarts = 0;
        loop {
            match self.list_all_nodes_once(filter).await {
                Err(err)
                    if err.reason().as_deref() == Some(reason::PAGE_TOKEN_EXPIRED) && restarts < LIST_ALL_RESTARTS =>
                {
                    tracing::debug!(error = %err, "listing snapshot expired; listing again");
                    restarts += 1;
                }
                result => return result,
            }
        }
    }

    async fn list_all_nodes_once(&self, filter: &NodeFilter) -> Result<NodeList, ClientError> {
        let first = self.list_nodes(filter, LIST_ALL_PAGE_SIZE, None).await?;
        let revision = first.revision;
        let mut nodes = first.nodes;
        let mut token = first.next_page_token;
        while let Some(page_token) = token {
            let page = self.list_nodes(filter, LIST_ALL_PAGE_SIZE, Some(&page_token)).await?;
            if page.revision != revision {
                return Err(ClientError::InvalidResponse(format!(
                    "pages of one listing carry different revisions ({revision} then {})",
                    page.revision
                )));
            }
            nodes.extend(page.nodes);
            token = page.next_page_token;
        }
        Ok(NodeList { revision, nodes })
    }

    /// One node by id; [`ClientError::NotFound`] with reason `NODE_NOT_FOUND` if there is none.
    /// Retried after UNAVAILABLE.
    pub async fn get_node(&self, id: &str) -> Result<Node, ClientError> {
        let message = v1::GetNodeRequest { id: id.to_string() };
        let response = self
            .options
            .retry
            .run(|| async { Ok(self.node_service().get_node(self.request(message.clone())).await?.into_inner()) })
            .await?;
        required_node(response.node.as_ref(), "GetNodeResponse")
    }

    /// Drains a drone: no new backend is placed on it, and with a `deadline` the backends still
    /// on it then are soft-terminated. Not retried: an UNAVAILABLE answer leaves it open whether
    /// the drain happened (draining again is harmless, so a caller may repeat it).
    pub async fn drain_node(&self, id: &str, deadline: Option<Duration>) -> Result<Node, ClientError> {
        let message = v1::DrainNodeRequest { id: id.to_string(), deadline: deadline.map(duration_to_proto) };
        let response = self.node_service().drain_node(self.request(message)).await?.into_inner();
        required_node(response.node.as_ref(), "DrainNodeResponse")
    }

    /// Undoes a drain: the drone takes new backends again (it is READY once attached and
    /// healthy), and a drain deadline that has not passed terminates nothing. Undraining a drone
    /// that is not draining changes nothing, so the call is retried after UNAVAILABLE.
    pub async fn undrain_node(&self, id: &str) -> Result<Node, ClientError> {
        let message = v1::UndrainNodeRequest { id: id.to_string() };
        let response = self
            .options
            .retry
            .run(|| async { Ok(self.node_service().undrain_node(self.request(message.clone())).await?.into_inner()) })
            .await?;
        required_node(response.node.as_ref(), "UndrainNodeResponse")
    }
}

fn node_from_proto(node: &v1::Node) -> Result<Node, ClientError> {
    Node::try_from(node).map_err(ClientError::InvalidResponse)
}

fn required_node(node: Option<&v1::Node>, message: &str) -> Result<Node, ClientError> {
    node_from_proto(node.ok_or_else(|| ClientError::InvalidResponse(format!("{message} without a node")))?)
}

/// The normalized address and its endpoint, with timeouts and the credentials' TLS.
fn endpoint(url: &str, options: &ClientOptions) -> Result<(String, Endpoint), ClientError> {
    let address = normalize_address(url, options.credentials.tls.is_some())?;
    let endpoint = Endpoint::from_shared(address.clone())
        .map_err(|e| ClientError::InvalidAddress { address: url.to_string(), detail: error_chain(&e) })?
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(true);
    Ok((address, options.credentials.configure(endpoint)?))
}

/// `host:port` becomes `http://host:port`, or `https://host:port` when TLS options are given.
fn normalize_address(url: &str, tls: bool) -> Result<String, ClientError> {
    let url = url.trim().trim_end_matches('/');
    let invalid = |detail: &str| ClientError::InvalidAddress { address: url.to_string(), detail: detail.to_string() };
    if url.is_empty() {
        return Err(invalid("empty; expected a URL like http://127.0.0.1:7070"));
    }
    match url.split_once("://") {
        None if tls => Ok(format!("https://{url}")),
        None => Ok(format!("http://{url}")),
        Some(("http" | "https", rest)) if !rest.is_empty() => Ok(url.to_string()),
        Some(_) => Err(invalid("expected a URL like http://127.0.0.1:7070 or https://ctl.example:7070")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_host_port_is_taken_as_http_or_with_tls_options_as_https() {
        assert_eq!(normalize_address("127.0.0.1:7070", false).unwrap(), "http://127.0.0.1:7070");
        assert_eq!(normalize_address("http://ctl:7070/", false).unwrap(), "http://ctl:7070");
        assert_eq!(normalize_address("ctl:7070", true).unwrap(), "https://ctl:7070");
        assert_eq!(normalize_address("https://ctl:7070/", false).unwrap(), "https://ctl:7070");
    }

    #[test]
    fn other_schemes_are_refused_with_a_reason() {
        let err = normalize_address("ftp://ctl", false).unwrap_err();
        assert!(matches!(err, ClientError::InvalidAddress { .. }), "{err}");
        assert!(err.to_string().contains("https://"), "{err}");
        assert!(normalize_address("  ", false).is_err());
    }

    #[tokio::test]
    async fn connecting_to_a_closed_port_names_the_address() {
        // Bind then drop a listener: the port is free and nothing answers on it.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("http://127.0.0.1:{port}");
        let err = HangarClient::connect(&url).await.unwrap_err();
        match &err {
            ClientError::Connect { address, detail } => {
                assert_eq!(address, &url);
                assert!(detail.to_lowercase().contains("refused"), "{detail}");
            }
            other => panic!("expected Connect, got {other:?}"),
        }
        assert!(err.to_string().contains(&url), "{err}");
    }
}
