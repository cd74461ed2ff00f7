//! OffsetDelete (key 47): removes committed offsets of a group, except for topics its active
//! members subscribe to (GROUP_SUBSCRIBED_TO_TOPIC).

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse};
use kafka_protocol::ResponseError as E;

use super::{codes_per_item, Ctx, HandlerResult};
use crate::group::{GroupOp, GroupReply};

pub async fn handle(ctx: &Ctx<'_>, body: &mut Bytes) -> HandlerResult {
    let req: OffsetDeleteRequest = ctx.decode(body)?;
    let group_id = req.group_id.to_string();
    let partitions: Vec<(Arc<str>, i32)> = req
        .topics
        .iter()
        .flat_map(|t| {
            let topic: Arc<str> = Arc::from(t.name.as_str());
            t.partitions
                .iter()
                .map(move |p| (topic.clone(), p.partition_index))
        })
        .collect();
    let count = partitions.len();
    let (code, codes) = if let Some(e) = super::group_refused(ctx, &group_id, false) {
        (e.code(), Vec::new())
    } else {
        let op = GroupOp::DeleteOffsets {
            group_id: group_id.clone(),
            partitions,
        };
        match ctx.shard.group_call(&group_id, op).await {
            Some(GroupReply::OffsetDelete(code, codes)) => (code, codes),
            _ => (E::CoordinatorNotAvailable.code(), Vec::new()),
        }
    };
    let mut resp = OffsetDeleteResponse::default();
    resp.error_code = code;
    ctx.note_error(resp.error_code);
    // Per-partition codes only without a group-level error, as Kafka.
    if code == 0 {
        let mut codes = codes_per_item(codes, count, ctx.api).into_iter();
        resp.topics = req
            .topics
            .into_iter()
            .map(|t| {
                let mut out = OffsetDeleteResponseTopic::default();
                out.name = t.name;
                out.partitions = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let mut r = OffsetDeleteResponsePartition::default();
                        r.partition_index = p.partition_index;
                        // `codes` has one code per partition (`codes_per_item`).
                        r.error_code = codes.next().unwrap_or(E::UnknownServerError.code());
                        ctx.note_error(r.error_code);
                        r
                    })
                    .collect();
                out
            })
            .collect();
    }
    Ok(ctx.respond(&resp))
}
