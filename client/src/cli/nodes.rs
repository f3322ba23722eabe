//! `hangar nodes …`

use super::{Cli, CliError, NodesCommand, NodesWatchArgs, render};
use crate::{ClientError, HangarClient, WatchEvent, WatchOptions};
use chrono::{Local, Utc};
use futures::{Stream, StreamExt};
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
            let node = client.get_node(&args.id).await?;
            Ok(render::node(&node, cli.output, Utc::now()))
        }
        NodesCommand::Drain(args) => {
            let client = cli.connect().await?;
            let node = client.drain_node(&args.id, args.deadline).await?;
            Ok(render::drained(&node, cli.output, Utc::now()))
        }
        NodesCommand::Undrain(args) => {
            let client = cli.connect().await?;
            let node = client.undrain_node(&args.id).await?;
            Ok(render::undrained(&node, cli.output))
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
