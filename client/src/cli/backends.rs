//! `hangar connect` and `hangar backends …`

use super::{BackendIdArgs, BackendsCommand, BackendsWatchArgs, Cli, CliError, ConnectArgs, OutputFormat, render};
use crate::{ClientError, ConnectRequest, Connection, HangarClient, SpawnSpec, WatchOptions};
use chrono::Utc;
use futures::StreamExt;
use hangar::domain::{BackendFilter, BackendKey, BackendState, ResourceLimits};
use hangar::error::reason;
use std::io::Write;

/// Namespace of a key typed without one.
const DEFAULT_NAMESPACE: &str = "default";

pub(super) async fn execute(cli: &Cli, command: &BackendsCommand) -> Result<String, CliError> {
    match command {
        BackendsCommand::List(args) => {
            // Checked before connecting, so a usage mistake is reported as one.
            let filter = args.to_filter().map_err(CliError::Usage)?;
            let client = cli.connect().await?;
            let backends = client.list_all_backends(&filter).await?;
            Ok(render::backend_list(&backends, &filter, cli.output, Utc::now()))
        }
        BackendsCommand::Get(args) => {
            let client = cli.connect().await?;
            let backend = by_id_or_key(&client, &args.id, async |id| client.get_backend(id).await).await?;
            Ok(render::backend(&backend, cli.output, Utc::now()))
        }
        BackendsCommand::Watch(args) => {
            let Some(id) = &args.id else {
                return Err(CliError::Usage(
                    "`hangar backends watch` without an id runs until interrupted; drive it with `cli::watch_backends`"
                        .to_string(),
                ));
            };
            if args.has_filter() {
                return Err(CliError::Usage("filter flags watch every backend; leave out the id".to_string()));
            }
            let mut out = Vec::new();
            watch_backend(cli, &BackendIdArgs { id: id.clone() }, &mut out).await?;
            Ok(String::from_utf8_lossy(&out).into_owned())
        }
        BackendsCommand::Terminate(args) => {
            let client = cli.connect().await?;
            let terminate = async |id: &str| client.terminate_backend(id, args.hard).await;
            let backend = by_id_or_key(&client, &args.id, terminate).await?;
            Ok(render::terminated(&backend, args.hard, cli.output))
        }
    }
}

impl ConnectArgs {
    /// The Connect call these flags ask for; an error is a usage mistake clap cannot see.
    pub fn to_request(&self) -> Result<ConnectRequest, String> {
        let mut request = self.keyed_request()?;
        request.user = self.user.clone().unwrap_or_default();
        for (name, value) in &self.claim {
            if let Some(previous) = request.auth.insert(name.clone(), value.clone())
                && previous != *value
            {
                return Err(format!("--claim {name} is given twice ({name}={previous} and {name}={value}); give one"));
            }
        }
        Ok(request)
    }

    fn keyed_request(&self) -> Result<ConnectRequest, String> {
        let spawn = self.spawn_spec()?;
        if self.no_key {
            let spawn = spawn.ok_or("--no-key needs --image: a keyless backend is always started")?;
            return Ok(ConnectRequest::keyless(spawn));
        }
        let key = self.key.as_ref().ok_or("give a KEY (NAME, NS/NAME or NS/NAME@TAG), or --no-key")?;
        let namespace = merge("namespace", key.namespace.as_deref(), self.namespace.as_deref())?
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
        let tag = merge("tag", key.tag.as_deref(), self.tag.as_deref())?.unwrap_or_default();
        let mut request = ConnectRequest::key(namespace, key.name.clone(), tag);
        request.spawn = spawn;
        Ok(request)
    }

    fn spawn_spec(&self) -> Result<Option<SpawnSpec>, String> {
        let Some(image) = self.image.as_deref() else {
            let spawn_flags = [
                ("--env", !self.env.is_empty()),
                ("--command", self.command.is_some()),
                ("--arg", !self.args.is_empty()),
                ("arguments after --", !self.trailing_args.is_empty()),
                ("--port", self.port.is_some()),
                ("--cpu-millis", self.cpu_millis.is_some()),
                ("--memory", self.memory.is_some()),
                ("--pids", self.pids.is_some()),
                ("--cluster", self.cluster.is_some()),
                ("--pool", self.pool.is_some()),
                ("--label", !self.label.is_empty()),
                ("--lifetime", self.lifetime.is_some()),
                ("--max-idle", self.max_idle.is_some()),
                ("--static-token", self.static_token.is_some()),
                ("--pull", self.pull.is_some()),
            ];
            if let Some((flag, _)) = spawn_flags.iter().find(|(_, given)| *given) {
                return Err(format!(
                    "{flag} describes a backend to start, which needs --image; without --image only a live \
                     backend of the key is returned"
                ));
            }
            return Ok(None);
        };
        if image.trim().is_empty() {
            return Err("--image is empty".to_string());
        }
        // clap refuses --arg together with `--`, so at most one of them is non-empty.
        let args = if self.trailing_args.is_empty() { &self.args } else { &self.trailing_args };
        let mut spec =
            SpawnSpec::new(image).command(self.command.clone()).args(args.clone()).resources(ResourceLimits {
                cpu_millis: self.cpu_millis.unwrap_or(0),
                memory_bytes: self.memory.unwrap_or(0),
                pids: self.pids.unwrap_or(0),
            });
        spec.env = self.env.iter().cloned().collect();
        spec.labels = self.label.iter().cloned().collect();
        spec.pull_policy = self.pull.map(Into::into);
        spec.container_port = self.port.map(u32::from);
        spec.cluster = self.cluster.clone().unwrap_or_default();
        spec.pool = self.pool.clone().unwrap_or_default();
        spec.lifetime_limit = self.lifetime;
        spec.max_idle = self.max_idle;
        spec.static_token = self.static_token.clone();
        Ok(Some(spec))
    }
}

