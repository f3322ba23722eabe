//! Everything the CLI prints: tables, detail views, JSON documents and error messages. Pure
//! functions of their inputs (the current time included), so tests can check the exact text.

use super::{CliError, OutputFormat};
use crate::{ClientError, NodeList, NodeWatchEvent, Reconnect, Resume};
use chrono::{DateTime, NaiveTime, SecondsFormat, Utc};
use hangar::domain::{Node, NodeFilter, NodeKind, NodeState};
use hangar::error::reason;
use serde::Serialize;

mod backends;
pub use backends::*;

/// Gap between table columns.
const COLUMN_GAP: &str = "   ";

/// `nodes list`: a table (or the empty-list message) or `{"revision": N, "nodes": [...]}`.
pub fn node_list(listing: &NodeList, filter: &NodeFilter, format: OutputFormat, now: DateTime<Utc>) -> String {
    match format {
        OutputFormat::Json => json(listing),
        OutputFormat::Table if listing.nodes.is_empty() => empty_node_list(filter),
        OutputFormat::Table => nodes_table(&listing.nodes, now),
    }
}

/// `nodes get`: the detail view or the node as one JSON object.
pub fn node(node: &Node, format: OutputFormat, now: DateTime<Utc>) -> String {
    match format {
        OutputFormat::Json => json(node),
        OutputFormat::Table => node_detail(node, now),
    }
}

/// `nodes drain`: what the drain means for the node, or the drained node as one JSON object.
pub fn drained(node: &Node, format: OutputFormat, now: DateTime<Utc>) -> String {
    if format == OutputFormat::Json {
        return json(node);
    }
    let mut out = format!(
        "Drained node {} ({}): no new backends will be placed on it. State: {}.\n",
        node.id, node.name, node.state
    );
    match node.drain_deadline {
        Some(deadline) => out.push_str(&format!(
            "Backends still running at {} ({}) will be soft-terminated.\n",
            rfc3339(deadline),
            relative_age(deadline, now)
        )),
        None => out.push_str("Its running backends keep running; pass --deadline to terminate them after a while.\n"),
    }
    out.push_str(&format!("Undo with `hangar nodes undrain {}`.\n", node.id));
    out
}

/// `nodes undrain`: what the undrain means for the node, or the node as one JSON object.
pub fn undrained(node: &Node, format: OutputFormat) -> String {
    if format == OutputFormat::Json {
        return json(node);
    }
    let mut out = format!(
        "Undrained node {} ({}): new backends may be placed on it again. State: {}.\n",
        node.id, node.name, node.state
    );
    if node.state != NodeState::Ready {
        out.push_str(&format!(
            "It takes backends once it is attached and healthy again (READY); now it is {}.\n",
            node.state
        ));
    }
    out
}

/// `nodes watch` output, one line per event: aligned table rows, or one JSON object per line
/// (NDJSON). Columns keep their width from line to line and only grow when a wider value comes,
/// since a live table cannot be measured in advance.
#[derive(Debug)]
pub struct WatchPrinter {
    format: OutputFormat,
    snapshots: u32,
    /// Widths of the ID, NAME and STATE columns so far.
    widths: [usize; 3],
}

/// One NDJSON line of `nodes watch`.
#[derive(Serialize)]
struct WatchLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<&'a Node>,
}

impl WatchPrinter {
    pub fn new(format: OutputFormat) -> Self {
        // A UUID, a typical drone name, READY,DRAINING.
        WatchPrinter { format, snapshots: 0, widths: [36, 12, 9] }
    }

    /// The lines for `event` received at `at` (wall-clock time); empty for events that print
    /// nothing here (reconnects go to stderr, see [`watch_reconnect`]).
    pub fn event(&mut self, event: &NodeWatchEvent, at: NaiveTime) -> String {
        match self.format {
            OutputFormat::Json => self.json_line(event),
            OutputFormat::Table => self.table_line(event, at),
        }
    }

