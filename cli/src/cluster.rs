//! `strom cluster info`: brokers (with the partitions each leads and holds), controller, topic
//! and partition counts (under-replicated and offline ones too) and the API versions spoken.

use kafka_protocol::messages::ApiKey;
use serde_json::json;

use super::{print_json, print_table, Client, Common, Format};

/// `strom cluster`: options and the action to run.
#[derive(clap::Args, Debug)]
pub struct ClusterCmd {
    /// Brokers, output format and timeout.
    #[command(flatten)]
    pub common: Common,
    /// What to show.
    #[command(subcommand)]
    pub action: ClusterAction,
}

/// The `strom cluster` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum ClusterAction {
    /// Brokers, controller, topic count and supported API versions.
    Info {
        /// Leave the API version table out of table output.
        #[arg(long)]
        no_api_versions: bool,
    },
}

/// Runs `strom cluster info`: prints the cluster's brokers, controller and API versions.
pub fn run(cmd: ClusterCmd) -> Result<(), String> {
    let ClusterAction::Info { no_api_versions } = cmd.action;
    let mut c = Client::connect(&cmd.common)?;
    let m = c.metadata(None)?;
    let topics = m.topics.iter().filter(|t| !t.is_internal).count();
    let internal = m.topics.len() - topics;
    let partitions: usize = m
        .topics
        .iter()
        .filter(|t| !t.is_internal)
        .map(|t| t.partitions.len())
        .sum();
    let cluster_id = m
        .cluster_id
        .as_ref()
        .map(|s| s.to_string())
        .unwrap_or_default();
    let controller = m.controller_id.0;
    // Over every partition, internal topics too: replicas and leaders per broker, partitions
    // whose ISR lacks a replica, partitions without a leader.
    let all = || m.topics.iter().flat_map(|t| t.partitions.iter());
    let under_replicated = all()
        .filter(|p| p.isr_nodes.len() < p.replica_nodes.len())
        .count();
    let offline = all().filter(|p| p.leader_id.0 < 0).count();
    let led = |node: i32| all().filter(|p| p.leader_id.0 == node).count();
    let held = |node: i32| {
        all()
            .filter(|p| p.replica_nodes.iter().any(|r| r.0 == node))
            .count()
    };
    let apis: Vec<(String, i16, i16)> = c
        .api_versions()
        .iter()
        .map(|(k, (lo, hi))| {
            (
                ApiKey::try_from(*k).map_or(format!("api {k}"), |a| format!("{a:?}")),
                *lo,
                *hi,
            )
        })
        .collect();
    match cmd.common.format {
        Format::Json => print_json(&json!({
            "cluster_id": cluster_id,
            "controller": controller,
            "brokers": m.brokers.iter().map(|b| json!({
                "node_id": b.node_id.0, "host": b.host.to_string(), "port": b.port, "rack": b.rack.as_ref().map(|r| r.to_string()),
            })).collect::<Vec<_>>(),
            "topics": topics,
            "internal_topics": internal,
            "partitions": partitions,
            "under_replicated_partitions": under_replicated,
            "offline_partitions": offline,
            "leaders": m.brokers.iter().map(|b| (b.node_id.0.to_string(), json!(led(b.node_id.0)))).collect::<serde_json::Map<_, _>>(),
            "replicas": m.brokers.iter().map(|b| (b.node_id.0.to_string(), json!(held(b.node_id.0)))).collect::<serde_json::Map<_, _>>(),
            "api_versions": apis.iter().map(|(n, lo, hi)| (n.clone(), json!({"min": lo, "max": hi}))).collect::<serde_json::Map<_, _>>(),
        })),
        Format::Table => {
            print_table(
                &[
                    "CLUSTER-ID",
                    "CONTROLLER",
                    "BROKERS",
                    "TOPICS",
                    "PARTITIONS",
                    "UNDER-REPLICATED",
                    "OFFLINE",
                ],
                &[vec![
                    cluster_id,
                    controller.to_string(),
                    m.brokers.len().to_string(),
                    topics.to_string(),
                    partitions.to_string(),
                    under_replicated.to_string(),
                    offline.to_string(),
                ]],
            );
            println!();
            print_table(
                &[
                    "ID",
                    "HOST",
                    "PORT",
                    "RACK",
                    "CONTROLLER",
                    "LEADERS",
                    "REPLICAS",
                ],
                &m.brokers
                    .iter()
                    .map(|b| {
                        vec![
                            b.node_id.0.to_string(),
                            b.host.to_string(),
                            b.port.to_string(),
                            b.rack.as_ref().map_or("-".into(), |r| r.to_string()),
                            if b.node_id.0 == controller {
                                "yes".into()
                            } else {
                                "no".into()
                            },
                            led(b.node_id.0).to_string(),
                            held(b.node_id.0).to_string(),
                        ]
                    })
                    .collect::<Vec<_>>(),
            );
            if !no_api_versions {
                println!();
                print_table(
                    &["API", "MIN-VERSION", "MAX-VERSION"],
                    &apis
                        .iter()
                        .map(|(n, lo, hi)| vec![n.clone(), lo.to_string(), hi.to_string()])
                        .collect::<Vec<_>>(),
                );
            }
        }
    }
    Ok(())
}
