//! Backend calls of `HangarClient`: Connect (get-or-create by key), get, list, watch and
//! terminate. What they send and answer is in [`crate::backend_views`].

use crate::backend_views::{BackendPage, BackendStatusView, BackendView, ConnectRequest, Connection};
use crate::watch::{Next, next_step};
use crate::{ClientError, HangarClient, RetryPolicy};
use futures::Stream;
use hangar::domain::{BackendFilter, BackendState};
use hangar::v1::{self, backend_service_client::BackendServiceClient};
use std::time::Duration;

/// Page size `list_all_backends` asks for.
const LIST_ALL_PAGE_SIZE: i32 = 500;

impl HangarClient {
    /// The generated `BackendService` client on this connection, for calls the SDK does not wrap.
    pub fn backend_service(&self) -> BackendServiceClient<crate::HangarChannel> {
        BackendServiceClient::new(self.channel())
    }

    /// Connect: the live backend of the request's key, or a new one started from its spawn spec.
    ///
    /// Retried after UNAVAILABLE only when the request has a key ([`ConnectRequest::is_idempotent`]):
    /// repeating a keyed Connect returns the backend the lost attempt may have started, while a
    /// repeated keyless Connect could start a second one. NO_DRONE_AVAILABLE is never retried.
    pub async fn connect_backend(&self, request: &ConnectRequest) -> Result<Connection, ClientError> {
        let message = request.to_proto();
        let response = self
            .call(request.is_idempotent(), |channel| {
                let request = self.request(message.clone());
                async move { Ok(BackendServiceClient::new(channel).connect(request).await?.into_inner()) }
            })
            .await?;
        Connection::from_proto(&response)
    }

    /// One backend by id; [`ClientError::NotFound`] with reason `BACKEND_NOT_FOUND` if there is
    /// none. Retried after UNAVAILABLE.
    pub async fn get_backend(&self, id: &str) -> Result<BackendView, ClientError> {
        let message = v1::GetBackendRequest { id: id.to_string() };
        let response = self
            .call(true, |channel| {
                let request = self.request(message.clone());
                async move { Ok(BackendServiceClient::new(channel).get_backend(request).await?.into_inner()) }
            })
            .await?;
        required_backend(response.backend.as_ref(), "GetBackendResponse")
    }

    /// One page of backends matching `filter`. `page_size` 0 means the server default (100);
    /// pass the previous page's `next_page_token` to continue. Retried after UNAVAILABLE.
    pub async fn list_backends(
        &self,
        filter: &BackendFilter,
        page_size: i32,
        page_token: Option<&str>,
    ) -> Result<BackendPage, ClientError> {
        let message = v1::ListBackendsRequest {
            filter: Some(filter.to_proto()),
            page_size,
            page_token: page_token.unwrap_or_default().to_string(),
        };
        let response = self
            .call(true, |channel| {
                let request = self.request(message.clone());
                async move { Ok(BackendServiceClient::new(channel).list_backends(request).await?.into_inner()) }
            })
            .await?;
        Ok(BackendPage {
            backends: response.backends.iter().map(BackendView::from_proto).collect::<Result<_, _>>()?,
            next_page_token: (!response.next_page_token.is_empty()).then_some(response.next_page_token),
            revision: response.revision,
        })
    }

    /// Every backend matching `filter`, following page tokens. Backends change state while the
    /// pages are read, so one that moves between pages may be missing or listed twice; the
    /// second sighting is dropped (the first page's view of it is kept).
    pub async fn list_all_backends(&self, filter: &BackendFilter) -> Result<Vec<BackendView>, ClientError> {
        let mut backends: Vec<BackendView> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut token: Option<String> = None;
        loop {
            let page = self.list_backends(filter, LIST_ALL_PAGE_SIZE, token.as_deref()).await?;
            backends.extend(page.backends.into_iter().filter(|b| seen.insert(b.id.clone())));
            match page.next_page_token {
                Some(next) if Some(&next) == token.as_ref() => {
                    return Err(ClientError::InvalidResponse(format!("the page token {next:?} repeats itself")));
                }
                Some(next) => token = Some(next),
                None => return Ok(backends),
            }
        }
    }

