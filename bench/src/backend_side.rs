//! `--kind backends`: the writer moves backends through their life, one state change per change
//! of the run, and the watchers read the change index from the backend's key and state.
//!
//! Change `i` (1-based) is step `(i-1) / round` of backend `(i-1) % round`: first every backend is
//! started (SCHEDULED), then every backend moves to LOADING, and so on to TERMINATED. Consecutive
//! changes are of different backends, so the writes in flight at once (at most the run's
//! `--burst-writers`, far fewer than a round) never move one backend twice at the same time, and
//! every write is a real, forward state change that the store records and watchers see.

use chrono::Utc;
use hangar::domain::{Backend, BackendKey, BackendState, BackendStatus, SpawnConfig};
use hangar::v1;
use hangar_server::store::{
    ActionPayload, ConnectOutcome, ConnectSpec, DroneLoad, DroneSlot, DynStore, EventOutcome, IssuedToken, SpawnPlan,
    new_action_id,
};
use prost::Message as _;
use std::sync::Mutex;
use std::time::Duration;

/// The states after SCHEDULED, in the order a backend goes through them.
const LIFE: [BackendState; 7] = [
    BackendState::Loading,
    BackendState::Starting,
    BackendState::Waiting,
    BackendState::Ready,
    BackendState::Terminating,
    BackendState::HardTerminating,
    BackendState::Terminated,
];

/// Changes per backend: its start and the states after it.
const STEPS: u32 = LIFE.len() as u32 + 1;

/// Key namespaces: measured changes, and warm-ups (which watchers count as change 0).
const MEASURED: &str = "bench";
const WARM: &str = "warm";

pub struct BackendWriter {
    store: DynStore,
    drone: String,
    round: u32,
    /// Backend ids by their number in the round, once started.
    ids: Mutex<Vec<Option<String>>>,
}

impl BackendWriter {
    pub fn new(store: DynStore, drone: String, events: u32) -> Self {
        let round = Self::round(events);
        BackendWriter { store, drone, round, ids: Mutex::new(vec![None; round as usize]) }
    }

    /// Backends a run of `events` changes goes round: enough for every change, and many more
    /// than the writes in flight.
    pub fn round(events: u32) -> u32 {
        events.div_ceil(STEPS).max(256)
    }

    /// The size of a backend event as watchers receive it (a started backend).
    pub async fn event_bytes(&self) -> anyhow::Result<usize> {
        let backend = self.spawn(WARM, "w0").await?;
        Ok(v1::Backend::from(&backend).encoded_len())
    }

    /// Warm-up change `k`: a backend started in the warm-up namespace.
    pub async fn warm_up(&self, k: u32) -> anyhow::Result<()> {
        self.spawn(WARM, &format!("w{k}")).await.map(drop)
    }

    /// Change `i` of the run.
    pub async fn change(&self, i: u32) -> anyhow::Result<()> {
        let (step, number) = ((i - 1) / self.round, (i - 1) % self.round);
        if step == 0 {
            let backend = self.spawn(MEASURED, &format!("b{number}")).await?;
            self.ids.lock().unwrap()[number as usize] = Some(backend.id);
            return Ok(());
        }
        let id = self.ids.lock().unwrap()[number as usize]
            .clone()
            .ok_or_else(|| anyhow::anyhow!("change {i}: backend {number} moves before it was started"))?;
        let state = LIFE[(step - 1) as usize];
        let status = BackendStatus::new(state, Utc::now());
        match self.store.apply_backend_event(&self.drone, &id, status, "10.1.2.3:31234", Utc::now()).await? {
            EventOutcome::Applied(_) => Ok(()),
            other => anyhow::bail!("change {i}: {state:?} of backend {number} was not applied: {other:?}"),
        }
    }

    async fn spawn(&self, namespace: &str, name: &str) -> anyhow::Result<Backend> {
        let wire = v1::SpawnConfig {
            executable: Some(v1::Executable {
                image: "ghcr.io/acme/document-editor:2.14.1".into(),
                env: [("MODE".to_string(), "edit".to_string()), ("LOG_LEVEL".to_string(), "info".to_string())].into(),
                container_port: 8080,
                ..Default::default()
            }),
            cluster: "bench".into(),
            pool: "general-purpose".into(),
            labels: [("team".to_string(), "sessions-platform".to_string()), ("app".to_string(), "editor".to_string())]
                .into(),
            max_idle: Some(hangar::domain::duration_to_proto(Duration::from_secs(600))),
            ..Default::default()
        };
        let config = SpawnConfig::from_proto(&wire, "spawn_config")
            .map_err(|violations| anyhow::anyhow!("bench spawn config: {violations:?}"))?;
        let lease = Duration::from_secs(3600);
        let now = Utc::now();
        let spec = ConnectSpec {
            key: Some(BackendKey { namespace: namespace.into(), name: name.into(), tag: "v2".into() }),
            spawn: Some(SpawnPlan {
                backend_id: Backend::new_id(),
                action_id: new_action_id(),
                config,
                candidates: vec![DroneSlot { node_id: self.drone.clone(), capacity: 1_000_000 }].into(),
                lease_duration: lease,
                action: ActionPayload::Spawn {
                    startup_timeout: Duration::from_secs(3600),
                    lease_duration: lease,
                    stop_grace: Duration::from_secs(10),
                    trace_context: Default::default(),
                },
                static_token_hash: None,
            }),
            token: IssuedToken {
                hash: Backend::new_id(),
                user: "bench".into(),
                auth: Default::default(),
                expires_at: now + chrono::Duration::hours(1),
            },
            now,
        };
        match self.store.connect_backend(spec, &first).await? {
            ConnectOutcome::Spawned(backend) => Ok(backend),
            other => anyhow::bail!("starting {namespace}/{name}: {other:?}"),
        }
    }
}

fn first(loads: &[DroneLoad]) -> Option<usize> {
    (!loads.is_empty()).then_some(0)
}

/// `WatchBackendsResponse` as the benchmark reads it: the key and the state, nothing else
/// decoded (like the node watchers, which read one number).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResponseIndex {
    #[prost(message, optional, tag = "1")]
    event: Option<EventIndex>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct EventIndex {
    #[prost(message, optional, tag = "2")]
    backend: Option<BackendIndex>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct BackendIndex {
    #[prost(message, optional, tag = "2")]
    key: Option<KeyIndex>,
    #[prost(message, optional, tag = "3")]
    status: Option<StatusIndex>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct KeyIndex {
    #[prost(string, tag = "1")]
    namespace: String,
    #[prost(string, tag = "2")]
    name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StatusIndex {
    #[prost(int32, tag = "1")]
    state: i32,
}

impl crate::hangar_side::WatchIndex for ResponseIndex {
    type Request = v1::WatchBackendsRequest;
    const PATH: &'static str = "/hangar.v1.BackendService/WatchBackends";
    /// Backends per round.
    type Context = u32;

    fn index(self, round: u32) -> Option<Option<u32>> {
        let backend = self.event.and_then(|e| e.backend)?;
        let key = backend.key?;
        if key.namespace != MEASURED {
            return Some(None);
        }
        let number: u32 = key.name.strip_prefix('b')?.parse().ok()?;
        // SCHEDULED is 1 on the wire, TERMINATED 8: the step is the state minus one.
        let step = u32::try_from(backend.status?.state).ok()?.checked_sub(1)?;
        Some(Some(step * round + number + 1))
    }
}
