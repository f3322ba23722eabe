//! `HangarClient`: one connection to a controller, and the node calls made over it (the backend
//! calls are in `backends`, the watches in `watch`).

use crate::credentials::error_chain;
use crate::failover::{self, Health};
use crate::{ClientError, Credentials, HangarChannel, RetryPolicy};
use hangar::domain::{Node, NodeFilter, duration_to_proto};
use hangar::error::reason;
use hangar::v1::{self, node_service_client::NodeServiceClient};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::Arc;
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

/// A connection to a Hangar controller, or to several controllers of one cluster that it fails
/// over between. Cheap to clone; clones share the connections, which reconnect by themselves
/// after a controller comes back.
///
/// Given several controllers (a comma-separated list of URLs), each call goes to the first one
/// in the list that has not failed lately. An idempotent call (list, get, a keyed Connect,
/// terminate, undrain) that a controller does not answer (UNAVAILABLE: connection refused or
/// reset, no connection within the connect timeout, a controller shutting down) is sent to the
/// next one at once, and the controller that failed is tried only after the others for a
/// cooldown (0.5 s, doubling while it keeps failing, up to 15 s); the [`RetryPolicy`]'s backoff
/// applies only once every controller has failed the call. A call with effects (a keyless
/// Connect, drain) is never repeated: its failure reaches the caller, and the next call goes to
/// another controller. Watches resume on the next controller (see [`WatchOptions::fallbacks`]).
///
/// [`WatchOptions::fallbacks`]: crate::WatchOptions::fallbacks
#[derive(Debug, Clone)]
pub struct HangarClient {
    /// In the order given; never empty.
    targets: Arc<[Arc<Target>]>,
    options: ClientOptions,
}

/// One controller of a client.
#[derive(Debug)]
struct Target {
    address: String,
    channel: HangarChannel,
    health: Health,
}