    /// Soft-terminates the backend (SIGTERM, then a kill after the grace period) or, with
    /// `hard`, kills it at once; returns the backend as it is after the request. Terminating a
    /// backend again changes nothing (a soft request after a hard one does not soften it), so
    /// the call is retried after UNAVAILABLE, on another controller when there are several.
    pub async fn terminate_backend(&self, id: &str, hard: bool) -> Result<BackendView, ClientError> {
        let message = v1::TerminateBackendRequest { id: id.to_string(), hard };
        let response = self
            .call(true, |channel| {
                let request = self.request(message.clone());
                async move { Ok(BackendServiceClient::new(channel).terminate_backend(request).await?.into_inner()) }
            })
            .await?;
        required_backend(response.backend.as_ref(), "TerminateBackendResponse")
    }

    /// The backend's statuses: its history, then each change, ending after TERMINATED. See
    /// [`HangarClient::watch_backend_with`]; this one never gives up on a controller that is
    /// away.
    pub fn watch_backend(
        &self,
        id: &str,
    ) -> impl Stream<Item = Result<BackendStatusView, ClientError>> + Send + 'static {
        let retry = RetryPolicy {
            max_attempts: u32::MAX,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
        };
        self.watch_backend_with(id, retry)
    }

    /// Like [`HangarClient::watch_backend`], giving up after `retry.max_attempts` consecutive
    /// streams that ended (UNAVAILABLE, a reset connection) without a new status.
    ///
    /// A dropped stream is resumed by calling WatchBackend again: the controller replays the
    /// history, and since states only move forward, every status whose state is not past the
    /// last one delivered is skipped. So each state is delivered at most once, in order. A stream
    /// that ends cleanly before TERMINATED counts as dropped. Errors a retry cannot fix
    /// (BACKEND_NOT_FOUND, a state this client does not know) are the last item.
    pub fn watch_backend_with(
        &self,
        id: &str,
        retry: RetryPolicy,
    ) -> impl Stream<Item = Result<BackendStatusView, ClientError>> + Send + 'static {
        let client = self.clone();
        let request = v1::WatchBackendRequest { id: id.to_string() };
        async_stream::stream! {
            let mut last: Option<BackendState> = None;
            let mut failures = 0u32;
            loop {
                let mut progressed = false;
                let ended = match client.backend_service().watch_backend(request.clone()).await {
                    Err(status) => ClientError::from(status),
                    Ok(response) => {
                        let mut stream = response.into_inner();
                        loop {
                            let message = match stream.message().await {
                                Ok(Some(message)) => message,
                                Ok(None) => {
                                    break ClientError::from(tonic::Status::unavailable(
                                        "the watch stream ended before TERMINATED",
                                    ));
                                }
                                Err(status) => break ClientError::from(status),
                            };
                            let Some(status) = message.status else {
                                yield Err(ClientError::InvalidResponse("WatchBackendResponse without a status".into()));
                                return;
                            };
                            let status = match BackendStatusView::from_proto(&status) {
                                Ok(status) => status,
                                Err(err) => {
                                    yield Err(err);
                                    return;
                                }
                            };
                            if last.is_some_and(|last| status.state <= last) {
                                continue;
                            }
                            last = Some(status.state);
                            progressed = true;
                            let terminated = status.is_terminated();
                            yield Ok(status);
                            if terminated {
                                return;
                            }
                        }
                    }
                };
                if progressed {
                    failures = 0;
                }
                failures += 1;
                if !matches!(next_step(&ended), Next::Rotate | Next::Stay) || failures >= retry.max_attempts {
                    yield Err(ended);
                    return;
                }
                let delay = retry.backoff(failures);
                tracing::debug!(error = %ended, ?delay, "backend watch stream ended; watching again");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

fn required_backend(backend: Option<&v1::Backend>, message: &str) -> Result<BackendView, ClientError> {
    BackendView::from_proto(
        backend.ok_or_else(|| ClientError::InvalidResponse(format!("{message} without a backend")))?,
    )
}
