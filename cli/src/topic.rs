//! `strom topic create|list|describe|delete|alter-config|add-partitions`.

use std::collections::BTreeMap;

use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::{
    ApiKey, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
    CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest,
    DescribeConfigsResponse, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use serde_json::{json, Value};
use strom_client::code_name;
use strom_client::conn::{str_bytes, topic_name};

use super::client::topic_error;
use super::{key_value, print_json, print_table, Client, Common, Format};

/// Kafka's resource type for topics in the config APIs.
const RESOURCE_TOPIC: i8 = 2;
/// DescribeConfigs' config_source for a value set on the topic itself.
const SOURCE_TOPIC: i8 = 1;

/// `strom topic`: options and the action to run.
#[derive(clap::Args, Debug)]
pub struct TopicCmd {
    /// Brokers, output format and timeout.
    #[command(flatten)]
    pub common: Common,
    /// What to do with topics.
    #[command(subcommand)]
    pub action: TopicAction,
}

/// The `strom topic` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum TopicAction {
    /// Create topics.
    Create {
        /// Topic names.
        #[arg(required = true)]
        topics: Vec<String>,
        /// Partitions per topic (default: the broker's num.partitions).
        #[arg(short, long, default_value_t = -1, allow_negative_numbers = true)]
        partitions: i32,
        /// Replication factor (default: the broker's default.replication.factor).
        #[arg(short, long, default_value_t = -1, allow_negative_numbers = true)]
        replicas: i16,
        /// A topic config, e.g. cleanup.policy=compact; repeatable.
        #[arg(short, long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
        /// Succeed when a topic already exists.
        #[arg(long)]
        if_not_exists: bool,
    },
    /// List topics.
    List {
        /// Include internal topics.
        #[arg(short, long)]
        internal: bool,
    },
    /// Partitions, offsets, leaders and configs of a topic.
    Describe {
        /// Topic to describe.
        topic: String,
        /// Show every config, not only those set on the topic.
        #[arg(short, long)]
        all_configs: bool,
    },
    /// Delete topics.
    Delete {
        /// Topic names.
        #[arg(required = true)]
        topics: Vec<String>,
    },
    /// Set or remove topic configs.
    AlterConfig {
        /// Topic whose configs change.
        topic: String,
        /// Set KEY to VALUE; repeatable.
        #[arg(short, long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Remove KEY (back to the broker default); repeatable.
        #[arg(short, long = "delete", value_name = "KEY")]
        delete: Vec<String>,
    },
    /// Add partitions to a topic.
    AddPartitions {
        /// Topic to grow.
        topic: String,
        /// Partitions to add.
        #[arg(
            short,
            long,
            conflicts_with = "total",
            required_unless_present = "total"
        )]
        num: Option<i32>,
        /// The partition count to grow to.
        #[arg(short, long)]
        total: Option<i32>,
    },
}

/// Runs one `strom topic` action against the cluster and prints its outcome.
pub fn run(cmd: TopicCmd) -> Result<(), String> {
    let mut c = Client::connect(&cmd.common)?;
    let format = cmd.common.format;
    match cmd.action {
        TopicAction::Create {
            topics,
            partitions,
            replicas,
            config,
            if_not_exists,
        } => create(
            &mut c,
            format,
            &topics,
            partitions,
            replicas,
            &config,
            if_not_exists,
        ),
        TopicAction::List { internal } => list(&mut c, format, internal),
        TopicAction::Describe { topic, all_configs } => {
            describe(&mut c, format, &topic, all_configs)
        }
        TopicAction::Delete { topics } => delete(&mut c, format, &topics),
        TopicAction::AlterConfig { topic, set, delete } => {
            alter_config(&mut c, format, &topic, &set, &delete)
        }
        TopicAction::AddPartitions { topic, num, total } => {
            add_partitions(&mut c, format, &topic, num, total)
        }
    }
}