    fn json_line(&mut self, event: &NodeWatchEvent) -> String {
        let line = |kind, revision, node| WatchLine { kind, revision, node };
        let line = match event {
            NodeWatchEvent::Init => line("SNAPSHOT_START", None, None),
            NodeWatchEvent::InitApply(node) => line("ADDED", Some(node.revision), Some(node)),
            NodeWatchEvent::InitDone { revision } => line("SNAPSHOT_END", Some(*revision), None),
            NodeWatchEvent::Added(node, revision) => line("ADDED", Some(*revision), Some(node)),
            NodeWatchEvent::Modified(node, revision) => line("MODIFIED", Some(*revision), Some(node)),
            NodeWatchEvent::Removed(node, revision) => line("REMOVED", Some(*revision), Some(node)),
            NodeWatchEvent::Bookmark(revision) => line("BOOKMARK", Some(*revision), None),
            NodeWatchEvent::Reconnecting(_) => return String::new(),
        };
        let mut out = serde_json::to_string(&line).expect("domain types serialize to JSON");
        out.push('\n');
        out
    }

    fn table_line(&mut self, event: &NodeWatchEvent, at: NaiveTime) -> String {
        let time = at.format("%H:%M:%S");
        let (kind, node, revision) = match event {
            NodeWatchEvent::Init => {
                self.snapshots += 1;
                return if self.snapshots == 1 {
                    String::new()
                } else {
                    "-- could not resume; listing again from scratch --\n".to_string()
                };
            }
            NodeWatchEvent::InitDone { revision } => {
                return format!("-- snapshot at revision {revision}; watching --\n");
            }
            NodeWatchEvent::Bookmark(revision) => return format!("{time}  {:<8}  rev {revision}\n", "BOOKMARK"),
            NodeWatchEvent::Reconnecting(_) => return String::new(),
            NodeWatchEvent::InitApply(node) => ("ADDED", node, node.revision),
            NodeWatchEvent::Added(node, revision) => ("ADDED", node, *revision),
            NodeWatchEvent::Modified(node, revision) => ("MODIFIED", node, *revision),
            NodeWatchEvent::Removed(node, revision) => ("REMOVED", node, *revision),
        };
        let cells = [node.id.replace(['\n', '\t'], " "), node.name.replace(['\n', '\t'], " "), state(node)];
        for (width, cell) in self.widths.iter_mut().zip(&cells) {
            *width = (*width).max(cell.chars().count());
        }
        let [id, name, state] = &cells;
        let [id_width, name_width, state_width] = self.widths;
        format!(
            "{time}  {kind:<8}  {id:<id_width$}  {name:<name_width$}  {:<5}  {state:<state_width$}  rev {revision}\n",
            node.kind.as_str()
        )
    }
}

/// The stderr line of a reconnecting watch.
pub fn watch_reconnect(reconnect: &Reconnect) -> String {
    let delay = match reconnect.delay.as_millis() {
        ms if ms < 1000 => format!("{ms}ms"),
        ms => format!("{:.1}s", ms as f64 / 1000.0),
    };
    let cause = reconnect.cause.replace(['\n', '\r'], " ");
    match reconnect.resume {
        Resume::FromRevision(revision) => format!(
            "reconnecting from revision {revision} to {} in {delay} (stream ended: {cause})\n",
            reconnect.controller
        ),
        Resume::Relist => {
            format!("listing again from scratch at {} in {delay} (stream ended: {cause})\n", reconnect.controller)
        }
    }
}

/// A value as one pretty-printed JSON document with a trailing newline.
pub fn json<T: Serialize + ?Sized>(value: &T) -> String {
    let mut out = serde_json::to_string_pretty(value).expect("domain types serialize to JSON");
    out.push('\n');
    out
}