impl HangarClient {
    /// Connects to a controller at an `http://host:port` or `https://host:port` URL (a bare
    /// `host:port` is taken as http, or as https when the credentials hold TLS options) with
    /// [`ClientOptions::default`]. Several comma-separated URLs make a client that fails over
    /// between them (see [`HangarClient::connect_with`]).
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        Self::connect_with(url, ClientOptions::default()).await
    }

    /// Connects with `options`; their credentials' files (token file, CA, client certificate)
    /// are read now.
    ///
    /// `urls` is one controller URL or several, comma-separated, of one cluster. With several,
    /// they are tried in order until one connects, and the call fails with the first error if
    /// none does; the others are connected on first use, and those that did not connect now
    /// start in their cooldown.
    pub async fn connect_with(urls: &str, options: ClientOptions) -> Result<Self, ClientError> {
        let client = Self::connect_lazy(urls, options)?;
        let mut first_error = None;
        for target in client.targets.iter() {
            let (_, endpoint) = endpoint(&target.address, &client.options)?;
            let timeout = client.options.connect_timeout;
            let error = match tokio::time::timeout(timeout, endpoint.connect()).await {
                Ok(Ok(channel)) => {
                    // Swap the lazy channel of this one for the connection just made.
                    let bearer = client.options.credentials.bearer()?;
                    let mut targets: Vec<Arc<Target>> = client.targets.iter().cloned().collect();
                    let index = targets.iter().position(|t| Arc::ptr_eq(t, target)).expect("target of this client");
                    targets[index] = Arc::new(Target {
                        address: target.address.clone(),
                        channel: HangarChannel::new(channel, bearer),
                        health: Health::default(),
                    });
                    return Ok(HangarClient { targets: targets.into(), options: client.options });
                }
                Ok(Err(e)) => ClientError::Connect { address: target.address.clone(), detail: error_chain(&e) },
                Err(_) => {
                    let detail = format!("no answer within {}", humantime::format_duration(timeout));
                    ClientError::Connect { address: target.address.clone(), detail }
                }
            };
            target.health.failed();
            tracing::debug!(controller = %target.address, error = %error, "controller not reachable, trying the next");
            first_error.get_or_insert(error);
        }
        Err(first_error.expect("a client has at least one controller"))
    }

    /// A client whose connections are made on first use and remade after failures, so that it
    /// can be created for controllers that are down right now (a watch's fallback controllers).
    /// Only the addresses and the credentials are checked here. `urls` as in
    /// [`HangarClient::connect_with`].
    pub fn connect_lazy(urls: &str, options: ClientOptions) -> Result<Self, ClientError> {
        let urls: Vec<&str> = urls.split(',').map(str::trim).filter(|url| !url.is_empty()).collect();
        if urls.is_empty() {
            return Err(ClientError::InvalidAddress {
                address: String::new(),
                detail: "empty; expected a URL like http://127.0.0.1:7070, or several separated by commas".into(),
            });
        }
        let targets = urls
            .into_iter()
            .map(|url| {
                let (address, endpoint) = endpoint(url, &options)?;
                let channel = options.credentials.authorize(endpoint.connect_lazy())?;
                Ok(Arc::new(Target { address, channel, health: Health::default() }))
            })
            .collect::<Result<Vec<_>, ClientError>>()?;
        Ok(HangarClient { targets: targets.into(), options })
    }

    /// A client over an existing channel (custom transports, other interceptors); make one from
    /// a tonic `Channel` with [`Credentials::authorize`]. `options.credentials` are not applied
    /// again.
    pub fn from_channel(channel: HangarChannel, address: impl Into<String>, options: ClientOptions) -> Self {
        let target = Arc::new(Target { address: address.into(), channel, health: Health::default() });
        HangarClient { targets: Arc::new([target]), options }
    }

    /// The URL of the controller the next call goes to first: the first of the client's
    /// controllers that has not failed lately.
    pub fn address(&self) -> &str {
        &self.preferred().address
    }

    /// Every controller URL of this client, in the order given.
    pub fn addresses(&self) -> impl Iterator<Item = &str> {
        self.targets.iter().map(|target| target.address.as_str())
    }

    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// The generated `NodeService` client on the connection to [`HangarClient::address`], for
    /// calls the SDK does not wrap (they do not fail over).
    pub fn node_service(&self) -> NodeServiceClient<HangarChannel> {
        NodeServiceClient::new(self.channel())
    }

    pub(crate) fn channel(&self) -> HangarChannel {
        self.preferred().channel.clone()
    }

    fn preferred(&self) -> &Target {
        let order = failover::try_order(self.targets.iter().map(|target| &target.health), 0);
        &self.targets[order[0]]
    }

    /// One client per controller of this one, in its order of preference (a watch rotates over
    /// them itself).
    pub(crate) fn split(&self) -> Vec<HangarClient> {
        let order = failover::try_order(self.targets.iter().map(|target| &target.health), 0);
        order
            .into_iter()
            .map(|i| HangarClient { targets: Arc::new([self.targets[i].clone()]), options: self.options.clone() })
            .collect()
    }

    /// Runs a unary call, given the channel to a controller, with failover. `idempotent` calls
    /// go to the next controller at once when one does not answer, and are retried per the
    /// [`RetryPolicy`] once every controller has failed them (or after RATE_LIMITED); other
    /// calls are made once, to the preferred controller.
    pub(crate) async fn call<T, F, Fut>(&self, idempotent: bool, call: F) -> Result<T, ClientError>
    where
        F: Fn(HangarChannel) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        if !idempotent {
            return self.call_each(false, &call).await;
        }
        self.options.retry.run(|| self.call_each(true, &call)).await
    }

    /// One round: the controllers in order of preference, until one answers (just the first
    /// unless `fail_over`).
    async fn call_each<T, F, Fut>(&self, fail_over: bool, call: &F) -> Result<T, ClientError>
    where
        F: Fn(HangarChannel) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let order = failover::try_order(self.targets.iter().map(|target| &target.health), 0);
        let last = order.len() - 1;
        for (tried, i) in order.into_iter().enumerate() {
            let target = &self.targets[i];
            match call(target.channel.clone()).await {
                Err(err) if not_answered(&err) => {
                    let cooldown = target.health.failed();
                    if self.targets.len() > 1 {
                        tracing::warn!(controller = %target.address, ?cooldown, error = %err, "controller did not answer");
                    }
                    if !fail_over || tried == last {
                        return Err(err);
                    }
                }
                result => {
                    if target.health.answered() {
                        tracing::info!(controller = %target.address, "controller answers again");
                    }
                    return result;
                }
            }
        }
        unreachable!("the last controller's failure is returned")
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
            .call(true, |channel| {
                let request = self.request(message.clone());
                async move { Ok(NodeServiceClient::new(channel).list_nodes(request).await?.into_inner()) }
            })
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
            .call(true, |channel| {
                let request = self.request(message.clone());
                async move { Ok(NodeServiceClient::new(channel).get_node(request).await?.into_inner()) }
            })
            .await?;
        required_node(response.node.as_ref(), "GetNodeResponse")
    }

    /// Drains a drone: no new backend is placed on it, and with a `deadline` the backends still
    /// on it then are soft-terminated. Not retried: an UNAVAILABLE answer leaves it open whether
    /// the drain happened (draining again is harmless, so a caller may repeat it).
    pub async fn drain_node(&self, id: &str, deadline: Option<Duration>) -> Result<Node, ClientError> {
        let message = v1::DrainNodeRequest { id: id.to_string(), deadline: deadline.map(duration_to_proto) };
        let response = self
            .call(false, |channel| {
                let request = self.request(message.clone());
                async move { Ok(NodeServiceClient::new(channel).drain_node(request).await?.into_inner()) }
            })
            .await?;
        required_node(response.node.as_ref(), "DrainNodeResponse")
    }

    /// Undoes a drain: the drone takes new backends again (it is READY once attached and
    /// healthy), and a drain deadline that has not passed terminates nothing. Undraining a drone
    /// that is not draining changes nothing, so the call is retried after UNAVAILABLE.
    pub async fn undrain_node(&self, id: &str) -> Result<Node, ClientError> {
        let message = v1::UndrainNodeRequest { id: id.to_string() };
        let response = self
            .call(true, |channel| {
                let request = self.request(message.clone());
                async move { Ok(NodeServiceClient::new(channel).undrain_node(request).await?.into_inner()) }
            })
            .await?;
        required_node(response.node.as_ref(), "UndrainNodeResponse")
    }
}

