//! OffsetFetch (key 9): committed offsets of one group (v1-7) or several (v8), each read on
//! its group's shard.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{GroupId, OffsetFetchRequest, OffsetFetchResponse, TopicName};
use kafka_protocol::ResponseError as E;

use super::{str_bytes, Ctx, HandlerResult};
use crate::group::coordinator::FetchedOffset;
use crate::group::{GroupOp, GroupReply};

type Wanted = Option<Vec<(Arc<str>, Vec<i32>)>>;

async fn fetch_group(ctx: &Ctx<'_>, group_id: &str, topics: Wanted) -> (i16, Vec<FetchedOffset>) {
    // The empty group id is accepted, as by Kafka (offsets of old clients).
    if let Some(e) = super::group_refused(ctx, group_id, true) {
        return (e.code(), Vec::new());
    }
    let op = GroupOp::FetchOffsets {
        group_id: group_id.to_string(),
        topics,
    };
    match ctx.shard.group_call(group_id, op).await {
        Some(GroupReply::Offsets(o)) => (0, o),
        _ => (E::CoordinatorNotAvailable.code(), Vec::new()),
    }
}

/// Groups fetched offsets by topic, keeping first-seen topic order.
fn by_topic(offsets: Vec<FetchedOffset>) -> Vec<(Arc<str>, Vec<FetchedOffset>)> {
    let mut out: Vec<(Arc<str>, Vec<FetchedOffset>)> = Vec::new();
    for o in offsets {
        match out.iter_mut().find(|(t, _)| *t == o.topic) {
            Some((_, v)) => v.push(o),
            None => out.push((o.topic.clone(), vec![o])),
        }
    }
    out
}

pub async fn handle(ctx: &Ctx<'_>, body: &mut Bytes) -> HandlerResult {
    let req: OffsetFetchRequest = ctx.decode(body)?;
    let v = ctx.version;
    let mut resp = OffsetFetchResponse::default();
    if v >= 8 {
        for g in req.groups {
            let wanted: Wanted = g.topics.map(|ts| {
                ts.into_iter()
                    .map(|t| (Arc::from(t.name.as_str()), t.partition_indexes))
                    .collect()
            });
            let (code, offsets) = fetch_group(ctx, g.group_id.as_str(), wanted).await;
            let mut out = OffsetFetchResponseGroup::default();
            out.group_id = g.group_id;
            out.error_code = code;
            ctx.note_error(out.error_code);
            out.topics = by_topic(offsets)
                .into_iter()
                .map(|(topic, parts)| {
                    let mut t = OffsetFetchResponseTopics::default();
                    t.name = TopicName(str_bytes(&topic));
                    t.partitions = parts
                        .into_iter()
                        .map(|o| {
                            let mut p = OffsetFetchResponsePartitions::default();
                            p.partition_index = o.partition;
                            p.committed_offset = o.offset;
                            p.committed_leader_epoch = o.leader_epoch;
                            p.metadata = Some(str_bytes(&o.metadata));
                            p
                        })
                        .collect();
                    t
                })
                .collect();
            resp.groups.push(out);
        }
        return Ok(ctx.respond(&resp));
    }
    let group_id: GroupId = req.group_id;
    let wanted: Wanted = req.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (Arc::from(t.name.as_str()), t.partition_indexes))
            .collect()
    });
    // v0-1 have no group-level error: a failed fetch answers each partition asked for with it.
    let unanswered: Vec<FetchedOffset> = match (&wanted, v < 2) {
        (Some(topics), true) => topics
            .iter()
            .flat_map(|(t, ps)| {
                ps.iter().map(move |&p| FetchedOffset {
                    topic: t.clone(),
                    partition: p,
                    offset: -1,
                    leader_epoch: -1,
                    metadata: String::new(),
                })
            })
            .collect(),
        _ => Vec::new(),
    };
    let (code, offsets) = match fetch_group(ctx, group_id.as_str(), wanted).await {
        (0, offsets) => (0, offsets),
        (code, _) => (code, unanswered),
    };
    if v >= 2 {
        resp.error_code = code;
        ctx.note_error(resp.error_code);
    }
    resp.topics = by_topic(offsets)
        .into_iter()
        .map(|(topic, parts)| {
            let mut t = OffsetFetchResponseTopic::default();
            t.name = TopicName(str_bytes(&topic));
            t.partitions = parts
                .into_iter()
                .map(|o| {
                    let mut p = OffsetFetchResponsePartition::default();
                    p.partition_index = o.partition;
                    p.committed_offset = o.offset;
                    if v >= 5 {
                        p.committed_leader_epoch = o.leader_epoch;
                    }
                    p.metadata = Some(str_bytes(&o.metadata));
                    p.error_code = if v < 2 { code } else { 0 };
                    ctx.note_error(p.error_code);
                    p
                })
                .collect();
            t
        })
        .collect();
    Ok(ctx.respond(&resp))
}
