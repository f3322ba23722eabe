//! What `hangar connect` and `hangar backends …` print.

use super::{OutputFormat, compact_duration, human_bytes, json, or_dash, relative_age, rfc3339, table, time_with_age};
use crate::cli::backends::shown_key;
use crate::{BackendStatusView, BackendView, Connection, SpawnSpec};
use chrono::{DateTime, Utc};
use hangar::domain::{BackendFilter, BackendKey, BackendState, DEFAULT_BACKEND_PORT};
use serde::Serialize;

/// `backends list`: a table (or the empty-list message) or `{"backends": [...]}`.
pub fn backend_list(
    backends: &[BackendView],
    filter: &BackendFilter,
    format: OutputFormat,
    now: DateTime<Utc>,
) -> String {
    #[derive(Serialize)]
    struct Listing<'a> {
        backends: &'a [BackendView],
    }
    match format {
        OutputFormat::Json => json(&Listing { backends }),
        OutputFormat::Table if backends.is_empty() => empty_backend_list(filter),
        OutputFormat::Table => backends_table(backends, now),
    }
}

/// One row per backend, columns aligned.
pub fn backends_table(backends: &[BackendView], now: DateTime<Utc>) -> String {
    let header = ["ID", "KEY", "STATE", "DRONE", "CLUSTER/POOL", "IMAGE", "AGE", "ENDED"];
    let rows = backends.iter().map(|b| {
        vec![
            b.id.clone(),
            key(b.key.as_ref()),
            b.state.to_string(),
            or_dash(&b.drone_id),
            format!("{}/{}", or_dash(&b.cluster), or_dash(&b.pool)),
            b.spawn_config.as_ref().map_or_else(|| "-".to_string(), |s| or_dash(&s.image)),
            b.created_at.map_or_else(|| "-".to_string(), |t| age(t, now)),
            if b.status.is_terminated() { termination_reason(&b.status) } else { "-".to_string() },
        ]
    });
    table(header.iter().map(|h| h.to_string()).collect(), rows.collect())
}