/// The node table, one row per node, columns aligned.
pub fn nodes_table(nodes: &[Node], now: DateTime<Utc>) -> String {
    let header =
        ["ID", "NAME", "KIND", "STATE", "CLUSTER", "POOL", "BACKENDS", "CPU", "MEMORY", "LAST HEARTBEAT", "VERSION"];
    let rows = nodes.iter().map(|n| {
        vec![
            n.id.clone(),
            n.name.clone(),
            n.kind.to_string(),
            state(n),
            n.cluster.clone(),
            n.pool.clone(),
            backends(n),
            cpu(n),
            memory(n),
            relative_age(n.last_heartbeat_at, now),
            or_dash(&n.version),
        ]
    });
    table(header.iter().map(|h| h.to_string()).collect(), rows.collect())
}

/// Columns padded to their widest cell; the last column is not padded.
pub fn table(header: Vec<String>, rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let last = row.len().saturating_sub(1);
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            let cell = cell.replace(['\n', '\t'], " ");
            if i == last {
                out.push_str(&cell);
            } else {
                out.push_str(&cell);
                out.push_str(&" ".repeat(width - cell.chars().count()));
                out.push_str(COLUMN_GAP);
            }
        }
        out.push('\n');
    }
    out
}

/// Says that nothing matched and which filter was applied, with what to try next.
pub fn empty_node_list(filter: &NodeFilter) -> String {
    if *filter == NodeFilter::default() {
        return "No nodes match.\nNo node has registered yet: start a drone with \
                `hangar-drone run --controller URL --name NAME`, or run `hangar-server dev`.\n"
            .to_string();
    }
    format!("No nodes match.\nFilter: {}\nList every node with `hangar nodes list`.\n", describe_filter(filter))
}

/// `kind=DRONE state=READY,DRAINING cluster=eu-1 label:zone=a`, or `none`.
pub fn describe_filter(filter: &NodeFilter) -> String {
    let join = |items: Vec<String>| items.join(",");
    let mut parts = Vec::new();
    if !filter.kinds.is_empty() {
        parts.push(format!("kind={}", join(filter.kinds.iter().map(|k| k.to_string()).collect())));
    }
    if !filter.states.is_empty() {
        parts.push(format!("state={}", join(filter.states.iter().map(|s| s.to_string()).collect())));
    }
    if let Some(cluster) = &filter.cluster {
        parts.push(format!("cluster={cluster}"));
    }
    if let Some(pool) = &filter.pool {
        parts.push(format!("pool={pool}"));
    }
    parts.extend(filter.labels.iter().map(|(k, v)| format!("label {k}={v}")));
    if parts.is_empty() { "none".to_string() } else { parts.join(" ") }
}

/// `key: value` lines for one node.
pub fn node_detail(node: &Node, now: DateTime<Utc>) -> String {
    let labels = if node.labels.is_empty() {
        "<none>".to_string()
    } else {
        node.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
    };
    let mut fields: Vec<(&str, String)> = vec![
        ("ID", node.id.clone()),
        ("Name", node.name.clone()),
        ("Kind", node.kind.to_string()),
        ("State", state(node)),
        ("Draining", if node.draining { "yes (no new backends, also after reconnects)" } else { "no" }.into()),
        ("Cluster", node.cluster.clone()),
        ("Pool", node.pool.clone()),
        ("Labels", labels),
        ("Version", or_dash(&node.version)),
        (
            "Controller",
            if node.controller_id.is_empty() { "- (not attached)".into() } else { node.controller_id.clone() },
        ),
        ("Registered", time_with_age(node.registered_at, now)),
        ("Last heartbeat", time_with_age(node.last_heartbeat_at, now)),
        ("Backends", backends(node)),
        ("CPU", cpu_detail(node)),
        ("Memory", memory(node)),
    ];
    if let Some(deadline) = node.drain_deadline {
        fields.push(("Drain deadline", time_with_age(deadline, now)));
    }
    fields.push(("Revision", node.revision.to_string()));
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    fields.iter().map(|(k, v)| format!("{:<width$} {v}\n", format!("{k}:"))).collect()
}