/// A key part given both in KEY and as a flag must agree.
fn merge(what: &str, in_key: Option<&str>, flag: Option<&str>) -> Result<Option<String>, String> {
    match (in_key, flag) {
        (Some(a), Some(b)) if a != b => Err(format!("the key says {what} `{a}` but --{what} says `{b}`; give one")),
        (Some(a), _) => Ok(Some(a.to_string())),
        (None, b) => Ok(b.map(str::to_string)),
    }
}

/// `hangar connect`: the Connect call, then with `--wait` one progress line per state, flushed
/// as it comes, until READY. Ends with [`CliError::Terminated`] when the backend ends instead and
/// [`CliError::WaitTimeout`] after `--timeout`; what was printed until then stays printed.
pub async fn connect(cli: &Cli, args: &ConnectArgs, stdout: &mut dyn Write) -> Result<(), CliError> {
    let request = args.to_request().map_err(CliError::Usage)?;
    let client = cli.connect().await?;
    let connection = client.connect_backend(&request).await?;
    let key = request.key.as_ref();
    if !args.wait {
        write(stdout, &render::connection(&connection, key, cli.output, false));
        return Ok(());
    }
    if cli.output == OutputFormat::Table {
        write(stdout, &render::connect_header(&connection, key));
    }
    let last = match connection.state {
        BackendState::Ready | BackendState::Terminated => connection.status.clone(),
        _ => {
            let follow = follow_until_ready(&client, &connection.backend_id, cli.output, stdout);
            match tokio::time::timeout(args.timeout, follow).await {
                Ok(result) => result?,
                Err(_) => {
                    let state = client.get_backend(&connection.backend_id).await.map_or(connection.state, |b| b.state);
                    return Err(CliError::WaitTimeout {
                        id: connection.backend_id.clone(),
                        waited: args.timeout,
                        state,
                    });
                }
            }
        }
    };
    let done = Connection { state: last.state, status: last.clone(), ..connection };
    match cli.output {
        OutputFormat::Json => write(stdout, &render::connection(&done, key, OutputFormat::Json, true)),
        OutputFormat::Table if done.state == BackendState::Ready => write(stdout, &render::connect_ready(&done)),
        OutputFormat::Table => {}
    }
    if done.state == BackendState::Terminated {
        return Err(CliError::Terminated { id: done.backend_id, status: last });
    }
    Ok(())
}

/// Watches until READY or TERMINATED, printing progress lines in table mode; the last status.
async fn follow_until_ready(
    client: &HangarClient,
    id: &str,
    format: OutputFormat,
    stdout: &mut dyn Write,
) -> Result<crate::BackendStatusView, CliError> {
    let mut statuses = std::pin::pin!(client.watch_backend(id));
    let mut first_time = None;
    while let Some(status) = statuses.next().await {
        let status = status?;
        let since = *first_time.get_or_insert(status.time);
        if format == OutputFormat::Table {
            write(stdout, &render::progress_line(&status, since));
        }
        if matches!(status.state, BackendState::Ready | BackendState::Terminated) {
            return Ok(status);
        }
    }
    Err(crate::ClientError::InvalidResponse(format!("the watch of {id} ended before READY or TERMINATED")).into())
}

