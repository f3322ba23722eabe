//! `hangar nodes …`

use super::{Cli, CliError, NodesCommand, render};
use crate::HangarClient;
use chrono::Utc;

pub(super) async fn execute(cli: &Cli, command: &NodesCommand) -> Result<String, CliError> {
    match command {
        NodesCommand::List(args) => {
            // Checked before connecting, so a usage mistake is reported as one.
            let filter = args.filter.to_filter().map_err(CliError::Usage)?;
            let client = HangarClient::connect(&cli.controller).await?;
            let listing = client.list_all_nodes(&filter).await?;
            Ok(render::node_list(&listing, &filter, cli.output, Utc::now()))
        }
        NodesCommand::Get(args) => {
            let client = HangarClient::connect(&cli.controller).await?;
            let node = client.get_node(&args.id).await?;
            Ok(render::node(&node, cli.output, Utc::now()))
        }
        NodesCommand::Drain(args) => {
            let client = HangarClient::connect(&cli.controller).await?;
            let node = client.drain_node(&args.id, args.deadline).await?;
            Ok(render::drained(&node, cli.output, Utc::now()))
        }
    }
}
