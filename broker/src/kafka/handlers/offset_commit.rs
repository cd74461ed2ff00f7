//! OffsetCommit (key 8): stores offsets (with their metadata string) in the offsets log of the
//! group's shard; answered once stored.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::offset_commit_request::OffsetCommitRequestTopic;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};
use kafka_protocol::ResponseError as E;

use super::{codes_per_item, Ctx, HandlerResult};
use crate::group::coordinator::CommitParams;
use crate::group::{GroupOp, GroupReply};

pub async fn handle(ctx: &Ctx<'_>, body: &mut Bytes) -> HandlerResult {
    let req: OffsetCommitRequest = ctx.decode(body)?;
    let group_id = req.group_id.to_string();
    let count = req.topics.iter().map(|t| t.partitions.len()).sum();
    // The empty group id is accepted, as by Kafka (offsets of old clients).
    if let Some(e) = super::group_refused(ctx, &group_id, true) {
        return Ok(respond(ctx, req.topics, vec![e.code(); count]));
    }
    let mut offsets = Vec::with_capacity(count);
    for t in &req.topics {
        let topic: Arc<str> = Arc::from(t.name.as_str());
        for p in &t.partitions {
            let epoch = if ctx.version >= 6 {
                p.committed_leader_epoch
            } else {
                -1
            };
            offsets.push((
                topic.clone(),
                p.partition_index,
                p.committed_offset,
                epoch,
                p.committed_metadata.as_ref().map(|m| m.to_string()),
            ));
        }
    }
    let params = CommitParams {
        group_id: group_id.clone(),
        generation: req.generation_id_or_member_epoch,
        member_id: req.member_id.to_string(),
        instance_id: req.group_instance_id.map(|s| s.to_string()),
        offsets,
    };
    let codes = match ctx
        .shard
        .group_call(&group_id, GroupOp::Commit(params))
        .await
    {
        Some(GroupReply::Codes(c)) => codes_per_item(c, count, ctx.api),
        _ => vec![E::CoordinatorNotAvailable.code(); count],
    };
    Ok(respond(ctx, req.topics, codes))
}

/// The response: `codes` holds one code per partition of `topics`, in request order.
fn respond(
    ctx: &Ctx<'_>,
    topics: Vec<OffsetCommitRequestTopic>,
    codes: Vec<i16>,
) -> super::Outcome {
    let mut codes = codes.into_iter();
    let mut resp = OffsetCommitResponse::default();
    resp.topics = topics
        .into_iter()
        .map(|t| {
            let mut out = OffsetCommitResponseTopic::default();
            out.name = t.name;
            out.partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let mut r = OffsetCommitResponsePartition::default();
                    r.partition_index = p.partition_index;
                    // `codes` has one code per partition (`codes_per_item`).
                    r.error_code = codes.next().unwrap_or(E::UnknownServerError.code());
                    ctx.note_error(r.error_code);
                    r
                })
                .collect();
            out
        })
        .collect();
    ctx.respond(&resp)
}
