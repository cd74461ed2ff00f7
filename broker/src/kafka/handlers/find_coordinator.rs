//! FindCoordinator (key 10): on a single node, this broker coordinates every group; in a
//! cluster, one registered broker per group (see `coordinator`).
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
    // Transactional ids (key type 1) have no coordinator until transactions are supported.
    let error = if req.key_type == KEY_TYPE_GROUP {
        0
    } else {
        E::CoordinatorNotAvailable.code()
    };
    let this = (c.node_id, str_bytes(&c.advertised_host), c.advertised_port);
    let find =
        |key: &str| -> Result<(i32, kafka_protocol::protocol::StrBytes, i32), (i16, String)> {
            if error != 0 {
                return Err((
                    error,
                    "only consumer group coordinators exist (key type 0)".into(),
                ));
            }
            match coordinator(ctx, key) {
                Some(found) => found,
                None => Ok(this.clone()),
            }
        };
    let mut resp = FindCoordinatorResponse::default();
    if ctx.version >= 4 {
        resp.coordinators = req
            .coordinator_keys
            .iter()
            .map(|key| {
                let mut co = Coordinator::default();
                co.key = key.clone();
                match find(key.as_str()) {
                    Ok((node, host, port)) => {
                        co.node_id = BrokerId(node);
                        co.host = host;
                        co.port = port;
                    }
                    Err((code, msg)) => {
                        co.error_code = code;
                        co.error_message = Some(str_bytes(&msg));
                        co.node_id = BrokerId(-1);
                    }
                }
                ctx.note_error(co.error_code);
                co
            })
            .collect();
    } else {
        match find(req.key.as_str()) {
            Ok((node, host, port)) => {
                resp.node_id = BrokerId(node);
                resp.host = host;
                resp.port = port;
            }
            Err((code, msg)) => {
                resp.error_code = code;
                resp.error_message = Some(str_bytes(&msg));
                resp.node_id = BrokerId(-1);
            }
        }
        ctx.note_error(resp.error_code);
    }
    Ok(ctx.respond(&resp))
}

/// In cluster mode, the group's coordinator: the registered broker at the group's offsets
/// partition modulo the number of registered brokers (sorted by id), so every node names the
/// same one and it stays put while that broker is down (COORDINATOR_NOT_AVAILABLE then; its
/// committed offsets live on it). `None` on a single node.
#[allow(
    clippy::type_complexity,
    reason = "a node's endpoint or a Kafka error with its message, used once"
)]
pub fn coordinator(
    ctx: &Ctx<'_>,
    group: &str,
) -> Option<Result<(i32, kafka_protocol::protocol::StrBytes, i32), (i16, String)>> {
    let view = ctx.shard.quorum.as_ref()?;
    let settings = ctx.shard.config.cluster.as_ref()?;
    let state = view.load();
    let registered: Vec<i32> = state.image.brokers.keys().copied().collect();
    if registered.is_empty() {
        return Some(Err((
            E::CoordinatorNotAvailable.code(),
            "no broker has registered with the controller yet".into(),
        )));
    }
    let partition = crate::group::store::partition_of(group, ctx.shard.groups.partitions());
    let node = registered[partition as usize % registered.len()];
    Some(
        state
            .live_brokers(&settings.client_listener)
            .into_iter()
            .find(|b| b.node_id == node)
            .map(|b| (b.node_id, str_bytes(&b.host), i32::from(b.port)))
            .ok_or_else(|| {
                (
                    E::CoordinatorNotAvailable.code(),
                    format!("the coordinator of this group, broker {node}, is not available"),
                )
            }),
    )
}