/// `error: …` (one line) and, when there is one, `hint: …` with the next step.
pub fn error(err: &CliError, controller: &str) -> String {
    let message = err.to_string().replace(['\n', '\r'], " ");
    let mut out = format!("error: {message}\n");
    if let Some(hint) = hint(err, controller) {
        out.push_str(&format!("hint: {hint}\n"));
    }
    out
}

fn hint(err: &CliError, controller: &str) -> Option<String> {
    let unreachable = |controller: &str| {
        format!(
            "is the controller running at {controller}? start one with `hangar-server dev`, or point \
             --controller (or HANGAR_CONTROLLER) at a running one"
        )
    };
    let err = match err {
        CliError::Usage(_) => return Some("`--help` after the command lists what each flag takes".to_string()),
        CliError::Terminated { id, status } => return Some(termination_hint(id, status)),
        CliError::WaitTimeout { id, .. } => {
            return Some(format!(
                "it may still become ready: follow it with `hangar backends watch {id}`, or wait longer with --timeout"
            ));
        }
        CliError::Client(err) => err,
    };
    let reason = err.reason();
    Some(match (err, reason.as_deref()) {
        (_, Some(reason::NO_DRONE_AVAILABLE)) => draining_hint(err).unwrap_or_else(|| {
            "no drone has room: start a drone with `hangar-drone run --controller URL --name NAME` or check \
             `hangar nodes list`"
                .to_string()
        }),
        (_, Some(reason::POOL_FULL)) => {
            let full = "every drone of the pool is full: terminate backends (`hangar backends list`) or add drones \
                        to the pool";
            match draining_hint(err) {
                Some(undrain) => format!("{full}; or {undrain}"),
                None => full.to_string(),
            }
        }
        (_, Some(reason::KEY_TAG_MISMATCH)) => "a live backend holds the key with another tag: connect with its \
                                                tag, or terminate it (`hangar backends list`, then `hangar \
                                                backends terminate ID`)"
            .to_string(),
        (_, Some(reason::BACKEND_NOT_FOUND)) => "list backends with `hangar backends list`; `hangar connect KEY \
                                                 --image IMAGE` starts one"
            .to_string(),
        (ClientError::Connect { address, detail }, _) if is_tls_failure(detail) => tls_hint(address),
        // A controller that refuses the client certificate says so after the handshake, on the
        // first call.
        (ClientError::Other(status), _)
            if is_tls_failure(&err.to_string()) && status.code() == tonic::Code::Unknown =>
        {
            tls_hint(controller)
        }
        (ClientError::Connect { address, .. }, _) => unreachable(address),
        (ClientError::Credentials(crate::CredentialsError::TlsOverPlainHttp { .. }), _) => {
            "pass --controller https://HOST:PORT, or drop the TLS options for a plain controller".to_string()
        }
        (ClientError::Credentials(_), _) => "check --token, --token-file, --tls-ca, --tls-cert and --tls-key (or \
                                             HANGAR_TOKEN, HANGAR_TOKEN_FILE, HANGAR_TLS_*); docs/security.md \
                                             shows how to make certificates"
            .to_string(),
        (ClientError::InvalidAddress { .. }, _) => {
            "pass --controller http://HOST:PORT (or set HANGAR_CONTROLLER)".to_string()
        }
        (ClientError::Unavailable { .. }, Some(reason::SHUTTING_DOWN)) => {
            "the controller is shutting down; try again in a moment or use another controller".to_string()
        }
        (ClientError::Unavailable { .. }, Some(reason::STORE_UNAVAILABLE)) => {
            "the controller cannot reach its database; check the database, then try again".to_string()
        }
        (ClientError::Unavailable { .. }, _) => unreachable(controller),
        (_, Some(reason::UNAUTHENTICATED)) => "this controller wants credentials: pass a token with --token-file \
                                               FILE (or HANGAR_TOKEN_FILE), or a client certificate with --tls-cert \
                                               and --tls-key; an operator issues them (docs/security.md)"
            .to_string(),
        (_, Some(reason::TOKEN_INVALID)) => "the controller does not know this token (mistyped, revoked, or from \
                                             another cluster): check --token/--token-file and HANGAR_TOKEN*"
            .to_string(),
        (_, Some(reason::CERTIFICATE_NOT_MAPPED)) => "the controller verified the client certificate but its \
                                                      auth file names no principal for it: ask an operator to add a \
                                                      [[certificate]] entry, or pass a token"
            .to_string(),
        (_, Some(reason::ROLE_NOT_ALLOWED)) => match err.metadata(hangar::error::metadata::REQUIRED_ROLE) {
            Some(role) => format!("ask an operator for credentials with role {role} or above"),
            None => "ask an operator for credentials with a role that includes this call".to_string(),
        },
        (_, Some(reason::RATE_LIMITED)) => "this caller sent requests faster than the controller's limit; wait \
                                            a moment and try again"
            .to_string(),
        (_, Some(reason::NODE_NOT_FOUND)) => "list nodes with `hangar nodes list`".to_string(),
        (_, Some(reason::NODE_NOT_DRONE)) => {
            "only drones can be drained; list them with `hangar nodes list --kind drone`".to_string()
        }
        (_, Some(reason::INVALID_PAGE_TOKEN | reason::PAGE_TOKEN_EXPIRED)) => {
            "list again from the first page".to_string()
        }
        (ClientError::InvalidArgument { .. }, _) => {
            "check the values above; `--help` lists what each flag takes".into()
        }
        (ClientError::InvalidResponse(_), _) => format!(
            "the controller may be newer than this client (hangar {}); upgrade the CLI",
            env!("CARGO_PKG_VERSION")
        ),
        (ClientError::Other(status), _) if status.code() == tonic::Code::DeadlineExceeded => {
            "the controller did not answer in time; is it overloaded or cut off from its database?".to_string()
        }
        (ClientError::Other(status), _) if status.code() == tonic::Code::Unimplemented => {
            "the controller does not offer this call; is it older than this client?".to_string()
        }
        _ => return None,
    })
}