/// Prints per-topic outcomes and fails, naming the first failure, if any failed.
fn report(format: Format, rows: Vec<(String, Result<String, String>)>) -> Result<(), String> {
    match format {
        Format::Json => print_json(&Value::Array(
            rows.iter()
                .map(|(t, r)| match r {
                    Ok(s) => json!({"topic": t, "ok": true, "result": s}),
                    Err(e) => json!({"topic": t, "ok": false, "error": e}),
                })
                .collect(),
        )),
        Format::Table => print_table(
            &["TOPIC", "STATUS"],
            &rows
                .iter()
                .map(|(t, r)| {
                    vec![
                        t.clone(),
                        r.clone().unwrap_or_else(|e| format!("ERROR: {e}")),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    }
    let failed: Vec<&String> = rows.iter().filter_map(|(_, r)| r.as_ref().err()).collect();
    match failed.first() {
        None => Ok(()),
        Some(e) if failed.len() == 1 => Err((*e).clone()),
        Some(e) => Err(format!(
            "{} of {} topics failed; first: {e}",
            failed.len(),
            rows.len()
        )),
    }
}

fn error_text(
    topic: &str,
    code: i16,
    message: Option<&kafka_protocol::protocol::StrBytes>,
) -> String {
    let base = if code == 3 {
        topic_error(topic, code)
    } else {
        format!("topic {topic}: {}", code_name(code))
    };
    match message {
        Some(m) if !m.is_empty() => format!("{base}: {m}"),
        _ => base,
    }
}

fn create(
    c: &mut Client,
    format: Format,
    topics: &[String],
    partitions: i32,
    replicas: i16,
    config: &[String],
    if_not_exists: bool,
) -> Result<(), String> {
    let configs = config
        .iter()
        .map(|s| key_value(s))
        .collect::<Result<Vec<_>, _>>()?;
    let mut req = CreateTopicsRequest::default();
    req.timeout_ms = c.timeout.as_millis() as i32;
    req.topics = topics
        .iter()
        .map(|t| {
            let mut ct = CreatableTopic::default();
            ct.name = topic_name(t);
            ct.num_partitions = partitions;
            ct.replication_factor = replicas;
            ct.configs = configs
                .iter()
                .map(|(k, v)| {
                    let mut cc = CreatableTopicConfig::default();
                    cc.name = str_bytes(k);
                    cc.value = Some(str_bytes(v));
                    cc
                })
                .collect();
            ct
        })
        .collect();
    let controller = controller(c)?;
    let resp: CreateTopicsResponse =
        c.call(Some(controller), ApiKey::CreateTopics, (2, 5), &req)?;
    let rows = resp
        .topics
        .iter()
        .map(|t| {
            let name = t.name.to_string();
            let r = match t.error_code {
                0 => Ok("created".to_string()),
                36 if if_not_exists => Ok("exists".to_string()),
                36 => Err(format!("topic {name} already exists")),
                e => Err(error_text(&name, e, t.error_message.as_ref())),
            };
            (name, r)
        })
        .collect();
    report(format, rows)
}

/// The controller's node id (topic changes go there), or the bootstrap broker's.
fn controller(c: &mut Client) -> Result<i32, String> {
    let m = c.metadata(Some(&[]))?;
    let id = m.controller_id.0;
    Ok(if id >= 0 {
        id
    } else {
        m.brokers.first().map_or(-1, |b| b.node_id.0)
    })
}

fn list(c: &mut Client, format: Format, internal: bool) -> Result<(), String> {
    let m = c.metadata(None)?;
    let mut topics: Vec<(String, usize, usize, bool)> = m
        .topics
        .iter()
        .filter(|t| internal || !t.is_internal)
        .map(|t| {
            let replicas = t.partitions.first().map_or(0, |p| p.replica_nodes.len());
            (
                t.name.as_ref().map(|n| n.to_string()).unwrap_or_default(),
                t.partitions.len(),
                replicas,
                t.is_internal,
            )
        })
        .collect();
    topics.sort();
    match format {
        Format::Json => print_json(&Value::Array(
            topics.iter().map(|(n, p, r, i)| json!({"name": n, "partitions": p, "replicas": r, "internal": i})).collect(),
        )),
        Format::Table => print_table(
            &["NAME", "PARTITIONS", "REPLICAS"],
            &topics
                .iter()
                .map(|(n, p, r, i)| vec![if *i { format!("{n} (internal)") } else { n.clone() }, p.to_string(), r.to_string()])
                .collect::<Vec<_>>(),
        ),
    }
    Ok(())
}

fn describe(c: &mut Client, format: Format, topic: &str, all_configs: bool) -> Result<(), String> {
    let m = c.metadata(Some(&[topic.to_string()]))?;
    let t = m
        .topics
        .first()
        .ok_or_else(|| format!("topic {topic}: not in the Metadata response"))?;
    if t.error_code != 0 {
        return Err(topic_error(topic, t.error_code));
    }
    let mut parts = t.partitions.clone();
    parts.sort_by_key(|p| p.partition_index);
    let leaders: BTreeMap<i32, i32> = parts
        .iter()
        .map(|p| (p.partition_index, p.leader_id.0))
        .collect();
    let start = c.offsets(topic, &leaders, -2)?;
    let end = c.offsets(topic, &leaders, -1)?;

    let mut req = DescribeConfigsRequest::default();
    let mut res = DescribeConfigsResource::default();
    res.resource_type = RESOURCE_TOPIC;
    res.resource_name = str_bytes(topic);
    res.configuration_keys = None;
    req.resources = vec![res];
    let resp: DescribeConfigsResponse = c.call(None, ApiKey::DescribeConfigs, (1, 4), &req)?;
    let r = resp.results.first().ok_or("DescribeConfigs: no result")?;
    if r.error_code != 0 {
        return Err(error_text(topic, r.error_code, r.error_message.as_ref()));
    }
    let mut configs: Vec<(String, String, i8)> = r
        .configs
        .iter()
        .filter(|cfg| all_configs || cfg.config_source == SOURCE_TOPIC)
        .map(|cfg| {
            (
                cfg.name.to_string(),
                cfg.value
                    .as_ref()
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
                cfg.config_source,
            )
        })
        .collect();
    configs.sort();

    let id = t.topic_id.to_string();
    match format {
        Format::Json => print_json(&json!({
            "name": topic,
            "id": id,
            "internal": t.is_internal,
            "partitions": parts.iter().map(|p| json!({
                "partition": p.partition_index,
                "leader": p.leader_id.0,
                "leader_epoch": p.leader_epoch,
                "replicas": p.replica_nodes.iter().map(|n| n.0).collect::<Vec<_>>(),
                "isr": p.isr_nodes.iter().map(|n| n.0).collect::<Vec<_>>(),
                "log_start_offset": start.get(&p.partition_index),
                "high_watermark": end.get(&p.partition_index),
            })).collect::<Vec<_>>(),
            "configs": configs.iter().map(|(k, v, s)| (k.clone(), json!({"value": v, "source": source_name(*s)}))).collect::<serde_json::Map<_, _>>(),
        })),
        Format::Table => {
            print_table(
                &["NAME", "ID", "PARTITIONS", "INTERNAL"],
                &[vec![
                    topic.to_string(),
                    id,
                    parts.len().to_string(),
                    t.is_internal.to_string(),
                ]],
            );
            println!();
            print_table(
                &[
                    "PARTITION",
                    "LEADER",
                    "EPOCH",
                    "REPLICAS",
                    "ISR",
                    "LOG-START-OFFSET",
                    "HIGH-WATERMARK",
                ],
                &parts
                    .iter()
                    .map(|p| {
                        let nodes = |v: &[kafka_protocol::messages::BrokerId]| {
                            format!("{:?}", v.iter().map(|n| n.0).collect::<Vec<_>>())
                        };
                        vec![
                            p.partition_index.to_string(),
                            p.leader_id.0.to_string(),
                            p.leader_epoch.to_string(),
                            nodes(&p.replica_nodes),
                            nodes(&p.isr_nodes),
                            start
                                .get(&p.partition_index)
                                .map_or("-".into(), |o| o.to_string()),
                            end.get(&p.partition_index)
                                .map_or("-".into(), |o| o.to_string()),
                        ]
                    })
                    .collect::<Vec<_>>(),
            );
            if !configs.is_empty() {
                println!();
                print_table(
                    &["CONFIG", "VALUE", "SOURCE"],
                    &configs
                        .iter()
                        .map(|(k, v, s)| vec![k.clone(), v.clone(), source_name(*s).to_string()])
                        .collect::<Vec<_>>(),
                );
            }
        }
    }
    Ok(())
}

fn source_name(s: i8) -> &'static str {
    match s {
        1 => "topic",
        2 | 3 => "dynamic-broker",
        4 => "static-broker",
        5 => "default",
        _ => "unknown",
    }
}

fn delete(c: &mut Client, format: Format, topics: &[String]) -> Result<(), String> {
    let mut req = DeleteTopicsRequest::default();
    req.timeout_ms = c.timeout.as_millis() as i32;
    req.topic_names = topics.iter().map(|t| topic_name(t)).collect();
    let controller = controller(c)?;
    let resp: DeleteTopicsResponse =
        c.call(Some(controller), ApiKey::DeleteTopics, (1, 5), &req)?;
    let rows = resp
        .responses
        .iter()
        .map(|r| {
            let name = r.name.as_ref().map(|n| n.to_string()).unwrap_or_default();
            let res = match r.error_code {
                0 => Ok("deleted".to_string()),
                e => Err(error_text(&name, e, r.error_message.as_ref())),
            };
            (name, res)
        })
        .collect();
    report(format, rows)
}

fn alter_config(
    c: &mut Client,
    format: Format,
    topic: &str,
    set: &[String],
    delete: &[String],
) -> Result<(), String> {
    if set.is_empty() && delete.is_empty() {
        return Err("nothing to change: give --set KEY=VALUE or --delete KEY".into());
    }
    let mut configs = Vec::new();
    for s in set {
        let (k, v) = key_value(s)?;
        let mut a = AlterableConfig::default();
        a.name = str_bytes(&k);
        a.config_operation = 0; // SET
        a.value = Some(str_bytes(&v));
        configs.push(a);
    }
    for k in delete {
        let mut a = AlterableConfig::default();
        a.name = str_bytes(k);
        a.config_operation = 1; // DELETE
        configs.push(a);
    }
    let mut res = AlterConfigsResource::default();
    res.resource_type = RESOURCE_TOPIC;
    res.resource_name = str_bytes(topic);
    res.configs = configs;
    let mut req = IncrementalAlterConfigsRequest::default();
    req.resources = vec![res];
    let resp: IncrementalAlterConfigsResponse =
        c.call(None, ApiKey::IncrementalAlterConfigs, (0, 1), &req)?;
    let r = resp
        .responses
        .first()
        .ok_or("IncrementalAlterConfigs: no result")?;
    let res = match r.error_code {
        0 => Ok(format!("{} set, {} removed", set.len(), delete.len())),
        e => Err(error_text(topic, e, r.error_message.as_ref())),
    };
    report(format, vec![(topic.to_string(), res)])
}

fn add_partitions(
    c: &mut Client,
    format: Format,
    topic: &str,
    num: Option<i32>,
    total: Option<i32>,
) -> Result<(), String> {
    let current = c.leaders(topic)?.len() as i32;
    let count = match (num, total) {
        (Some(n), _) if n <= 0 => return Err(format!("--num must be positive, got {n}")),
        (Some(n), _) => current + n,
        (None, Some(t)) => t,
        (None, None) => unreachable!("clap requires --num or --total"),
    };
    let mut t = CreatePartitionsTopic::default();
    t.name = topic_name(topic);
    t.count = count;
    let mut req = CreatePartitionsRequest::default();
    req.topics = vec![t];
    req.timeout_ms = c.timeout.as_millis() as i32;
    let controller = controller(c)?;
    let resp: CreatePartitionsResponse =
        c.call(Some(controller), ApiKey::CreatePartitions, (0, 2), &req)?;
    let r = resp.results.first().ok_or("CreatePartitions: no result")?;
    let res = match r.error_code {
        0 => Ok(format!("{current} -> {count} partitions")),
        e => Err(error_text(topic, e, r.error_message.as_ref())),
    };
    report(format, vec![(topic.to_string(), res)])
}
