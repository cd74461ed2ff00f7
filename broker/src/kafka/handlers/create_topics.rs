//! CreateTopics (key 19).

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use kafka_protocol::ResponseError as E;

use super::{str_bytes, Ctx, HandlerResult};
use crate::metadata::controller::ControllerOp;

/// ConfigSource values of DescribeConfigs / CreateTopics.
pub const SOURCE_TOPIC: i8 = 1;
pub const SOURCE_DEFAULT: i8 = 5;

pub async fn handle(ctx: &Ctx<'_>, body: &mut Bytes) -> HandlerResult {
    let req: CreateTopicsRequest = ctx.decode(body)?;
    let mut resp = CreateTopicsResponse::default();
    let node = ctx.shard.config.node_id;
    for t in req.topics {
        let name = t.name.0.to_string();
        let mut r = CreatableTopicResult::default();
        r.name = t.name.clone();
        r.num_partitions = -1;
        r.replication_factor = -1;
        let fail = |r: &mut CreatableTopicResult, code: E, msg: String| {
            r.error_code = code.code();
            ctx.note_error(r.error_code);
            r.error_message = Some(str_bytes(&msg));
        };
        let cluster = ctx.shard.config.cluster.as_ref();
        if cluster.is_none() && t.replication_factor > 1 {
            let msg = format!(
                "Replication factor {} is larger than the 1 available broker",
                t.replication_factor
            );
            fail(&mut r, E::InvalidReplicationFactor, msg);
            resp.topics.push(r);
            continue;
        }
        if t.replication_factor == 0 || t.replication_factor < -1 {
            let msg = format!(
                "Replication factor must be larger than 0, or -1 to use the default; got {}",
                t.replication_factor
            );
            fail(&mut r, E::InvalidReplicationFactor, msg);
            resp.topics.push(r);
            continue;
        }
        let replication_factor = match (cluster, t.replication_factor) {
            (Some(c), -1) => c.default_replication_factor,
            (Some(_), rf) => rf,
            (None, _) => 1,
        };
        if cluster.is_some() && !t.assignments.is_empty() {
            fail(
                &mut r,
                E::InvalidReplicaAssignment,
                "manual replica assignments are not supported in cluster mode yet".into(),
            );
            resp.topics.push(r);
            continue;
        }
        if t.assignments
            .iter()
            .any(|a| a.broker_ids.iter().any(|b| b.0 != node) || a.broker_ids.len() > 1)
        {
            fail(
                &mut r,
                E::InvalidReplicaAssignment,
                "replica assignments may name only this broker".into(),
            );
            resp.topics.push(r);
            continue;
        }
        let partitions = if !t.assignments.is_empty() {
            t.assignments.len() as i32
        } else if t.num_partitions == -1 {
            ctx.shard.config.num_partitions
        } else {
            t.num_partitions
        };
        let mut overrides = BTreeMap::new();
        let mut bad_config = None;
        for c in &t.configs {
            match &c.value {
                Some(v) => {
                    overrides.insert(c.name.to_string(), v.to_string());
                }
                None => {
                    bad_config = Some(format!(
                        "Null value not supported for topic config {}",
                        c.name.as_str()
                    ));
                }
            }
        }
        if let Some(msg) = bad_config {
            fail(&mut r, E::InvalidConfig, msg);
            resp.topics.push(r);
            continue;
        }
        let op = ControllerOp::CreateTopic {
            name: name.clone(),
            partitions,
            replication_factor,
            overrides,
            validate_only: req.validate_only,
        };
        match ctx.controller(op).await {
            Ok(()) => {
                r.num_partitions = partitions;
                r.replication_factor = replication_factor;
                let meta = ctx.shard.meta();
                if let Some(tm) = meta.topic(&name) {
                    r.topic_id = uuid::Uuid::from_bytes(tm.id);
                    r.configs = Some(
                        ctx.shard
                            .config
                            .topic_defaults
                            .describe(&tm.overrides)
                            .map(|(k, v, overridden)| {
                                let mut c = CreatableTopicConfigs::default();
                                c.name = str_bytes(k);
                                c.value = Some(str_bytes(&v));
                                c.config_source = if overridden {
                                    SOURCE_TOPIC
                                } else {
                                    SOURCE_DEFAULT
                                };
                                c
                            })
                            .collect(),
                    );
                }
            }
            Err(e) => {
                r.error_code = e.code;
                ctx.note_error(r.error_code);
                r.error_message = Some(str_bytes(&e.message));
            }
        }
        resp.topics.push(r);
    }
    Ok(ctx.respond(&resp))
}
