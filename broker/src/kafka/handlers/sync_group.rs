//! SyncGroup (key 14): the leader hands in the assignment; every member gets its part.

use bytes::Bytes;
use kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};
use kafka_protocol::ResponseError as E;

use super::{str_bytes, Ctx, HandlerResult};
use crate::group::coordinator::SyncParams;
use crate::group::state::SyncResult;
use crate::group::{input, GroupOp, GroupReply};

pub async fn handle(ctx: &Ctx<'_>, body: &mut Bytes) -> HandlerResult {
    let req: SyncGroupRequest = ctx.decode(body)?;
    let group_id = req.group_id.to_string();
    let params = SyncParams {
        group_id: group_id.clone(),
        generation: req.generation_id,
        member_id: req.member_id.to_string(),
        instance_id: req.group_instance_id.map(|s| s.to_string()),
        protocol_type: req.protocol_type.map(|s| s.to_string()),
        protocol: req.protocol_name.map(|s| s.to_string()),
        assignments: req
            .assignments
            .into_iter()
            .map(|a| (a.member_id.to_string(), a.assignment))
            .collect(),
    };
    let refused = super::group_refused(ctx, &group_id, false)
        .or_else(|| input::member_id_is_unknown(&params.member_id).then_some(E::UnknownMemberId))
        .or_else(|| input::sync_error(&params.assignments));
    let r = match refused {
        Some(e) => SyncResult::error(e),
        None => match ctx.shard.group_call(&group_id, GroupOp::Sync(params)).await {
            Some(GroupReply::Sync(r)) => r,
            _ => SyncResult::error(E::CoordinatorNotAvailable),
        },
    };
    let mut resp = SyncGroupResponse::default();
    resp.error_code = r.error;
    ctx.note_error(resp.error_code);
    if ctx.version >= 5 {
        resp.protocol_type = r.protocol_type.as_deref().map(str_bytes);
        resp.protocol_name = r.protocol.as_deref().map(str_bytes);
    }
    resp.assignment = r.assignment;
    Ok(ctx.respond(&resp))
}
