//! Group operations, run on the shard that coordinates the group.

use std::rc::Rc;

use super::Shard;
use crate::group::{GroupOp, GroupReply};

/// Runs a group operation on this shard's coordinator.
pub async fn execute(shard: &Rc<Shard>, op: GroupOp) -> GroupReply {
    let c = &shard.groups;
    match op {
        GroupOp::Join(p) => GroupReply::Join(c.join(p).await),
        GroupOp::Sync(p) => GroupReply::Sync(c.sync(p).await),
        GroupOp::Heartbeat {
            group_id,
            generation,
            member_id,
            instance_id,
        } => {
            GroupReply::Code(c.heartbeat(&group_id, generation, &member_id, instance_id.as_deref()))
        }
        GroupOp::Leave { group_id, members } => GroupReply::Codes(c.leave(&group_id, &members)),
        GroupOp::Commit(p) => GroupReply::Codes(c.commit(p, &shard.meta()).await),
        GroupOp::FetchOffsets { group_id, topics } => {
            GroupReply::Offsets(c.fetch_offsets(&group_id, topics.as_deref()))
        }
        GroupOp::DeleteOffsets {
            group_id,
            partitions,
        } => {
            let (code, codes) = c
                .delete_offsets(&group_id, &partitions, &shard.meta())
                .await;
            GroupReply::OffsetDelete(code, codes)
        }
        GroupOp::List { states, types } => GroupReply::List(c.list(&states, &types)),
        GroupOp::Describe { group_ids } => {
            GroupReply::Describe(group_ids.iter().map(|g| c.describe(g)).collect())
        }
        GroupOp::Delete { group_ids } => {
            let mut codes = Vec::with_capacity(group_ids.len());
            for g in &group_ids {
                codes.push(c.delete_group(g).await);
            }
            GroupReply::Codes(codes)
        }
        GroupOp::TopicsDeleted { topics } => {
            c.topics_deleted(&topics).await;
            GroupReply::Done
        }
    }
}
