//! OffsetCommit (key 8): stores offsets (with their metadata string) in the offsets log of the
//! group's shard; answered once stored.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};
use kafka_protocol::ResponseError as E;

use super::{Ctx, HandlerResult};
use crate::group::coordinator::CommitParams;
use crate::group::{GroupOp, GroupReply};

pub async fn handle(ctx: &Ctx<'_>, body: &mut Bytes) -> HandlerResult {
    let req: OffsetCommitRequest = ctx.decode(body)?;
    let group_id = req.group_id.to_string();
    let mut offsets = Vec::new();
    for t in &req.topics {
        let topic: Arc<str> = Arc::from(t.name.as_str());
        for p in &t.partitions {
            let epoch = if ctx.version >= 6 { p.committed_leader_epoch } else { -1 };
            offsets.push((topic.clone(), p.partition_index, p.committed_offset, epoch, p.committed_metadata.as_ref().map(|m| m.to_string())));
        }
    }
    let count = offsets.len();
    let params = CommitParams {
        group_id: group_id.clone(),
        generation: req.generation_id_or_member_epoch,
        member_id: req.member_id.to_string(),
        instance_id: req.group_instance_id.map(|s| s.to_string()),
        offsets,
    };
    let codes = match ctx.shard.group_call(&group_id, GroupOp::Commit(params)).await {
        Some(GroupReply::Codes(c)) => c,
        _ => vec![E::CoordinatorNotAvailable.code(); count],
    };
    let mut codes = codes.into_iter();
    let mut resp = OffsetCommitResponse::default();
    resp.topics = req
        .topics
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
                    r.error_code = codes.next().unwrap_or(0);
                    ctx.note_error(r.error_code);
                    r
                })
                .collect();
            out
        })
        .collect();
    Ok(ctx.respond(&resp))
}