/// Whether a connection failed in the TLS handshake rather than for want of a listener.
fn is_tls_failure(detail: &str) -> bool {
    ["certificate", "tls", "handshake", "alert"].iter().any(|word| detail.to_lowercase().contains(word))
}

fn tls_hint(controller: &str) -> String {
    format!(
        "the TLS handshake with {controller} failed: --tls-ca must name the CA that signed the controller's \
         certificate, and a controller that requires client certificates needs --tls-cert and --tls-key from \
         its client CA (docs/security.md)"
    )
}

/// When the pool has draining drones (NO_DRONE_AVAILABLE, POOL_FULL metadata): how to find and
/// undrain them.
fn draining_hint(err: &ClientError) -> Option<String> {
    use hangar::error::metadata;
    let draining: u32 = err.metadata(metadata::DRAINING)?.parse().ok().filter(|n| *n > 0)?;
    let mut list = "hangar nodes list --kind drone --state draining".to_string();
    for (flag, key) in [("--cluster", metadata::CLUSTER), ("--pool", metadata::POOL)] {
        if let Some(value) = err.metadata(key).filter(|v| !v.is_empty()) {
            list.push_str(&format!(" {flag} {value}"));
        }
    }
    let (noun, verb, them) = if draining == 1 { ("drone", "is", "it") } else { ("drones", "are", "them") };
    Some(format!(
        "{draining} {noun} of the pool {verb} draining: find {them} with `{list}`, then `hangar nodes undrain \
         NODE_ID` lets {them} take backends again"
    ))
}

