//! ListOffsets (key 2): earliest (-2), latest (-1), max timestamp (-3) or first offset at or
//! after a timestamp, answered by the owning shards.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::ResponseError as E;

use super::{Ctx, HandlerResult};
use crate::ids::{PartitionId, ShardId};
use crate::shard::ops::{OffsetAnswer, OffsetQuery};
use crate::shard::{ShardOp, ShardReply};

pub async fn handle(ctx: &Ctx<'_>, body: &mut Bytes) -> HandlerResult {
    let req: ListOffsetsRequest = ctx.decode(body)?;
    let meta = ctx.shard.meta();
    let unknown = OffsetAnswer {
        error: E::UnknownTopicOrPartition.code(),
        timestamp: -1,
        offset: -1,
        leader_epoch: -1,
    };
    let mut answers: Vec<Vec<OffsetAnswer>> = Vec::new();
    // Per owning shard: (topic index, partition index) of each query, and the query.
    type Positioned = ((usize, usize), OffsetQuery);
    let mut per_shard: BTreeMap<ShardId, Vec<Positioned>> = BTreeMap::new();
    for (ti, t) in req.topics.iter().enumerate() {
        let name: Arc<str> = Arc::from(t.name.0.as_str());
        answers.push(vec![unknown.clone(); t.partitions.len()]);
        for (pi, p) in t.partitions.iter().enumerate() {
            if super::led_elsewhere(ctx, &name, p.partition_index).is_some() {
                answers[ti][pi].error = E::NotLeaderOrFollower.code();
            } else if let Some(e) =
                super::epoch_fenced(&meta, &name, p.partition_index, p.current_leader_epoch)
            {
                answers[ti][pi].error = e.code();
            } else if let Some(owner) = meta.owner(&name, PartitionId(p.partition_index)) {
                per_shard.entry(owner).or_default().push((
                    (ti, pi),
                    OffsetQuery {
                        topic: name.clone(),
                        partition: p.partition_index,
                        timestamp: p.timestamp,
                    },
                ));
            }
        }
    }
    let calls = per_shard.into_iter().map(|(s, qs)| async move {
        let (pos, qs): (Vec<_>, Vec<_>) = qs.into_iter().unzip();
        (pos, ctx.shard.call(s, ShardOp::ListOffsets(qs)).await)
    });
    for (pos, reply) in futures::future::join_all(calls).await {
        if let ShardReply::ListOffsets(rs) = reply {
            for ((t, p), a) in pos.into_iter().zip(rs) {
                answers[t][p] = a;
            }
        }
    }
    let mut resp = ListOffsetsResponse::default();
    resp.topics = req
        .topics
        .iter()
        .zip(answers)
        .map(|(t, ans)| {
            let mut tr = ListOffsetsTopicResponse::default();
            tr.name = t.name.clone();
            tr.partitions = t
                .partitions
                .iter()
                .zip(ans)
                .map(|(p, a)| {
                    let mut pr = ListOffsetsPartitionResponse::default();
                    pr.partition_index = p.partition_index;
                    pr.error_code = a.error;
                    ctx.note_error(pr.error_code);
                    pr.timestamp = a.timestamp;
                    pr.offset = a.offset;
                    if ctx.version >= 4 {
                        pr.leader_epoch = a.leader_epoch;
                    }
                    pr
                })
                .collect();
            tr
        })
        .collect();
    Ok(ctx.respond(&resp))
}
