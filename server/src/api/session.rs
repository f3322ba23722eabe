//! The session driver shared by the long-lived node streams (`DroneService.Attach` and
//! `ProxyService.Attach`). Both follow one shape: a Hello, a Welcome with the node id, then
//! heartbeats until the stream ends, the node goes silent, a newer stream of the same node
//! replaces it, or the controller shuts down. What a session does with its node's messages is
//! its [`SessionHandler`]; the rest is here.

use super::ApiError;
use crate::controller::{AttachedNode, NodeRegistry};
use crate::store::DynStore;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Status, Streaming};

/// Outbound messages queued per stream before the session stops reading from its node.
pub(super) const OUTBOUND_BUFFER: usize = 64;

/// Messages read from a node and not yet handled. The reader stops reading (priority messages
/// included) only past this many: it bounds what a node that floods can make the controller hold.
const INBOUND_QUEUE: usize = 4096;

/// Routes each message as the reader reads it: messages that must not wait behind the in-line
/// handling of earlier ones (key renewals) take their own path.
pub(super) type Divert<M> = Box<dyn FnMut(M) -> Routed<M> + Send>;

pub(super) enum Routed<M> {
    /// Handled by the session's loop, in order.
    InLine(M),
    /// Handed over to its own path; the reader waits for this (a send on a bounded queue) only.
    Diverted(futures::future::BoxFuture<'static, ()>),
    /// Already dealt with, in memory (a heartbeat).
    Handled,
}

/// A session re-reads the store this often even without a change notification: a bound on how
/// late a missed NOTIFY can make an action, never the normal path (a listener that reconnects
/// wakes every subscriber by itself).
const SESSION_POLL: Duration = Duration::from_secs(5);

/// What every node session needs: the registry, the store, and the owner of the session tasks.
#[derive(Clone)]
pub(super) struct NodeSessions {
    pub(super) registry: Arc<NodeRegistry>,
    pub(super) store: DynStore,
    pub(super) tasks: TaskTracker,
    pub(super) shutdown: CancellationToken,
}

/// What a session does with its node's messages and with store changes.
#[tonic::async_trait]
pub(super) trait SessionHandler<M>: Send + 'static {
    async fn message(&mut self, message: M) -> Result<(), ApiError>;

    /// Messages with their own path, taken before they queue behind the others; `None`: all
    /// messages are handled in line, in order.
    fn divert(&mut self) -> Option<Divert<M>> {
        None
    }

    /// The store moved (a commit on any controller) or the poll interval passed.
    async fn woken(&mut self) -> Result<(), ApiError> {
        Ok(())
    }
}

impl NodeSessions {
    /// Waits for the first message, which must come within the hello timeout.
    pub(super) async fn first<M>(&self, inbound: &mut Streaming<M>) -> Result<M, ApiError> {
        let timeout = self.registry.config().hello_timeout;
        match tokio::time::timeout(timeout, inbound.message()).await {
            Err(_) => Err(ApiError::Protocol(format!("no hello within {timeout:?}"))),
            // A message that does not decode; a node that went away reads no answer.
            Ok(Err(status)) => {
                Err(ApiError::Protocol(format!("the stream failed before its hello: {}", status.message())))
            }
            Ok(Ok(None)) => Err(ApiError::Protocol("the stream ended before its hello".into())),
            Ok(Ok(Some(message))) => Ok(message),
        }
    }

    /// Reads the node's messages until the session ends, then records the node offline.
    pub(super) fn spawn<M, R>(
        &self,
        attached: AttachedNode,
        mut inbound: Streaming<M>,
        outbound: mpsc::Sender<Result<R, Status>>,
        mut handler: impl SessionHandler<M>,
    ) where
        M: Send + 'static,
        R: Send + 'static,
    {
        let this = self.clone();
        // The reader: reads as messages arrive, so that a diverted one (a renewal) never waits
        // for the store writes of the messages before it. Owned by the session, which stops it.
        let (queue_tx, mut queue) = mpsc::channel(INBOUND_QUEUE);
        let mut divert = handler.divert();
        let reader = self.tasks.spawn(async move {
            loop {
                let read = match inbound.message().await {
                    Ok(Some(message)) => match divert.as_mut() {
                        Some(divert) => match divert(message) {
                            Routed::InLine(message) => Ok(Some(message)),
                            Routed::Diverted(handed_over) => {
                                handed_over.await;
                                continue;
                            }
                            Routed::Handled => continue,
                        },
                        None => Ok(Some(message)),
                    },
                    end => end,
                };
                let last = !matches!(read, Ok(Some(_)));
                if queue_tx.send(read).await.is_err() || last {
                    return;
                }
            }
        });
        self.tasks.spawn(async move {
            let mut woken = this.store.subscribe();
            let mut poll = tokio::time::interval(SESSION_POLL);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let end: Option<ApiError> = loop {
                let result = tokio::select! {
                    _ = this.shutdown.cancelled() => break Some(ApiError::shutting_down()),
                    cause = attached.closed() => break Some(cause.into()),
                    message = queue.recv() => match message.unwrap_or(Ok(None)) {
                        Ok(Some(message)) => handler.message(message).await,
                        Ok(None) => break None,
                        Err(status) => {
                            tracing::debug!(node_id = %attached.node_id, %status, "node stream failed");
                            break None;
                        }
                    },
                    _ = woken.changed() => handler.woken().await,
                    _ = poll.tick() => handler.woken().await,
                };
                match result {
                    Ok(()) => {}
                    // The store failing is no fault of the node: end the stream so that it
                    // reattaches (possibly elsewhere) and everything unacknowledged is replayed.
                    Err(ApiError::Store(err)) => {
                        tracing::warn!(node_id = %attached.node_id, error = %err, "store failed during a node session");
                        break Some(ApiError::Store(err));
                    }
                    Err(err) => break Some(err),
                }
            };
            reader.abort();
            if let Some(err) = end {
                // The node may already be gone; nobody is left to tell then.
                let _ = outbound.try_send(Err(err.into()));
            }
            drop(outbound);
            this.registry.detach(&attached).await;
        });
    }
}

/// A cluster or pool name, `default` when the node left it empty.
pub(super) fn or_default(value: &str) -> String {
    if value.is_empty() { "default".to_string() } else { value.to_string() }
}
