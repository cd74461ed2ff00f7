//! ListGroups (key 16): the groups of every shard, optionally filtered by state (v4+) and
//! type (v5+; all groups here are "classic"). If a shard does not answer, the response carries
//! COORDINATOR_NOT_AVAILABLE with the groups of the shards that did.

use bytes::Bytes;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};

use super::{str_bytes, Ctx, HandlerResult};
use crate::group::{GroupOp, GroupReply};

pub async fn handle(ctx: &Ctx<'_>, body: &mut Bytes) -> HandlerResult {
    let req: ListGroupsRequest = ctx.decode(body)?;
    let states: Vec<String> = req.states_filter.iter().map(|s| s.to_string()).collect();
    let types: Vec<String> = req.types_filter.iter().map(|s| s.to_string()).collect();
    let replies = ctx
        .shard
        .group_call_all(|| GroupOp::List {
            states: states.clone(),
            types: types.clone(),
        })
        .await;
    let mut resp = ListGroupsResponse::default();
    if replies.len() < ctx.shard.table.shards() {
        // A shard did not answer (shutting down, or its mesh outbox full): the list would be
        // incomplete, so say so with a retriable code (the groups that did answer still go out).
        resp.error_code = kafka_protocol::ResponseError::CoordinatorNotAvailable.code();
        ctx.note_error(resp.error_code);
    }
    for r in replies {
        let GroupReply::List(groups) = r else {
            continue;
        };
        for g in groups {
            let mut out = ListedGroup::default();
            out.group_id = GroupId(str_bytes(&g.group_id));
            out.protocol_type = str_bytes(&g.protocol_type);
            if ctx.version >= 4 {
                out.group_state = str_bytes(g.state);
            }
            if ctx.version >= 5 {
                out.group_type = str_bytes("classic");
            }
            resp.groups.push(out);
        }
    }
    resp.groups
        .sort_by(|a, b| a.group_id.as_str().cmp(b.group_id.as_str()));
    Ok(ctx.respond(&resp))
}
