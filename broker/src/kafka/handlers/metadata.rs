//! Metadata (key 3): brokers, topics and partition leaders; creates requested topics when
//! `auto.create.topics.enable` and the request allow it.

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::ResponseError as E;

use super::{str_bytes, Ctx, HandlerResult};
use crate::metadata::controller::{validate_topic_name, ControllerOp};
use crate::metadata::TopicMeta;
use crate::quorum::{BrokerEndpoint, QuorumState};
use strom_cluster::controller::TopicRecord as ClusterTopic;

/// The brokers clients may use: on a single node, this one; in a cluster, every registered and
/// unfenced broker with its client listener (this one alone until the controller's view has
/// any, so a client always gets somewhere to connect).
pub fn brokers(ctx: &Ctx<'_>) -> Vec<BrokerEndpoint> {
    let c = &ctx.shard.config;
    let this = BrokerEndpoint {
        node_id: c.node_id,
        host: c.advertised_host.clone(),
        port: u16::try_from(c.advertised_port).unwrap_or(0),
        rack: c.cluster.as_ref().and_then(|s| s.rack.clone()),
    };
    let (Some(view), Some(settings)) = (&ctx.shard.quorum, &c.cluster) else {
        return vec![this];
    };
    let live = view.load().live_brokers(&settings.client_listener);
    if live.is_empty() {
        vec![this]
    } else {
        live
    }
}

/// The node id Metadata and DescribeCluster give as the controller: this node on a single
/// node; in a cluster the active controller, or -1 while there is none.
pub fn controller_id(ctx: &Ctx<'_>) -> i32 {
    match &ctx.shard.quorum {
        Some(view) => view.load().controller_id(),
        None => ctx.shard.config.node_id,
    }
}

fn broker_entry(b: &BrokerEndpoint) -> MetadataResponseBroker {
    let mut out = MetadataResponseBroker::default();
    out.node_id = BrokerId(b.node_id);
    out.host = str_bytes(&b.host);
    out.port = i32::from(b.port);
    out.rack = b.rack.as_deref().map(str_bytes);
    out
}

/// With no authorizer, every operation a resource supports is allowed; Kafka reports them as
/// bit sets (bit n = AclOperation n). Topic: READ, WRITE, CREATE, DELETE, ALTER, DESCRIBE,
/// DESCRIBE_CONFIGS, ALTER_CONFIGS.
pub const TOPIC_OPERATIONS_ALL: i32 = 0xdf8;
/// Cluster: CREATE, ALTER, DESCRIBE, CLUSTER_ACTION, DESCRIBE_CONFIGS, ALTER_CONFIGS,
/// IDEMPOTENT_WRITE.
pub const CLUSTER_OPERATIONS_ALL: i32 = 0x1fa0;

pub fn topic_entry(ctx: &Ctx<'_>, t: &TopicMeta) -> MetadataResponseTopic {
    let node = BrokerId(ctx.shard.config.node_id);
    let mut r = topic_head(&t.name, t.id);
    r.partitions = t
        .partitions
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut e = MetadataResponsePartition::default();
            e.partition_index = i as i32;
            e.leader_id = node;
            e.leader_epoch = p.leader_epoch.0;
            e.replica_nodes = vec![node];
            e.isr_nodes = vec![node];
            e
        })
        .collect();
    r
}

/// In cluster mode, a topic as the controller quorum committed it (whether or not this node has
/// adopted it yet): its id, and every partition's leader (none: -1 with LEADER_NOT_AVAILABLE),
/// leader epoch, replicas, ISR, and the replicas on fenced brokers as offline. `None` when the
/// quorum has no such topic, and on a single node.
fn cluster_entry(ctx: &Ctx<'_>, name: &str) -> Option<MetadataResponseTopic> {
    let state = ctx.shard.quorum.as_ref()?.load();
    let record = state.image.topics.get(name)?;
    Some(cluster_topic(&state, name, record))
}

/// A topic entry without partitions: name, id, whether internal.
fn topic_head(name: &str, id: [u8; 16]) -> MetadataResponseTopic {
    let mut r = MetadataResponseTopic::default();
    r.name = Some(TopicName(str_bytes(name)));
    r.topic_id = uuid::Uuid::from_bytes(id);
    r.is_internal = name.starts_with("__");
    r.topic_authorized_operations = i32::MIN;
    r
}

fn cluster_topic(state: &QuorumState, name: &str, record: &ClusterTopic) -> MetadataResponseTopic {
    let mut r = topic_head(name, record.topic_id);
    let live = |n: &i32| state.image.brokers.get(n).is_some_and(|b| !b.fenced);
    r.partitions = record
        .partitions
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut e = MetadataResponsePartition::default();
            e.partition_index = i as i32;
            e.leader_id = BrokerId(if p.leader >= 0 && live(&p.leader) {
                p.leader
            } else {
                -1
            });
            if e.leader_id.0 < 0 {
                e.error_code = E::LeaderNotAvailable.code();
            }
            e.leader_epoch = p.leader_epoch;
            e.replica_nodes = p.replicas.iter().map(|&n| BrokerId(n)).collect();
            e.isr_nodes = p.isr.iter().map(|&n| BrokerId(n)).collect();
            e.offline_replicas = p
                .replicas
                .iter()
                .filter(|n| !live(n))
                .map(|&n| BrokerId(n))
                .collect();
            e
        })
        .collect();
    r
}