fn empty_backend_list(filter: &BackendFilter) -> String {
    if *filter == BackendFilter::default() {
        return "No backends.\nStart one with `hangar connect KEY --image IMAGE`.\n".to_string();
    }
    let mut parts = Vec::new();
    if !filter.states.is_empty() {
        parts.push(format!("state={}", filter.states.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")));
    }
    if let Some(drone) = &filter.drone_id {
        parts.push(format!("drone={drone}"));
    }
    if let Some(namespace) = &filter.key_namespace {
        parts.push(format!("namespace={namespace}"));
    }
    if let Some(cluster) = &filter.cluster {
        parts.push(format!("cluster={cluster}"));
    }
    format!("No backends match.\nFilter: {}\nList every backend with `hangar backends list`.\n", parts.join(" "))
}

/// `backends get`: the detail view or the backend as one JSON object.
pub fn backend(backend: &BackendView, format: OutputFormat, now: DateTime<Utc>) -> String {
    match format {
        OutputFormat::Json => json(backend),
        OutputFormat::Table => backend_detail(backend, now),
    }
}

/// `key: value` lines for one backend, its spawn configuration indented below.
pub fn backend_detail(b: &BackendView, now: DateTime<Utc>) -> String {
    let since = |t: Option<DateTime<Utc>>| t.map_or_else(|| "-".to_string(), |t| time_with_age(t, now));
    let mut fields: Vec<(&str, String)> = vec![
        ("ID", b.id.clone()),
        ("Key", key(b.key.as_ref())),
        ("State", format!("{} since {}", b.state, since(b.status.time))),
    ];
    if b.status.is_terminated() {
        fields.push(("Termination", termination(&b.status)));
    } else if !b.status.message.is_empty() {
        fields.push(("Message", b.status.message.clone()));
    }
    fields.extend([
        ("Drone", or_dash(&b.drone_id)),
        ("Address", if b.address.is_empty() { "- (not started)".to_string() } else { b.address.clone() }),
        ("Cluster", or_dash(&b.cluster)),
        ("Pool", or_dash(&b.pool)),
        ("Labels", pairs(b.labels.iter())),
        ("Created", since(b.created_at)),
        ("Last activity", since(b.last_activity_at)),
        ("Fencing token", if b.key.is_some() { b.fencing_token.to_string() } else { "- (no key)".to_string() }),
    ]);
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out: String = fields.iter().map(|(k, v)| format!("{:<width$} {v}\n", format!("{k}:"))).collect();
    match &b.spawn_config {
        Some(spec) => {
            out.push_str("Spawn config:\n");
            out.push_str(&spawn_detail(spec));
        }
        None => out.push_str("Spawn config: -\n"),
    }
    out
}

fn spawn_detail(spec: &SpawnSpec) -> String {
    let limit = |d: Option<std::time::Duration>| {
        d.map_or_else(|| "none".to_string(), |d| humantime::format_duration(d).to_string())
    };
    let r = spec.resources;
    let resources = [
        (r.cpu_millis != 0).then(|| format!("cpu {}m", r.cpu_millis)),
        (r.memory_bytes != 0).then(|| format!("memory {}", human_bytes(r.memory_bytes))),
        (r.pids != 0).then(|| format!("pids {}", r.pids)),
    ];
    let resources: Vec<String> = resources.into_iter().flatten().collect();
    let fields = [
        ("Image", spec.image.clone()),
        (
            "Command",
            if spec.command.is_empty() { "- (the image's ENTRYPOINT)".to_string() } else { argv(&spec.command) },
        ),
        (
            "Args",
            match (spec.args.is_empty(), spec.command.is_empty()) {
                (false, _) => argv(&spec.args),
                (true, true) => "- (the image's CMD)".to_string(),
                (true, false) => "- (none)".to_string(),
            },
        ),
        ("Env", pairs(spec.env.iter())),
        ("Pull", spec.pull_policy.map_or_else(|| "default".to_string(), |p| format!("{p:?}"))),
        ("Port", spec.container_port.map_or_else(|| format!("{DEFAULT_BACKEND_PORT} (default)"), |p| p.to_string())),
        ("Resources", if resources.is_empty() { "no limits".to_string() } else { resources.join(", ") }),
        ("Lifetime", limit(spec.lifetime_limit)),
        ("Max idle", limit(spec.max_idle)),
        ("Static token", if spec.static_token.is_some() { "set" } else { "none" }.to_string()),
    ];
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    fields.iter().map(|(k, v)| format!("  {:<width$} {v}\n", format!("{k}:"))).collect()
}

/// `backends terminate`: what was asked and where the backend is now.
pub fn terminated(backend: &BackendView, hard: bool, format: OutputFormat) -> String {
    if format == OutputFormat::Json {
        return json(backend);
    }
    if backend.state == BackendState::Terminated {
        return format!(
            "Backend {} has already ended: {}. Nothing to terminate.\n",
            backend.id,
            termination(&backend.status)
        );
    }
    let how = if hard { "Killing" } else { "Terminating" };
    let detail = if hard { "at once" } else { "SIGTERM, then a kill after the grace period" };
    format!(
        "{how} backend {} ({detail}). State: {}.\nFollow it with `hangar backends watch {}`.\n",
        backend.id, backend.state, backend.id
    )
}

/// `connect` without `--wait` (or its JSON document after `--wait`, `waited`).
pub fn connection(c: &Connection, asked: Option<&BackendKey>, format: OutputFormat, waited: bool) -> String {
    if format == OutputFormat::Json {
        return json(c);
    }
    let mut out = connect_header(c, asked);
    out.push_str(&format!("State: {}\n", c.state));
    out.push_str(&connect_ready(c));
    if !waited && c.state < BackendState::Ready {
        out.push_str(&format!(
            "It is not ready yet: follow it with `hangar backends watch {}`, or connect with --wait.\n",
            c.backend_id
        ));
    }
    out
}

/// `Spawned backend bk-1 for docs/doc-1@v2.` or `Found live backend …`.
pub fn connect_header(c: &Connection, asked: Option<&BackendKey>) -> String {
    let what = if c.spawned { "Spawned backend" } else { "Found live backend" };
    match shown_key(c, asked) {
        Some(k) => format!("{what} {} for {k}.\n", c.backend_id),
        None => format!("{what} {} (no key).\n", c.backend_id),
    }
}

/// The URL (and static token) of a connection.
pub fn connect_ready(c: &Connection) -> String {
    let mut out = format!("URL: {}\n", c.url);
    if let Some(expires) = c.token_expires_at {
        out.push_str(&format!("Token expires: {}\n", rfc3339(expires)));
    }
    if let Some(token) = &c.static_token {
        out.push_str(&format!("Static token: {token}\n"));
    }
    out
}

/// `  LOADING   0.3s`: a state and how long after the first status it came; with the
/// termination for TERMINATED, and the status's message, if any.
pub fn progress_line(status: &BackendStatusView, since: Option<DateTime<Utc>>) -> String {
    let elapsed = elapsed(status, since);
    let mut line = format!("  {:<9} {elapsed}", status.state.as_str());
    line.push_str(&explanation(status));
    line.truncate(line.trim_end().len());
    line.push('\n');
    line
}

/// One line of `backends watch`: `2026-03-01T12:00:01Z  LOADING           +0.3s`, or one JSON
/// object per line.
pub fn watch_line(id: &str, status: &BackendStatusView, since: Option<DateTime<Utc>>, format: OutputFormat) -> String {
    if format == OutputFormat::Json {
        #[derive(Serialize)]
        struct Line<'a> {
            backend_id: &'a str,
            #[serde(flatten)]
            status: &'a BackendStatusView,
        }
        let mut out = serde_json::to_string(&Line { backend_id: id, status }).expect("views serialize to JSON");
        out.push('\n');
        return out;
    }
    let time = status.time.map_or_else(|| "-".to_string(), rfc3339);
    let mut line = format!("{time}  {:<16}  +{}", status.state.as_str(), elapsed(status, since));
    line.push_str(&explanation(status));
    line.push('\n');
    line
}

/// What follows a state on a progress or watch line: `  <termination>` for TERMINATED,
/// `  <message>` for another state that has one, nothing otherwise.
fn explanation(status: &BackendStatusView) -> String {
    if status.is_terminated() {
        format!("  {}", termination(status))
    } else if !status.message.is_empty() {
        format!("  {}", status.message)
    } else {
        String::new()
    }
}

/// `EXITED (SOFT), exit code 3`, `IMAGE_PULL_FAILED: image app:1 not found: …`, or
/// `unknown reason`: the reason with the status's message, when it has one.
pub fn termination(status: &BackendStatusView) -> String {
    let mut out = termination_reason(status);
    if !status.message.is_empty() {
        out.push_str(&format!(": {}", status.message));
    }
    out
}

/// `EXITED (SOFT), exit code 3`, `IMAGE_PULL_FAILED`, or `unknown reason`, without the message
/// (for table cells).
pub fn termination_reason(status: &BackendStatusView) -> String {
    let mut out = status.termination_reason.map_or_else(|| "unknown reason".to_string(), |r| r.to_string());
    if let Some(kind) = status.termination_kind {
        out.push_str(&format!(" ({kind})"));
    }
    if let Some(code) = status.exit_code {
        out.push_str(&format!(", exit code {code}"));
    }
    out
}

fn elapsed(status: &BackendStatusView, since: Option<DateTime<Utc>>) -> String {
    let (Some(time), Some(since)) = (status.time, since) else {
        return "-".to_string();
    };
    let millis = (time - since).num_milliseconds().max(0);
    if millis < 60_000 { format!("{:.1}s", millis as f64 / 1000.0) } else { compact_duration((millis / 1000) as u64) }
}

fn age(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    relative_age(t, now).trim_end_matches(" ago").to_string()
}

fn key(key: Option<&BackendKey>) -> String {
    key.map_or_else(|| "-".to_string(), |k| k.to_string())
}

/// Arguments separated by spaces; one that is empty or holds whitespace or a quote is quoted, so
/// the line reads back as the list it is.
fn argv(args: &[String]) -> String {
    let shown: Vec<String> = args
        .iter()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
                format!("{a:?}")
            } else {
                a.clone()
            }
        })
        .collect();
    shown.join(" ")
}

