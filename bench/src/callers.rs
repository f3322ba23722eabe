//! Callers of the real `BackendService`: `Connect` requests with distinct keys, and the reason a
//! refused call names (`google.rpc.ErrorInfo`, read with `hangar::error::error_info`).

use hangar::v1;
use std::collections::BTreeMap;
use std::time::Duration;

/// A Connect for key `bench/{name}` that spawns a backend on the `cluster` of the simulated
/// drones. The image is never run: simulated drones report READY without a runtime.
pub fn connect_request(cluster: &str, name: &str) -> v1::ConnectRequest {
    v1::ConnectRequest {
        key: Some(v1::BackendKey { namespace: "bench".into(), name: name.into(), tag: String::new() }),
        spawn_config: Some(v1::SpawnConfig {
            executable: Some(v1::Executable { image: "hangar-bench/backend:1".into(), ..Default::default() }),
            cluster: cluster.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The reason of a refusal (`POOL_FULL`, `NO_DRONE_AVAILABLE`, …), or the gRPC code when the
/// answer names none.
pub fn refusal(status: &tonic::Status) -> String {
    hangar::error::error_info(status).map(|(reason, _)| reason).unwrap_or_else(|| format!("{:?}", status.code()))
}

/// Refusals counted by reason.
#[derive(Default, Debug, Clone)]
pub struct Refusals(pub BTreeMap<String, u64>);

impl Refusals {
    pub fn add(&mut self, reason: String) {
        *self.0.entry(reason).or_default() += 1;
    }

    pub fn merge(&mut self, other: Refusals) {
        for (reason, n) in other.0 {
            *self.0.entry(reason).or_default() += n;
        }
    }

    pub fn count(&self, reasons: &[&str]) -> u64 {
        reasons.iter().map(|r| self.0.get(*r).copied().unwrap_or(0)).sum()
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn describe(&self) -> String {
        if self.0.is_empty() {
            return "none".into();
        }
        self.0.iter().map(|(reason, n)| format!("{reason} {n}")).collect::<Vec<_>>().join(", ")
    }
}

/// Counts the backends that ended KEY_EXPIRED, as the controller records them (ListBackends of
/// the TERMINATED ones, in pages of 1,000).
pub async fn key_expired_backends(channel: tonic::transport::Channel) -> anyhow::Result<(u64, u64)> {
    let mut client = v1::backend_service_client::BackendServiceClient::new(channel);
    let (mut expired, mut terminated) = (0, 0);
    let mut page_token = String::new();
    loop {
        let request = v1::ListBackendsRequest {
            filter: Some(v1::BackendFilter { states: vec![v1::BackendState::Terminated as i32], ..Default::default() }),
            page_size: 1000,
            page_token,
        };
        let page = client.list_backends(request).await?.into_inner();
        for backend in &page.backends {
            terminated += 1;
            if backend.status.as_ref().is_some_and(|s| s.termination_reason == v1::TerminationReason::KeyExpired as i32)
            {
                expired += 1;
            }
        }
        if page.next_page_token.is_empty() {
            return Ok((expired, terminated));
        }
        page_token = page.next_page_token;
    }
}

/// How many backends of `cluster` are in `state`, as the controller records them (ListBackends
/// in pages of 1,000).
pub async fn count_backends(
    channel: tonic::transport::Channel,
    cluster: &str,
    state: v1::BackendState,
) -> anyhow::Result<u64> {
    let mut client = v1::backend_service_client::BackendServiceClient::new(channel);
    let (mut count, mut page_token) = (0, String::new());
    loop {
        let filter = v1::BackendFilter { states: vec![state as i32], cluster: cluster.into(), ..Default::default() };
        let request = v1::ListBackendsRequest { filter: Some(filter), page_size: 1000, page_token };
        let page = client.list_backends(request).await?.into_inner();
        count += page.backends.len() as u64;
        if page.next_page_token.is_empty() {
            return Ok(count);
        }
        page_token = page.next_page_token;
    }
}

/// Durations as human text: `1.23 ms`.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}
