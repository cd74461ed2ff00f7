//! DeleteTopics (key 20), by name (v0-5) or by name or id (v6).

use bytes::Bytes;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse, TopicName};
use kafka_protocol::ResponseError as E;

use super::{str_bytes, Ctx, HandlerResult};
use crate::metadata::controller::ControllerOp;

pub async fn handle(ctx: &Ctx<'_>, body: &mut Bytes) -> HandlerResult {
    let req: DeleteTopicsRequest = ctx.decode(body)?;
    let mut targets: Vec<(Option<String>, uuid::Uuid)> = req
        .topic_names
        .iter()
        .map(|n| (Some(n.0.to_string()), uuid::Uuid::nil()))
        .collect();
    targets.extend(
        req.topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id)),
    );
    let mut resp = DeleteTopicsResponse::default();
    for (name, id) in targets {
        let mut r = DeletableTopicResult::default();
        r.topic_id = id;
        let name = match name {
            Some(n) => Some(n),
            None => ctx
                .shard
                .meta()
                .topic_by_id(id.as_bytes())
                .map(|t| t.name.to_string()),
        };
        let Some(name) = name else {
            r.error_code = E::UnknownTopicId.code();
            ctx.note_error(r.error_code);
            resp.responses.push(r);
            continue;
        };
        r.name = Some(TopicName(str_bytes(&name)));
        if let Some(t) = ctx.shard.meta().topic(&name) {
            r.topic_id = uuid::Uuid::from_bytes(t.id);
        }
        if let Err(e) = ctx.controller(ControllerOp::DeleteTopic { name }).await {
            r.error_code = e.code;
            ctx.note_error(r.error_code);
            r.error_message = Some(str_bytes(&e.message));
        }
        resp.responses.push(r);
    }
    Ok(ctx.respond(&resp))
}