fn error_entry(name: &str, code: E) -> MetadataResponseTopic {
    let mut r = MetadataResponseTopic::default();
    r.name = Some(TopicName(str_bytes(name)));
    r.error_code = code.code();
    r.topic_authorized_operations = i32::MIN;
    r
}

pub async fn handle(ctx: &Ctx<'_>, body: &mut Bytes) -> HandlerResult {
    let req: MetadataRequest = ctx.decode(body)?;
    let config = &ctx.shard.config;
    // v0 had no way to ask for "all topics" but an empty list; v1+ uses null.
    let wanted: Option<Vec<(Option<String>, uuid::Uuid)>> = match req.topics {
        None => None,
        Some(ts) if ts.is_empty() && ctx.version == 0 => None,
        Some(ts) => Some(
            ts.into_iter()
                .map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id))
                .collect(),
        ),
    };
    // Before v4 every Metadata request allowed auto-creation.
    let allow_create =
        config.auto_create_topics && (ctx.version < 4 || req.allow_auto_topic_creation);
    let mut topics = Vec::new();
    match wanted {
        None => match &ctx.shard.quorum {
            Some(view) => {
                let state = view.load();
                topics.extend(
                    state
                        .image
                        .topics
                        .iter()
                        .map(|(name, t)| cluster_topic(&state, name, t)),
                );
            }
            None => {
                let meta = ctx.shard.meta();
                topics.extend(meta.topics.values().map(|t| topic_entry(ctx, t)));
            }
        },
        Some(list) => {
            let mut seen = BTreeMap::new();
            for (name, id) in list {
                let name = match name {
                    Some(n) => n,
                    None => match topic_name_by_id(ctx, id.as_bytes()) {
                        Some(t) => t,
                        None => {
                            let mut e = error_entry("", E::UnknownTopicId);
                            e.name = None;
                            e.topic_id = id;
                            topics.push(e);
                            continue;
                        }
                    },
                };
                if seen.insert(name.clone(), ()).is_some() {
                    continue;
                }
                topics.push(lookup_or_create(ctx, &name, allow_create).await);
            }
        }
    }
    if ctx.version >= 8 && req.include_topic_authorized_operations {
        for t in topics.iter_mut().filter(|t| t.error_code == 0) {
            t.topic_authorized_operations = TOPIC_OPERATIONS_ALL;
        }
    }
    let mut resp = MetadataResponse::default();
    if (8..=10).contains(&ctx.version) && req.include_cluster_authorized_operations {
        resp.cluster_authorized_operations = CLUSTER_OPERATIONS_ALL;
    }
    resp.brokers = brokers(ctx).iter().map(broker_entry).collect();
    resp.cluster_id = Some(str_bytes(&config.cluster_id));
    resp.controller_id = BrokerId(controller_id(ctx));
    for t in &topics {
        ctx.note_error(t.error_code);
    }
    resp.topics = topics;
    Ok(ctx.respond(&resp))
}

async fn lookup_or_create(ctx: &Ctx<'_>, name: &str, allow_create: bool) -> MetadataResponseTopic {
    if ctx.shard.quorum.is_some() {
        if let Some(entry) = cluster_entry(ctx, name) {
            return entry;
        }
    } else if let Some(t) = ctx.shard.meta().topic(name) {
        return topic_entry(ctx, t);
    }
    if validate_topic_name(name).is_err() {
        return error_entry(name, E::InvalidTopicException);
    }
    if !allow_create {
        return error_entry(name, E::UnknownTopicOrPartition);
    }
    let op = ControllerOp::CreateTopic {
        name: name.to_string(),
        partitions: ctx.shard.config.num_partitions,
        replication_factor: -1,
        overrides: BTreeMap::new(),
        validate_only: false,
    };
    match ctx.controller(op).await {
        Ok(()) => {}
        // Created concurrently by another request: fine.
        Err(e) if e.code == E::TopicAlreadyExists.code() => {}
        Err(e) => {
            tracing::warn!("auto-creating topic {name}: {}", e.message);
            let mut entry = error_entry(name, E::UnknownTopicOrPartition);
            entry.error_code = e.code;
            ctx.note_error(entry.error_code);
            return entry;
        }
    }
    if let Some(entry) = cluster_entry(ctx, name) {
        return entry;
    }
    match ctx.shard.meta().topic(name) {
        Some(t) => topic_entry(ctx, t),
        None => error_entry(name, E::LeaderNotAvailable),
    }
}

/// The name of the topic with this id: from the committed cluster metadata in cluster mode.
fn topic_name_by_id(ctx: &Ctx<'_>, id: &[u8; 16]) -> Option<String> {
    match &ctx.shard.quorum {
        Some(view) => view
            .load()
            .image
            .topics
            .iter()
            .find(|(_, t)| &t.topic_id == id)
            .map(|(name, _)| name.clone()),
        None => ctx.shard.meta().topic_by_id(id).map(|t| t.name.to_string()),
    }
}
