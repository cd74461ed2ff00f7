//! LeaveGroup (key 13): one member (v0-2) or a batch of members (v3+, static members by
//! instance id) leave; the group rebalances at once.

use bytes::Bytes;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};
use kafka_protocol::ResponseError as E;

use super::{codes_per_item, str_bytes, Ctx, HandlerResult};
use crate::group::{input, GroupOp, GroupReply};

pub async fn handle(ctx: &Ctx<'_>, body: &mut Bytes) -> HandlerResult {
    let req: LeaveGroupRequest = ctx.decode(body)?;
    let group_id = req.group_id.to_string();
    let members: Vec<(String, Option<String>)> = if ctx.version >= 3 {
        req.members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|s| s.to_string()),
                )
            })
            .collect()
    } else {
        vec![(req.member_id.to_string(), None)]
    };
    if let Some(e) = super::group_refused(ctx, &group_id, false) {
        let mut resp = LeaveGroupResponse::default();
        resp.error_code = e.code();
        ctx.note_error(resp.error_code);
        return Ok(ctx.respond(&resp));
    }
    // Member ids longer than any generated one name no member; only the others are looked up.
    let known: Vec<(String, Option<String>)> = members
        .iter()
        .filter(|(m, _)| !input::member_id_is_unknown(m))
        .cloned()
        .collect();
    let codes = if known.is_empty() {
        Vec::new()
    } else {
        let op = GroupOp::Leave {
            group_id: group_id.clone(),
            members: known.clone(),
        };
        match ctx.shard.group_call(&group_id, op).await {
            Some(GroupReply::Codes(c)) => codes_per_item(c, known.len(), ctx.api),
            _ => vec![E::CoordinatorNotAvailable.code(); known.len()],
        }
    };
    let mut known_codes = codes.into_iter();
    let codes: Vec<i16> = members
        .iter()
        .map(|(m, _)| {
            if input::member_id_is_unknown(m) {
                E::UnknownMemberId.code()
            } else {
                // One code per looked-up member (`codes_per_item`).
                known_codes.next().unwrap_or(E::UnknownServerError.code())
            }
        })
        .collect();
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
        // v0-2 carry exactly one member, so exactly one code.
        resp.error_code = codes
            .first()
            .copied()
            .unwrap_or(E::UnknownServerError.code());
        ctx.note_error(resp.error_code);
    }
    Ok(ctx.respond(&resp))
}
