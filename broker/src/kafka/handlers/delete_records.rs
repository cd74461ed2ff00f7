//! DeleteRecords (key 21): moves each partition's log start offset (the low watermark) up to
//! the given offset, -1 meaning the high watermark, on the owning shards. Segments wholly below
//! the new start are deleted.
//!
//! `timeout_ms` bounds how long Kafka waits for the followers' low watermarks; a single node
//! has none, so the answer goes out as soon as every owner is done, as Kafka's would.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
use kafka_protocol::ResponseError as E;

use super::{Ctx, HandlerResult};
use crate::ids::{PartitionId, ShardId};
use crate::shard::{ShardOp, ShardReply};

pub async fn handle(ctx: &Ctx<'_>, body: &mut Bytes) -> HandlerResult {
    let req: DeleteRecordsRequest = ctx.decode(body)?;
    let meta = ctx.shard.meta();
    let unknown = (E::UnknownTopicOrPartition.code(), -1i64);
    let mut answers: Vec<Vec<(i16, i64)>> = Vec::with_capacity(req.topics.len());
    // Per owning shard: (topic index, partition index) of each partition, and what to delete.
    type Positioned = ((usize, usize), (Arc<str>, i32, i64));
    let mut per_shard: BTreeMap<ShardId, Vec<Positioned>> = BTreeMap::new();
    for (ti, t) in req.topics.iter().enumerate() {
        let name: Arc<str> = Arc::from(t.name.0.as_str());
        answers.push(vec![unknown; t.partitions.len()]);
        for (pi, p) in t.partitions.iter().enumerate() {
            if super::led_elsewhere(ctx, &name, p.partition_index).is_some() {
                answers[ti][pi] = (E::NotLeaderOrFollower.code(), -1);
            } else if let Some(owner) = meta.owner(&name, PartitionId(p.partition_index)) {
                per_shard
                    .entry(owner)
                    .or_default()
                    .push(((ti, pi), (name.clone(), p.partition_index, p.offset)));
            }
        }
    }
    let calls = per_shard.into_iter().map(|(s, parts)| async move {
        let (pos, parts): (Vec<_>, Vec<_>) = parts.into_iter().unzip();
        (pos, ctx.shard.call(s, ShardOp::DeleteRecords(parts)).await)
    });
    for (pos, reply) in futures::future::join_all(calls).await {
        match reply {
            ShardReply::DeleteRecords(rs) => {
                for ((t, p), a) in pos.into_iter().zip(rs) {
                    answers[t][p] = a;
                }
            }
            // The owner is shutting down: its partitions cannot be reached.
            _ => {
                for (t, p) in pos {
                    answers[t][p] = (E::NotLeaderOrFollower.code(), -1);
                }
            }
        }
    }
    let mut resp = DeleteRecordsResponse::default();
    resp.topics = req
        .topics
        .iter()
        .zip(answers)
        .map(|(t, ans)| {
            let mut tr = DeleteRecordsTopicResult::default();
            tr.name = t.name.clone();
            tr.partitions = t
                .partitions
                .iter()
                .zip(ans)
                .map(|(p, (error, low_watermark))| {
                    let mut pr = DeleteRecordsPartitionResult::default();
                    pr.partition_index = p.partition_index;
                    pr.error_code = error;
                    ctx.note_error(pr.error_code);
                    pr.low_watermark = low_watermark;
                    pr
                })
                .collect();
            tr
        })
        .collect();
    Ok(ctx.respond(&resp))
}
