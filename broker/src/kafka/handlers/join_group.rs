//! JoinGroup (key 11): forwarded to the group's shard; answered when the join phase ends.

use bytes::Bytes;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};
use kafka_protocol::ResponseError as E;

use super::{str_bytes, Ctx, HandlerResult};
use crate::group::coordinator::JoinParams;
use crate::group::state::JoinResult;
use crate::group::{input, GroupOp, GroupReply};

pub async fn handle(ctx: &Ctx<'_>, body: &mut Bytes) -> HandlerResult {
    let req: JoinGroupRequest = ctx.decode(body)?;
    let group_id = req.group_id.to_string();
    let member_id = req.member_id.to_string();
    let instance_id = req.group_instance_id.map(|s| s.to_string());
    let protocol_type = req.protocol_type.to_string();
    let protocols: Vec<(String, Bytes)> = req
        .protocols
        .into_iter()
        .map(|p| (p.name.to_string(), p.metadata))
        .collect();
    let refused = super::group_refused(ctx, &group_id, false)
        .or_else(|| input::member_id_is_unknown(&member_id).then_some(E::UnknownMemberId))
        .or_else(|| input::join_error(instance_id.as_deref(), &protocol_type, &protocols));
    let params = JoinParams {
        version: ctx.version,
        group_id: group_id.clone(),
        session_timeout_ms: req.session_timeout_ms,
        // v0 has no rebalance timeout: the session timeout serves as both.
        rebalance_timeout_ms: if ctx.version >= 1 {
            req.rebalance_timeout_ms
        } else {
            req.session_timeout_ms
        },
        member_id: member_id.clone(),
        instance_id,
        protocol_type,
        protocols,
        client_id: ctx.client_id(),
        client_host: ctx.client_host(),
    };
    let r = match refused {
        Some(e) => JoinResult::error(e, &member_id),
        None => match ctx.shard.group_call(&group_id, GroupOp::Join(params)).await {
            Some(GroupReply::Join(r)) => r,
            _ => JoinResult::error(E::CoordinatorNotAvailable, &member_id),
        },
    };
    let v = ctx.version;
    let mut resp = JoinGroupResponse::default();
    resp.error_code = r.error;
    ctx.note_error(resp.error_code);
    resp.generation_id = r.generation;
    if v >= 7 {
        resp.protocol_type = r.protocol_type.as_deref().map(str_bytes);
        resp.protocol_name = r.protocol.as_deref().map(str_bytes);
    } else {
        resp.protocol_name = Some(str_bytes(r.protocol.as_deref().unwrap_or("")));
    }
    resp.leader = str_bytes(&r.leader);
    resp.member_id = str_bytes(&r.member_id);
    if v >= 9 {
        resp.skip_assignment = r.skip_assignment;
    }
    resp.members = r
        .members
        .into_iter()
        .map(|m| {
            let mut out = JoinGroupResponseMember::default();
            out.member_id = str_bytes(&m.member_id);
            if v >= 5 {
                out.group_instance_id = m.instance_id.as_deref().map(str_bytes);
            }
            out.metadata = m.metadata;
            out
        })
        .collect();
    Ok(ctx.respond(&resp))
}
