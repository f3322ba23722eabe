//! When a node counts as UNHEALTHY or OFFLINE, and how often heartbeats reach the store.

use std::time::Duration;

/// Liveness timings (docs/design/nodes-and-watch.md#liveness). Heartbeats are held in memory by
/// the controller that holds a node's stream; the store only sees state changes and a refresh
/// every `refresh_interval` (the Kubernetes node-lease lesson: a write per heartbeat does not scale).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessConfig {
    /// How often nodes are asked to heartbeat.
    pub heartbeat_interval: Duration,
    /// Without a heartbeat for this long, an attached node turns UNHEALTHY.
    pub unhealthy_after: Duration,
    /// Without a heartbeat for this long, the stream is closed and the node turns OFFLINE.
    pub offline_after: Duration,
    /// How often the last heartbeat time and resource figures of attached nodes are written to
    /// the store (and so reach watchers as one MODIFIED event per node at most this often).
    pub refresh_interval: Duration,
    /// How long a node's first message (its Hello) may take.
    pub hello_timeout: Duration,
    /// The controller lists the drones with pending actions this often and wakes their sessions
    /// even when no commit named them: the floor under a missed wake-up, never the normal path
    /// (one store read per interval for the whole controller; each session also reads on its
    /// own, once per 12 intervals).
    pub session_poll: Duration,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        LivenessConfig {
            heartbeat_interval: Duration::from_secs(5),
            unhealthy_after: Duration::from_secs(15),
            offline_after: Duration::from_secs(30),
            refresh_interval: Duration::from_secs(30),
            hello_timeout: Duration::from_secs(10),
            session_poll: Duration::from_secs(5),
        }
    }
}

impl LivenessConfig {
    /// A node whose stored heartbeat is older than this is held by a controller that is gone: no
    /// live controller would have let it age past `offline_after` plus one refresh.
    pub fn stale_after(&self) -> Duration {
        self.offline_after + self.refresh_interval + self.heartbeat_interval
    }

    /// Timings scaled down for tests: heartbeat every `tick`, UNHEALTHY after 3 ticks, OFFLINE
    /// after 6, refresh every 4.
    pub fn fast(tick: Duration) -> Self {
        LivenessConfig {
            heartbeat_interval: tick,
            unhealthy_after: tick * 3,
            offline_after: tick * 6,
            refresh_interval: tick * 4,
            hello_timeout: tick * 20,
            session_poll: Duration::from_secs(5),
        }
    }
}