/// `hangar backends watch`: one line per status (NDJSON with `-o json`), flushed as it comes,
/// until TERMINATED. A closed stdout (`| head`) ends it quietly.
pub async fn watch_backend(cli: &Cli, args: &BackendIdArgs, stdout: &mut dyn Write) -> Result<(), CliError> {
    let client = cli.connect().await?;
    let mut id = args.id.clone();
    let mut first_time = None;
    'watch: loop {
        let mut statuses = std::pin::pin!(client.watch_backend(&id));
        while let Some(status) = statuses.next().await {
            let status = match status {
                // Not an id: a key, whose backend is watched instead (see `by_id_or_key`).
                Err(err) if first_time.is_none() && id == args.id && is_backend_not_found(&err) => {
                    id = key_instead_of_id(&client, &args.id, err).await?;
                    continue 'watch;
                }
                status => status?,
            };
            let since = *first_time.get_or_insert(status.time);
            let line = render::watch_line(&id, &status, since, cli.output);
            if stdout.write_all(line.as_bytes()).and_then(|()| stdout.flush()).is_err() {
                return Ok(());
            }
        }
        return Ok(());
    }
}

/// `call` on the backend `id_or_key` names: first as an id, as the API takes it (so the
/// controller's answer, a refusal of the caller's role say, comes first); when no backend has
/// that id and it reads as a key (NAME, NS/NAME or NS/NAME@TAG, namespace `default` without
/// one), on the key's live backend, or the latest it had when none is live. A call on an id no
/// backend has changes nothing, so making it twice is safe.
async fn by_id_or_key<T>(
    client: &HangarClient,
    id_or_key: &str,
    call: impl AsyncFn(&str) -> Result<T, ClientError>,
) -> Result<T, CliError> {
    match call(id_or_key).await {
        Err(err) if is_backend_not_found(&err) => Ok(call(&key_instead_of_id(client, id_or_key, err).await?).await?),
        result => Ok(result?),
    }
}

fn is_backend_not_found(err: &ClientError) -> bool {
    err.reason().as_deref() == Some(reason::BACKEND_NOT_FOUND)
}

/// After `not_found` for `id_or_key` as an id: the id of the backend it names as a key
/// ([`backend_of_key`]), or `not_found` saying it is neither.
async fn key_instead_of_id(client: &HangarClient, id_or_key: &str, not_found: ClientError) -> Result<String, CliError> {
    match backend_of_key(client, id_or_key).await? {
        Some(id) => Ok(id),
        None => Err(match not_found {
            ClientError::NotFound { reason, .. } => {
                ClientError::NotFound { reason, message: format!("no backend has the id or key {id_or_key:?}") }
            }
            other => other,
        }
        .into()),
    }
}

/// The id of the live backend of the key `text` names, or of the latest one it had; `None`
/// when `text` is not a key or no backend ever had it. Without @TAG any tag matches.
async fn backend_of_key(client: &HangarClient, text: &str) -> Result<Option<String>, CliError> {
    let Ok(key) = super::args::parse_key(text) else { return Ok(None) };
    let namespace = key.namespace.unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    // The filter matches a prefix of the name: the exact key is picked out below.
    let filter = BackendFilter {
        key_namespace: Some(namespace.clone()),
        key_prefix: Some(key.name.clone()),
        ..BackendFilter::default()
    };
    let backends = client.list_all_backends(&filter).await?;
    let of_key = backends.iter().filter(|backend| {
        backend.key.as_ref().is_some_and(|k| {
            k.namespace == namespace && k.name == key.name && key.tag.as_ref().is_none_or(|tag| *tag == k.tag)
        })
    });
    // At most one backend of a key is live; otherwise the one created last.
    let chosen = of_key.max_by_key(|backend| (backend.state.is_live(), backend.created_at));
    Ok(chosen.map(|backend| backend.id.clone()))
}

/// Progress output is best effort: a closed stdout must not turn a READY backend into an error.
fn write(stdout: &mut dyn Write, text: &str) {
    let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
}

/// The key a connection is shown with: the one asked for, else the backend's own.
pub(super) fn shown_key<'a>(connection: &'a Connection, asked: Option<&'a BackendKey>) -> Option<&'a BackendKey> {
    asked.or_else(|| connection.backend.as_ref().and_then(|b| b.key.as_ref()))
}

/// `hangar backends watch` without an id: one line per event on `stdout`, flushed as it comes;
/// reconnects on `stderr`. Returns `Ok` when `stop` completes (Ctrl-C) or stdout is closed
/// (`| head`), and the error when the watch cannot go on.
pub async fn watch_backends(
    cli: &Cli,
    args: &BackendsWatchArgs,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), CliError> {
    let filter = args.to_filter().map_err(CliError::Usage)?;
    let client = super::nodes::connect_watched(cli).await?;
    let options = WatchOptions { bookmark_interval: args.bookmark_interval, ..WatchOptions::default() };
    let events = client.watch_backends(filter, options);
    let mut printer = render::BackendWatchPrinter::new(cli.output);
    // A closed pipe ends the watch quietly, like `backends list | head` does.
    super::nodes::print_watch(events, stop, stdout, stderr, |event| printer.event(event, chrono::Local::now().time()))
        .await
}