fn pairs<'a>(pairs: impl Iterator<Item = (&'a String, &'a String)>) -> String {
    let joined: Vec<String> = pairs.map(|(k, v)| format!("{k}={v}")).collect();
    if joined.is_empty() { "<none>".to_string() } else { joined.join(", ") }
}

/// `backends watch` without an id: one line per event, as a table row or NDJSON. The snapshot
/// and re-list markers match `nodes watch`.
pub struct BackendWatchPrinter {
    format: OutputFormat,
    snapshots: u32,
    /// Widths of the ID, KEY and STATE columns so far.
    widths: [usize; 3],
}

/// One NDJSON line of `backends watch`.
#[derive(Serialize)]
struct BackendWatchLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backend: Option<&'a BackendView>,
}

impl BackendWatchPrinter {
    pub fn new(format: OutputFormat) -> Self {
        // `bk-` and a UUID in simple form, a short key, HARD_TERMINATING.
        BackendWatchPrinter { format, snapshots: 0, widths: [35, 12, 16] }
    }

    /// The lines for `event` received at `at` (wall-clock time); empty for reconnects, which go
    /// to stderr.
    pub fn event(&mut self, event: &crate::BackendWatchEvent, at: chrono::NaiveTime) -> String {
        use crate::WatchEvent as E;
        let (kind, backend, revision) = match event {
            E::Init => {
                self.snapshots += 1;
                return match self.format {
                    OutputFormat::Json => {
                        json_line(&BackendWatchLine { kind: "SNAPSHOT_START", revision: None, backend: None })
                    }
                    OutputFormat::Table if self.snapshots == 1 => String::new(),
                    OutputFormat::Table => "-- could not resume; listing again from scratch --\n".to_string(),
                };
            }
            E::InitDone { revision } => {
                return match self.format {
                    OutputFormat::Json => {
                        json_line(&BackendWatchLine { kind: "SNAPSHOT_END", revision: Some(*revision), backend: None })
                    }
                    OutputFormat::Table => format!("-- snapshot at revision {revision}; watching --\n"),
                };
            }
            E::Bookmark(revision) => {
                return match self.format {
                    OutputFormat::Json => {
                        json_line(&BackendWatchLine { kind: "BOOKMARK", revision: Some(*revision), backend: None })
                    }
                    OutputFormat::Table => format!("{}  {:<8}  rev {revision}\n", at.format("%H:%M:%S"), "BOOKMARK"),
                };
            }
            E::Reconnecting(_) => return String::new(),
            E::InitApply(backend) => ("ADDED", backend, None),
            E::Added(backend, revision) => ("ADDED", backend, Some(*revision)),
            E::Modified(backend, revision) => ("MODIFIED", backend, Some(*revision)),
            E::Removed(backend, revision) => ("REMOVED", backend, Some(*revision)),
        };
        if self.format == OutputFormat::Json {
            return json_line(&BackendWatchLine { kind, revision, backend: Some(backend) });
        }
        let cells = [
            backend.id.replace(['\n', '\t'], " "),
            key(backend.key.as_ref()).replace(['\n', '\t'], " "),
            backend.state.to_string(),
        ];
        for (width, cell) in self.widths.iter_mut().zip(&cells) {
            *width = (*width).max(cell.chars().count());
        }
        let [id, key, state] = &cells;
        let [id_width, key_width, state_width] = self.widths;
        let revision = revision.map_or_else(String::new, |r| format!("  rev {r}"));
        format!(
            "{}  {kind:<8}  {id:<id_width$}  {key:<key_width$}  {state:<state_width$}  {}{revision}\n",
            at.format("%H:%M:%S"),
            or_dash(&backend.drone_id)
        )
    }
}

fn json_line(line: &BackendWatchLine<'_>) -> String {
    let mut out = serde_json::to_string(line).expect("views serialize to JSON");
    out.push('\n');
    out
}
