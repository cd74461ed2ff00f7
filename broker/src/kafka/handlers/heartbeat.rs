//! Heartbeat (key 12): keeps a member's session alive and tells it when to rejoin.

use bytes::Bytes;
use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};
use kafka_protocol::ResponseError as E;

use super::{Ctx, HandlerResult};
use crate::group::{input, GroupOp, GroupReply};

pub async fn handle(ctx: &Ctx<'_>, body: &mut Bytes) -> HandlerResult {
    let req: HeartbeatRequest = ctx.decode(body)?;
    let group_id = req.group_id.to_string();
    let op = GroupOp::Heartbeat {
        group_id: group_id.clone(),
        generation: req.generation_id,
        member_id: req.member_id.to_string(),
        instance_id: req.group_instance_id.map(|s| s.to_string()),
    };
    let refused = super::group_refused(ctx, &group_id, false)
        .or_else(|| input::member_id_is_unknown(&req.member_id).then_some(E::UnknownMemberId));
    let code = match refused {
        Some(e) => e.code(),
        None => match ctx.shard.group_call(&group_id, op).await {
            Some(GroupReply::Code(c)) => c,
            _ => E::CoordinatorNotAvailable.code(),
        },
    };
    let mut resp = HeartbeatResponse::default();
    resp.error_code = code;
    ctx.note_error(resp.error_code);
    Ok(ctx.respond(&resp))
}
