//! CreatePartitions (key 37): grows a topic's partition count.

use bytes::Bytes;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};

use super::{str_bytes, Ctx, HandlerResult};
use crate::metadata::controller::ControllerOp;

pub async fn handle(ctx: &Ctx<'_>, body: &mut Bytes) -> HandlerResult {
    let req: CreatePartitionsRequest = ctx.decode(body)?;
    let mut resp = CreatePartitionsResponse::default();
    for t in req.topics {
        let mut r = CreatePartitionsTopicResult::default();
        r.name = t.name.clone();
        let op = ControllerOp::CreatePartitions {
            name: t.name.0.to_string(),
            count: t.count,
            validate_only: req.validate_only,
        };
        if let Err(e) = ctx.controller(op).await {
            r.error_code = e.code;
            ctx.note_error(r.error_code);
            r.error_message = Some(str_bytes(&e.message));
        }
        resp.results.push(r);
    }
    Ok(ctx.respond(&resp))
}
