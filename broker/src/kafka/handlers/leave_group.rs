//! LeaveGroup (key 13): one member (v0-2) or a batch of members (v3+, static members by
//! instance id) leave; the group rebalances at once.

use bytes::Bytes;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};
use kafka_protocol::ResponseError as E;

use super::{str_bytes, Ctx, HandlerResult};
use crate::group::{GroupOp, GroupReply};

pub async fn handle(ctx: &Ctx<'_>, body: &mut Bytes) -> HandlerResult {
    let req: LeaveGroupRequest = ctx.decode(body)?;
    let group_id = req.group_id.to_string();
    let members: Vec<(String, Option<String>)> = if ctx.version >= 3 {
        req.members.iter().map(|m| (m.member_id.to_string(), m.group_instance_id.as_ref().map(|s| s.to_string()))).collect()
    } else {
        vec![(req.member_id.to_string(), None)]
    };
    if group_id.is_empty() {
        let mut resp = LeaveGroupResponse::default();
        resp.error_code = E::InvalidGroupId.code();
        ctx.note_error(resp.error_code);
        return Ok(ctx.respond(&resp));
    }
    let op = GroupOp::Leave { group_id: group_id.clone(), members: members.clone() };
    let codes = match ctx.shard.group_call(&group_id, op).await {
        Some(GroupReply::Codes(c)) => c,
        _ => vec![E::CoordinatorNotAvailable.code(); members.len()],
    };
    let mut resp = LeaveGroupResponse::default();
    if ctx.version >= 3 {
        resp.members = members
            .into_iter()
            .zip(codes)
            .map(|((member_id, instance_id), code)| {
                let mut m = MemberResponse::default();
                m.member_id = str_bytes(&member_id);
                m.group_instance_id = instance_id.as_deref().map(str_bytes);
                m.error_code = code;
                ctx.note_error(m.error_code);
                m
            })
            .collect();
    } else {
        resp.error_code = codes.first().copied().unwrap_or(0);
        ctx.note_error(resp.error_code);
    }
    Ok(ctx.respond(&resp))
}
