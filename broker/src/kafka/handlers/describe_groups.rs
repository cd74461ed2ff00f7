//! DescribeGroups (key 15): state, protocol and members (with metadata and assignment when
//! stable) of each group, asked of the group's shard. An unknown group is "Dead".

use bytes::Bytes;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse, GroupId};

use super::{per_group_owner, str_bytes, Ctx, HandlerResult};
use crate::group::coordinator;
use crate::group::{GroupOp, GroupReply};

/// Operations a caller may perform on a group (no ACLs: all of them): READ, DELETE, DESCRIBE.
const GROUP_AUTHORIZED_OPERATIONS: i32 = (1 << 3) | (1 << 6) | (1 << 8);

pub async fn handle(ctx: &Ctx<'_>, body: &mut Bytes) -> HandlerResult {
    let req: DescribeGroupsRequest = ctx.decode(body)?;
    let ids: Vec<String> = req.groups.iter().map(|g| g.to_string()).collect();
    let described = per_group_owner(
        ctx,
        &ids,
        |group_ids| GroupOp::Describe { group_ids },
        |r| match r {
            GroupReply::Describe(d) => Some(d),
            _ => None,
        },
        |id, code| coordinator::DescribedGroup {
            error: code,
            group_id: id.to_string(),
            state: "Dead",
            ..Default::default()
        },
    )
    .await;
    let v = ctx.version;
    let mut resp = DescribeGroupsResponse::default();
    resp.groups = described
        .into_iter()
        .map(|g| {
            let mut out = DescribedGroup::default();
            out.error_code = g.error;
            ctx.note_error(out.error_code);
            out.group_id = GroupId(str_bytes(&g.group_id));
            out.group_state = str_bytes(g.state);
            out.protocol_type = str_bytes(&g.protocol_type);
            out.protocol_data = str_bytes(&g.protocol);
            if v >= 3 && req.include_authorized_operations {
                out.authorized_operations = GROUP_AUTHORIZED_OPERATIONS;
            }
            out.members = g
                .members
                .into_iter()
                .map(|m| {
                    let mut o = DescribedGroupMember::default();
                    o.member_id = str_bytes(&m.member_id);
                    if v >= 4 {
                        o.group_instance_id = m.instance_id.as_deref().map(str_bytes);
                    }
                    o.client_id = str_bytes(&m.client_id);
                    o.client_host = str_bytes(&m.client_host);
                    o.member_metadata = m.metadata;
                    o.member_assignment = m.assignment;
                    o
                })
                .collect();
            out
        })
        .collect();
    Ok(ctx.respond(&resp))
}
