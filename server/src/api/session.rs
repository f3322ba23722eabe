//! The session driver shared by the long-lived node streams (`DroneService.Attach` and
//! `ProxyService.Attach`). Both follow one shape: a Hello, a Welcome with the node id, then
//! heartbeats until the stream ends, the node goes silent, a newer stream of the same node
//! replaces it, or the controller shuts down. What a session does with its node's messages is
//! its [`SessionHandler`]; the rest is here.

use super::ApiError;
use super::queue;
use crate::controller::{AttachedNode, NodeRegistry};
use crate::store::DynStore;
use futures::future::BoxFuture;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Status, Streaming};

/// A session reads the store on its own once per this many `session_poll` intervals; the
/// controller-wide poll covers the interval itself.
const SESSION_POLL_FLOOR_FACTOR: u32 = 12;

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

    /// A commit (on any controller) gave this node new actions, or the poll interval
    /// (`session_poll`) passed: commits that concern other nodes do not wake it.
    async fn woken(&mut self) -> Result<(), ApiError> {
        Ok(())
    }

    /// Work that runs for as long as the session and ends with it (the proxy's feed of route
    /// invalidations): polled beside the session's own work, dropped when it ends.
    fn companion(&mut self) -> Option<BoxFuture<'static, ()>> {
        None
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
        outbound: queue::Sender<Result<R, Status>>,
        mut handler: impl SessionHandler<M>,
    ) where
        M: Send + 'static,
        R: Send + 'static,
    {
        let this = self.clone();
        // The reader: reads as messages arrive, so that a diverted one (a renewal) never waits
        // for the store writes of the messages before it. Owned by the session, which stops it.
        let (queue_tx, mut queue) = queue::channel(INBOUND_QUEUE);
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
            // The last floor under a missed wake-up: the controller's one poll
            // (`NodeRegistry::run_action_poll`) wakes the drones with pending actions every
            // `session_poll`; a session also reads on its own, but rarely. The first read is the
            // attach's own; sessions that attached together (a storm) are spread over the
            // interval so their polls do not come in one burst.
            let every = this.registry.config().session_poll * SESSION_POLL_FLOOR_FACTOR;
            let first = every.mul_f64(0.5 + rand::random::<f64>() / 2.0);
            let mut poll = tokio::time::interval_at(tokio::time::Instant::now() + first, every);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut companion = handler.companion().unwrap_or_else(|| Box::pin(futures::future::pending()));
            let mut store_failing = false;
            let end: Option<ApiError> = loop {
                let result = tokio::select! {
                    _ = this.shutdown.cancelled() => break Some(ApiError::shutting_down()),
                    cause = attached.closed() => break Some(cause.into()),
                    message = queue.recv() => match message.unwrap_or(Ok(None)) {
                        // A message handled in line that the store failed is not acknowledged:
                        // the stream ends, and the node replays it on its next one.
                        Ok(Some(message)) => match handler.message(message).await {
                            Err(ApiError::Store(err)) => {
                                tracing::warn!(node_id = %attached.node_id, error = %err, "store failed during a node session");
                                break Some(ApiError::Store(err));
                            }
                            handled => handled,
                        },
                        Ok(None) => break None,
                        Err(status) => {
                            tracing::debug!(node_id = %attached.node_id, %status, "node stream failed");
                            break None;
                        }
                    },
                    _ = attached.woken() => handler.woken().await,
                    _ = &mut companion => {
                        companion = Box::pin(futures::future::pending());
                        Ok(())
                    }
                    _ = poll.tick() => {
                        attached.want_read();
                        handler.woken().await
                    }
                };
                match result {
                    Ok(()) => store_failing = false,
                    // A wake-up's read that the store failed is no fault of the node, and ending
                    // its stream would not help it: its next attach needs the store too, and a
                    // drone without a stream cannot hear that its key renewals are deferred, so a
                    // store outage would end its sessions
                    // (docs/design/backends-and-leases.md#store-outages). The next wake-up or poll
                    // reads the actions again (and the reports task retries its own writes).
                    Err(ApiError::Store(err)) => {
                        if !std::mem::replace(&mut store_failing, true) {
                            tracing::warn!(node_id = %attached.node_id, error = %err, "store failed during a node session; keeping the session");
                        }
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