/// Whether a call's failure says the controller did not answer it (so another one may): any
/// UNAVAILABLE but NO_DRONE_AVAILABLE, which is the scheduler's answer.
/// The controller did not answer the call: it is unreachable or going away (UNAVAILABLE), or the
/// connection broke while the call was in flight (a controller killed mid-call): the transport
/// reports that as UNKNOWN, CANCELLED or INTERNAL, without the `ErrorInfo` every answer of a
/// controller carries. Only idempotent calls go on to the next controller after it.
fn not_answered(err: &ClientError) -> bool {
    use tonic::Code;
    match err {
        ClientError::Unavailable { reason, .. } => reason != hangar::error::reason::NO_DRONE_AVAILABLE,
        ClientError::Other(status) => {
            matches!(status.code(), Code::Unknown | Code::Cancelled | Code::Internal)
                && hangar::error::error_info(status).is_none()
        }
        _ => false,
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

    fn two_controllers(retry: RetryPolicy) -> HangarClient {
        let options = ClientOptions { retry, ..ClientOptions::default() };
        HangarClient::connect_lazy("http://127.0.0.1:1, 127.0.0.1:2", options).unwrap()
    }

    fn unavailable() -> ClientError {
        ClientError::from(tonic::Status::unavailable("connection refused"))
    }

    #[tokio::test]
    async fn an_idempotent_call_goes_to_the_next_controller_at_once_and_the_failed_one_cools_down() {
        // A backoff of a minute: only failing over without waiting lets this test finish.
        let slow = RetryPolicy {
            max_attempts: 2,
            initial_backoff: Duration::from_secs(60),
            max_backoff: Duration::from_secs(60),
        };
        let client = two_controllers(slow);
        assert_eq!(client.addresses().collect::<Vec<_>>(), ["http://127.0.0.1:1", "http://127.0.0.1:2"]);
        assert_eq!(client.address(), "http://127.0.0.1:1");
        let calls = std::sync::atomic::AtomicU32::new(0);
        let call = |_channel| {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { if n == 0 { Err(unavailable()) } else { Ok(n) } }
        };
        let answered = tokio::time::timeout(Duration::from_secs(5), client.call(true, call)).await.expect("no backoff");
        assert_eq!(answered.unwrap(), 1);
        assert_eq!(client.address(), "http://127.0.0.1:2", "the failed controller is left for last");
        assert_eq!(client.clone().address(), "http://127.0.0.1:2", "clones share what the controllers did");
        assert_eq!(
            client.split().iter().map(|c| c.address().to_string()).collect::<Vec<_>>(),
            ["http://127.0.0.1:2", "http://127.0.0.1:1"]
        );
    }

    #[tokio::test]
    async fn a_call_with_effects_is_made_once_and_the_next_call_goes_elsewhere() {
        let client = two_controllers(RetryPolicy::default());
        let calls = std::sync::atomic::AtomicU32::new(0);
        let call = |_channel| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Err::<(), _>(unavailable()) }
        };
        assert!(matches!(client.call(false, call).await, Err(ClientError::Unavailable { .. })));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1, "never repeated");
        assert_eq!(client.address(), "http://127.0.0.1:2");
    }

    #[tokio::test]
    async fn an_answer_is_not_failed_over_even_when_it_is_an_error() {
        let client = two_controllers(RetryPolicy::default());
        let calls = std::sync::atomic::AtomicU32::new(0);
        let call = |_channel| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Err::<(), _>(ClientError::from(tonic::Status::not_found("no backend"))) }
        };
        assert!(matches!(client.call(true, call).await, Err(ClientError::NotFound { .. })));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(client.address(), "http://127.0.0.1:1", "a controller that answers stays first");
    }

    #[tokio::test]
    async fn a_call_cut_off_by_a_broken_connection_fails_over_and_a_controllers_own_error_does_not() {
        let client = two_controllers(RetryPolicy::default());
        let calls = std::sync::atomic::AtomicU32::new(0);
        // A controller killed mid-call: the transport's UNKNOWN, without the controller's ErrorInfo.
        let broken = |_channel| {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                if n == 0 {
                    Err(ClientError::from(tonic::Status::unknown("h2 protocol error: broken pipe")))
                } else {
                    Ok(n)
                }
            }
        };
        assert_eq!(client.call(true, broken).await.unwrap(), 1);
        assert_eq!(client.address(), "http://127.0.0.1:2", "the broken one is left for last");

        let client = two_controllers(RetryPolicy::default());
        let calls = std::sync::atomic::AtomicU32::new(0);
        let failed = |_channel| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async {
                Err::<(), _>(ClientError::from(hangar::error::status_with_reason(
                    tonic::Code::Internal,
                    "the store failed",
                    "STORE_FAILED",
                    &[],
                )))
            }
        };
        assert!(client.call(true, failed).await.is_err());
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1, "an answer, even an error, is not failed over");
    }

    #[tokio::test]
    async fn several_controllers_connect_to_the_first_that_answers() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = format!("http://{}", listener.local_addr().unwrap());
        let down = format!(
            "http://127.0.0.1:{}",
            std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
        );
        // Accept connections (HTTP/2 is not spoken: connecting is all that is checked).
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let client = HangarClient::connect(&format!("{down},{up}")).await.unwrap();
        assert_eq!(client.address(), up, "the unreachable one starts in its cooldown");
        let err = HangarClient::connect(&format!("{down},{down}")).await.unwrap_err();
        assert!(matches!(&err, ClientError::Connect { address, .. } if *address == down), "{err}");
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
