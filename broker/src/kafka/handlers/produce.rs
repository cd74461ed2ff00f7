//! Produce (key 0): appends one record batch per partition on the owning shards.
//! acks=0 gets no response; acks=1 is answered after the local append; acks=all after the
//! append and, when `flush.on.ack` is set, after the batch is fdatasync'ed (group commit).
//! The test-only `test.fault.produce.drop.response.every` makes some requests close the
//! connection after their work instead of answering.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::produce_response::{
    NodeEndpoint, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{BrokerId, ProduceRequest, ProduceResponse};
use kafka_protocol::ResponseError as E;

use super::{str_bytes, Ctx, HandlerResult, Outcome};
use crate::ids::{PartitionId, ShardId};
use crate::shard::ops::{ProducePart, ProduceResult};
use crate::shard::{ShardOp, ShardReply};
use kafka_protocol::messages::produce_response::BatchIndexAndErrorMessage;

pub async fn handle(ctx: &Ctx<'_>, body: &mut Bytes) -> HandlerResult {
    let req: ProduceRequest = ctx.decode(body)?;
    let acks = req.acks;
    let meta = ctx.shard.meta();
    // Position of every partition in the response, and the work per owning shard.
    let mut slots: Vec<(usize, Vec<ProduceResult>)> = Vec::new();
    let mut per_shard: BTreeMap<ShardId, Vec<(usize, usize, ProducePart)>> = BTreeMap::new();
    for (ti, topic) in req.topic_data.iter().enumerate() {
        let name: Arc<str> = Arc::from(topic.name.0.as_str());
        let mut results = Vec::with_capacity(topic.partition_data.len());
        for (pi, part) in topic.partition_data.iter().enumerate() {
            let mut pending = ProduceResult {
                base_offset: -1,
                log_append_time_ms: -1,
                log_start_offset: -1,
                ..Default::default()
            };
            if !(-1..=1).contains(&acks) {
                pending.error = E::InvalidRequiredAcks.code();
            } else if let Some(leader) = super::led_elsewhere(ctx, &name, part.index) {
                pending.error = E::NotLeaderOrFollower.code();
                pending.current_leader = Some(leader);
            } else if let Some(owner) = meta.owner(&name, PartitionId(part.index)) {
                per_shard.entry(owner).or_default().push((
                    ti,
                    pi,
                    ProducePart {
                        topic: name.clone(),
                        partition: part.index,
                        records: part.records.clone(),
                        acks,
                        timeout_ms: req.timeout_ms,
                    },
                ));
            } else {
                pending.error = E::UnknownTopicOrPartition.code();
            }
            results.push(pending);
        }
        slots.push((ti, results));
    }
    let calls = per_shard.into_iter().map(|(shard_id, parts)| async move {
        let positions: Vec<(usize, usize)> = parts.iter().map(|(t, p, _)| (*t, *p)).collect();
        let work = parts.into_iter().map(|(_, _, p)| p).collect();
        (
            positions,
            ctx.call_owner(shard_id, ShardOp::Produce(work)).await,
        )
    });
    for (positions, reply) in futures::future::join_all(calls).await {
        let results = match reply {
            ShardReply::Produce(r) => r,
            _ => vec![
                ProduceResult {
                    error: E::NotLeaderOrFollower.code(),
                    base_offset: -1,
                    log_append_time_ms: -1,
                    log_start_offset: -1,
                    message: None,
                    record_errors: Vec::new(),
                    current_leader: None,
                };
                positions.len()
            ],
        };
        for ((t, p), r) in positions.into_iter().zip(results) {
            slots[t].1[p] = r;
        }
    }
    for (_, results) in &slots {
        for r in results {
            ctx.note_error(r.error);
        }
    }
    if acks == 0 {
        return Ok(Outcome::NoResponse);
    }
    if let Some(n) = drop_response(ctx) {
        tracing::debug!(
            "{}: fault injection: dropping the response to Produce request #{n} of this shard",
            ctx.peer
        );
        return Ok(Outcome::Close(format!(
            "fault injection: response to Produce request #{n} dropped"
        )));
    }
    let mut resp = ProduceResponse::default();
    let mut hinted = std::collections::BTreeSet::new();
    resp.responses = req
        .topic_data
        .iter()
        .zip(slots)
        .map(|(topic, (_, results))| {
            let mut t = TopicProduceResponse::default();
            t.name = topic.name.clone();
            t.partition_responses = topic
                .partition_data
                .iter()
                .zip(results)
                .map(|(part, r)| {
                    let mut p = PartitionProduceResponse::default();
                    p.index = part.index;
                    p.error_code = r.error;
                    p.base_offset = r.base_offset;
                    p.log_append_time_ms = r.log_append_time_ms;
                    p.log_start_offset = r.log_start_offset;
                    p.error_message = r.message.as_deref().map(str_bytes);
                    // KIP-951: a client sent to the wrong broker learns the leader at once,
                    // also when leadership moved while the batch was on its way here.
                    let current_leader = r.current_leader.or_else(|| {
                        (r.error == E::NotLeaderOrFollower.code())
                            .then(|| super::led_elsewhere(ctx, &topic.name.0, part.index))
                            .flatten()
                            .filter(|&(leader, _)| leader >= 0)
                    });
                    if let Some((leader, epoch)) = current_leader.filter(|_| ctx.version >= 10) {
                        p.current_leader.leader_id = BrokerId(leader);
                        p.current_leader.leader_epoch = epoch;
                        hinted.insert(leader);
                    }
                    if ctx.version >= 8 {
                        p.record_errors = r
                            .record_errors
                            .iter()
                            .map(|&i| {
                                let mut e = BatchIndexAndErrorMessage::default();
                                e.batch_index = i;
                                e.batch_index_error_message = Some(str_bytes(
                                    "Compacted topic cannot accept message without key",
                                ));
                                e
                            })
                            .collect();
                    }
                    p
                })
                .collect();
            t
        })
        .collect();
    if !hinted.is_empty() {
        resp.node_endpoints = super::metadata::brokers(ctx)
            .into_iter()
            .filter(|b| hinted.contains(&b.node_id))
            .map(|b| {
                let mut e = NodeEndpoint::default();
                e.node_id = BrokerId(b.node_id);
                e.host = str_bytes(&b.host);
                e.port = i32::from(b.port);
                e.rack = b.rack.as_deref().map(str_bytes);
                e
            })
            .collect();
    }
    Ok(ctx.respond(&resp))
}

/// `test.fault.produce.drop.response.every` = N > 0: every Nth Produce request with acks != 0
/// this shard handles is carried out but not answered (the connection is closed), so clients
/// retry. Returns the request's number on this shard when it is one of those.
fn drop_response(ctx: &Ctx<'_>) -> Option<u64> {
    let every = ctx.shard.config.faults.produce_drop_response_every;
    if every == 0 {
        return None;
    }
    let n = ctx.shard.produce_requests_acked.get() + 1;
    ctx.shard.produce_requests_acked.set(n);
    n.is_multiple_of(every).then_some(n)
}
