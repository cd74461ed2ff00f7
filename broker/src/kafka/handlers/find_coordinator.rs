//! FindCoordinator (key 10): on a single node, this broker coordinates every group.
//!
//! Advertising it also matters beyond groups: librdkafka enables LZ4 compression only when the
//! broker advertises FindCoordinator (`rdkafka_feature.c`).

use bytes::Bytes;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::ResponseError as E;

use super::{str_bytes, Ctx, HandlerResult};

/// `key_type` of consumer groups; transactional ids (1) have no coordinator until transactions
/// are supported.
const KEY_TYPE_GROUP: i8 = 0;

pub async fn handle(ctx: &Ctx<'_>, body: &mut Bytes) -> HandlerResult {
    let req: FindCoordinatorRequest = ctx.decode(body)?;
    let c = &ctx.shard.config;
    let (error, message) = if req.key_type == KEY_TYPE_GROUP {
        (0, None)
    } else {
        (
            E::CoordinatorNotAvailable.code(),
            Some(str_bytes(
                "only consumer group coordinators exist (key type 0)",
            )),
        )
    };
    let mut resp = FindCoordinatorResponse::default();
    if ctx.version >= 4 {
        resp.coordinators = req
            .coordinator_keys
            .iter()
            .map(|key| {
                let mut co = Coordinator::default();
                co.key = key.clone();
                co.error_code = error;
                ctx.note_error(co.error_code);
                co.error_message = message.clone();
                if error == 0 {
                    co.node_id = BrokerId(c.node_id);
                    co.host = str_bytes(&c.advertised_host);
                    co.port = c.advertised_port;
                }
                co
            })
            .collect();
    } else {
        resp.error_code = error;
        ctx.note_error(resp.error_code);
        resp.error_message = message;
        if error == 0 {
            resp.node_id = BrokerId(c.node_id);
            resp.host = str_bytes(&c.advertised_host);
            resp.port = c.advertised_port;
        } else {
            resp.node_id = BrokerId(-1);
        }
    }
    Ok(ctx.respond(&resp))
}
