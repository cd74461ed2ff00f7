//! OffsetForLeaderEpoch (key 23): where a leader epoch ends in a partition's log (KIP-101), so
//! that a consumer (KIP-320) or a follower can tell whether its position survived a change of
//! leader. The current leader epoch a client names (v2+) is checked first: older is
//! FENCED_LEADER_EPOCH, newer UNKNOWN_LEADER_EPOCH.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use kafka_protocol::ResponseError as E;

use super::{Ctx, HandlerResult};
use crate::ids::{PartitionId, ShardId};
use crate::shard::ops::{EpochAnswer, EpochQuery};
use crate::shard::{ShardOp, ShardReply};

pub async fn handle(ctx: &Ctx<'_>, body: &mut Bytes) -> HandlerResult {
    let req: OffsetForLeaderEpochRequest = ctx.decode(body)?;
    let meta = ctx.shard.meta();
    let refused = |code: E| EpochAnswer {
        error: code.code(),
        leader_epoch: -1,
        end_offset: -1,
    };
    let mut answers: Vec<Vec<EpochAnswer>> = Vec::new();
    type Positioned = ((usize, usize), EpochQuery);
    let mut per_shard: BTreeMap<ShardId, Vec<Positioned>> = BTreeMap::new();
    for (ti, t) in req.topics.iter().enumerate() {
        let name: Arc<str> = Arc::from(t.topic.0.as_str());
        answers.push(vec![
            refused(E::UnknownTopicOrPartition);
            t.partitions.len()
        ]);
        for (pi, p) in t.partitions.iter().enumerate() {
            let current = meta
                .topic(&name)
                .and_then(|tm| tm.partitions.get(usize::try_from(p.partition).ok()?))
                .map(|pm| pm.leader_epoch.0);
            let owner = meta.owner(&name, PartitionId(p.partition));
            let answer = &mut answers[ti][pi];
            match (owner, current) {
                _ if super::led_elsewhere(ctx, &name, p.partition).is_some() => {
                    *answer = refused(E::NotLeaderOrFollower);
                }
                (Some(owner), Some(current)) => {
                    // -1: the client does not know the current epoch (no fencing).
                    if p.current_leader_epoch >= 0 && p.current_leader_epoch < current {
                        *answer = refused(E::FencedLeaderEpoch);
                    } else if p.current_leader_epoch > current {
                        *answer = refused(E::UnknownLeaderEpoch);
                    } else {
                        per_shard.entry(owner).or_default().push((
                            (ti, pi),
                            EpochQuery {
                                topic: name.clone(),
                                partition: p.partition,
                                leader_epoch: p.leader_epoch,
                                current_epoch: current,
                            },
                        ));
                    }
                }
                _ => {}
            }
        }
    }
    let calls = per_shard.into_iter().map(|(s, qs)| async move {
        let (pos, qs): (Vec<_>, Vec<_>) = qs.into_iter().unzip();
        (pos, ctx.shard.call(s, ShardOp::EpochEnds(qs)).await)
    });
    for (pos, reply) in futures::future::join_all(calls).await {
        match reply {
            ShardReply::EpochEnds(rs) => {
                for ((t, p), a) in pos.into_iter().zip(rs) {
                    answers[t][p] = a;
                }
            }
            _ => {
                for (t, p) in pos {
                    answers[t][p] = refused(E::NotLeaderOrFollower);
                }
            }
        }
    }
    let mut resp = OffsetForLeaderEpochResponse::default();
    resp.topics = req
        .topics
        .iter()
        .zip(answers)
        .map(|(t, ans)| {
            let mut tr = OffsetForLeaderTopicResult::default();
            tr.topic = t.topic.clone();
            tr.partitions = t
                .partitions
                .iter()
                .zip(ans)
                .map(|(p, a)| {
                    let mut e = EpochEndOffset::default();
                    e.partition = p.partition;
                    e.error_code = a.error;
                    ctx.note_error(e.error_code);
                    e.leader_epoch = a.leader_epoch;
                    e.end_offset = a.end_offset;
                    e
                })
                .collect();
            tr
        })
        .collect();
    Ok(ctx.respond(&resp))
}
