//! `hangar nodes …`

use super::{Cli, CliError, NodesCommand, NodesWatchArgs, render};
use crate::{ClientError, HangarClient, WatchEvent, WatchOptions};
use chrono::{Local, Utc};
use futures::{Stream, StreamExt};
use hangar::domain::{Node, NodeFilter, NodeKind};
use hangar::error::reason;
use std::future::Future;
use std::io::Write;

pub(super) async fn execute(cli: &Cli, command: &NodesCommand) -> Result<String, CliError> {
    match command {
        NodesCommand::List(args) => {
            // Checked before connecting, so a usage mistake is reported as one.
            let filter = args.filter.to_filter().map_err(CliError::Usage)?;
            let client = cli.connect().await?;
            let listing = client.list_all_nodes(&filter).await?;
            Ok(render::node_list(&listing, &filter, cli.output, Utc::now()))
        }
        NodesCommand::Watch(_) => {
            Err(CliError::Usage("`hangar nodes watch` runs until interrupted; drive it with `cli::watch`".to_string()))
        }
        NodesCommand::Get(args) => {
            let client = cli.connect().await?;
            let node = by_id_or_name(&client, &args.id, None, async |id| client.get_node(id).await).await?;
            Ok(render::node(&node, cli.output, Utc::now()))
        }
        NodesCommand::Drain(args) => {
            let client = cli.connect().await?;
            let drain = async |id: &str| client.drain_node(id, args.deadline).await;
            let node = by_id_or_name(&client, &args.id, Some(NodeKind::Drone), drain).await?;
            Ok(render::drained(&node, cli.output, Utc::now()))
        }
        NodesCommand::Undrain(args) => {
            let client = cli.connect().await?;
            let undrain = async |id: &str| client.undrain_node(id).await;
            let node = by_id_or_name(&client, &args.id, Some(NodeKind::Drone), undrain).await?;
            Ok(render::undrained(&node, cli.output))
        }
    }
}

fn is_node_not_found(err: &ClientError) -> bool {
    err.reason().as_deref() == Some(reason::NODE_NOT_FOUND)
}

/// The controller's NODE_NOT_FOUND for `id_or_name`, which was not a name either.
fn neither(err: ClientError, id_or_name: &str) -> ClientError {
    match err {
        ClientError::NotFound { reason, .. } => {
            ClientError::NotFound { reason, message: format!("no node has the id or name {id_or_name:?}") }
        }
        other => other,
    }
}

/// `call` on the node `id_or_name` names: first as an id, as the API takes it, so that an id
/// never resolves to another node named like it and the controller's answer (a refusal of the
/// caller's role, say) comes first; when no node has that id, on the one node with that name
/// ([`node_named`]). A call on an id no node has changes nothing, so making it twice is safe.
async fn by_id_or_name<T>(
    client: &HangarClient,
    id_or_name: &str,
    preferred: Option<NodeKind>,
    call: impl AsyncFn(&str) -> Result<T, ClientError>,
) -> Result<T, CliError> {
    match call(id_or_name).await {
        Err(err) if is_node_not_found(&err) => {
            let id = node_named(client, id_or_name, preferred).await?.ok_or_else(|| neither(err, id_or_name))?;
            Ok(call(&id).await?)
        }
        result => Ok(result?),
    }
}

/// The id of the one node named `name`, `None` when no node has that name, and a usage error
/// naming the candidates when several have it (a name is unique only within its cluster and
/// kind). Where several have it and exactly one of them is a `preferred` kind, that one: a drone
/// and a proxy may share a name, and only drones are drained. A lone node of another kind is
/// still returned, so that the controller says what is wrong with it (NODE_NOT_DRONE).
async fn node_named(
    client: &HangarClient,
    name: &str,
    preferred: Option<NodeKind>,
) -> Result<Option<String>, CliError> {
    let listing = client.list_all_nodes(&NodeFilter::default()).await?;
    let mut named: Vec<&Node> = listing.nodes.iter().filter(|node| node.name == name).collect();
    if named.len() > 1 && named.iter().filter(|node| Some(node.kind) == preferred).count() == 1 {
        named.retain(|node| Some(node.kind) == preferred);
    }
    match named.len() {
        0 => Ok(None),
        1 => Ok(named.pop().map(|node| node.id.clone())),
        _ => {
            let candidates: Vec<String> = named
                .iter()
                .map(|node| format!("  {}  ({} in cluster {:?})", node.id, node.kind.as_str(), node.cluster))
                .collect();
            Err(CliError::Usage(format!(
                "{} nodes are named {name:?}; give one of their ids:\n{}",
                named.len(),
                candidates.join("\n")
            )))
        }
    }
}

/// `hangar nodes watch`: one line per event on `stdout`, flushed as it comes; reconnects on
/// `stderr`. Returns `Ok` when `stop` completes (Ctrl-C) or stdout is closed (`| head`), and the
/// error when the watch cannot go on.
pub async fn watch(
    cli: &Cli,
    args: &NodesWatchArgs,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
    stop: impl Future<Output = ()>,
) -> Result<(), CliError> {
    let filter = args.filter.to_filter().map_err(CliError::Usage)?;
    let client = connect_watched(cli).await?;
    let options = WatchOptions { bookmark_interval: args.bookmark_interval, ..WatchOptions::default() };
    let events = client.watch_nodes(filter, options);
    let mut printer = render::WatchPrinter::new(cli.output);
    // A closed pipe ends the watch quietly, like `nodes list | head` does.
    print_watch(events, stop, stdout, stderr, |event| printer.event(event, Local::now().time())).await
}

/// Prints a watch until `stop` completes, stdout is closed or the watch fails: each event as
/// `render` writes it on `stdout`, flushed as it comes, and each reconnect on `stderr`. Shared by
/// `nodes watch` and `backends watch` without an id.
pub(super) async fn print_watch<T>(
    events: impl Stream<Item = Result<WatchEvent<T>, ClientError>>,
    stop: impl Future<Output = ()>,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
    mut render: impl FnMut(&WatchEvent<T>) -> String,
) -> Result<(), CliError> {
    let mut events = std::pin::pin!(events);
    let mut stop = std::pin::pin!(stop);
    loop {
        let event = tokio::select! {
            () = &mut stop => return Ok(()),
            event = events.next() => event,
        };
        match event {
            None => return Ok(()),
            Some(Err(err)) => return Err(err.into()),
            Some(Ok(WatchEvent::Reconnecting(reconnect))) => {
                let _ = stderr.write_all(render::watch_reconnect(&reconnect).as_bytes()).and_then(|()| stderr.flush());
            }
            Some(Ok(event)) => {
                if stdout.write_all(render(&event).as_bytes()).and_then(|()| stdout.flush()).is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// The client a watch runs on. `--controller` may list several URLs, comma-separated: the first
/// that answers is watched first and the stream resumes on the others in turn (the client's
/// failover), so a typo or a cluster that is entirely down is reported at once instead of as an
/// endless series of reconnects.
pub(super) async fn connect_watched(cli: &Cli) -> Result<HangarClient, CliError> {
    if cli.controller.split(',').all(|url| url.trim().is_empty()) {
        return Err(CliError::Usage("--controller is empty; expected http://HOST:PORT[,http://HOST:PORT…]".into()));
    }
    Ok(cli.connect().await?)
}