fn termination_hint(id: &str, status: &crate::BackendStatusView) -> String {
    use hangar::domain::TerminationReason as R;
    let why = match status.termination_reason {
        Some(R::ImagePullFailed) => "check the image name and that its drone can pull it (see --pull); ",
        Some(R::StartupTimeout) => {
            "it did not answer HTTP on its port in time; check --port and that it listens on $PORT; "
        }
        Some(R::Exited) => "it exited by itself; check its command and its logs on the drone; ",
        Some(R::External) => "someone terminated it; ",
        _ => "",
    };
    format!("{why}see `hangar backends get {id}`")
}

/// Human units of bytes in powers of 1024: `512B`, `1.5KiB`, `15.6GiB`, `512MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value < 100.0 { format!("{value:.1}{}", UNITS[unit]) } else { format!("{value:.0}{}", UNITS[unit]) }
}

/// How long ago `then` was: `3s ago`, `4m12s ago`, `2h ago`, `3d ago`; `just now` under a
/// second; `in 10m` for a future time; `never` for the zero timestamp (no heartbeat yet).
pub fn relative_age(then: DateTime<Utc>, now: DateTime<Utc>) -> String {
    if then == DateTime::<Utc>::UNIX_EPOCH {
        return "never".to_string();
    }
    let seconds = (now - then).num_seconds();
    match seconds {
        0 => "just now".to_string(),
        s if s > 0 => format!("{} ago", compact_duration(s.unsigned_abs())),
        s => format!("in {}", compact_duration(s.unsigned_abs())),
    }
}

/// `45s`, `4m12s` (under 10 minutes), `37m`, `5h3m` (under 10 hours), `14h`, `3d`.
pub fn compact_duration(seconds: u64) -> String {
    let (m, h, d) = (60, 3600, 86400);
    match seconds {
        s if s < m => format!("{s}s"),
        s if s < 10 * m && s % m != 0 => format!("{}m{}s", s / m, s % m),
        s if s < h => format!("{}m", s / m),
        s if s < 10 * h && (s % h) / m != 0 => format!("{}h{}m", s / h, (s % h) / m),
        s if s < d => format!("{}h", s / h),
        s => format!("{}d", s / d),
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn time_with_age(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    if t == DateTime::<Utc>::UNIX_EPOCH {
        return "never".to_string();
    }
    format!("{} ({})", rfc3339(t), relative_age(t, now))
}

/// The state, plus `,DRAINING` for a drained node that is currently UNHEALTHY or OFFLINE (it
/// comes back DRAINING, not READY), like kubectl's `Ready,SchedulingDisabled`.
fn state(node: &Node) -> String {
    if node.draining && node.state != NodeState::Draining {
        format!("{},DRAINING", node.state)
    } else {
        node.state.to_string()
    }
}

fn or_dash(s: &str) -> String {
    if s.is_empty() { "-".to_string() } else { s.to_string() }
}

/// `used/capacity`; proxies run no backends.
fn backends(node: &Node) -> String {
    match node.kind {
        NodeKind::Proxy => "-".to_string(),
        NodeKind::Drone => format!("{}/{}", node.backend_count, node.backend_capacity),
    }
}

/// Cores in use over cores of the host, `1.25/8`; `-` before the first heartbeat.
fn cpu(node: &Node) -> String {
    let r = &node.resources;
    if r.cpu_cores == 0 {
        return "-".to_string();
    }
    let used = format!("{:.2}", r.cpu_used_millis as f64 / 1000.0);
    let used = used.trim_end_matches('0').trim_end_matches('.');
    format!("{used}/{}", r.cpu_cores)
}

fn cpu_detail(node: &Node) -> String {
    match cpu(node).as_str() {
        "-" => "-".to_string(),
        cores => format!("{cores} cores"),
    }
}

/// `used/total` in binary units; `-` before the first heartbeat.
fn memory(node: &Node) -> String {
    let r = &node.resources;
    if r.memory_total_bytes == 0 {
        return "-".to_string();
    }
    format!("{}/{}", human_bytes(r.memory_used_bytes), human_bytes(r.memory_total_bytes))
}
