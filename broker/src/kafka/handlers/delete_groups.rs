//! DeleteGroups (key 42): removes empty groups and their offsets; NON_EMPTY_GROUP while a group
//! has members.

use bytes::Bytes;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse, GroupId};

use super::{per_group_owner, str_bytes, Ctx, HandlerResult};
use crate::group::{GroupOp, GroupReply};

pub async fn handle(ctx: &Ctx<'_>, body: &mut Bytes) -> HandlerResult {
    let req: DeleteGroupsRequest = ctx.decode(body)?;
    let ids: Vec<String> = req.groups_names.iter().map(|g| g.to_string()).collect();
    let codes = per_group_owner(
        ctx,
        &ids,
        |group_ids| GroupOp::Delete { group_ids },
        |r| match r {
            GroupReply::Codes(c) => Some(c),
            _ => None,
        },
        |_, code| code,
    )
    .await;
    let mut resp = DeleteGroupsResponse::default();
    resp.results = ids
        .iter()
        .zip(codes)
        .map(|(id, code)| {
            let mut r = DeletableGroupResult::default();
            r.group_id = GroupId(str_bytes(id));
            r.error_code = code;
            ctx.note_error(r.error_code);
            r
        })
        .collect();
    Ok(ctx.respond(&resp))
}
