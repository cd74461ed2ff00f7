//! FindCoordinator (key 10): on a single node, this broker coordinates every group; in a
//! cluster, the leader of the group's partition of the offsets topic (see `coordinator`).
//!
//! Advertising it also matters beyond groups: librdkafka enables LZ4 compression only when the
//! broker advertises FindCoordinator (`rdkafka_feature.c`).

use bytes::Bytes;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::ResponseError as E;

use super::{str_bytes, Ctx, HandlerResult};
use crate::group::store::OFFSETS_TOPIC;
use crate::metadata::controller::ControllerOp;
use crate::shard::{ShardOp, ShardReply};

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

/// In cluster mode, the group's coordinator: the leader of the group's partition of the
/// replicated offsets topic (`__consumer_offsets`, created on first use with
/// `offsets.topic.num.partitions` partitions and `offsets.topic.replication.factor` replicas,
/// COORDINATOR_NOT_AVAILABLE until it exists), COORDINATOR_NOT_AVAILABLE while that leader is
/// fenced. `None` on a single node.
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
    let partition = crate::group::store::partition_of(group, ctx.shard.groups.partitions());
    let Some(record) = state.image.partition(OFFSETS_TOPIC, partition as i32) else {
        request_offsets_topic(ctx);
        return Some(Err((
            E::CoordinatorNotAvailable.code(),
            format!("the offsets topic {OFFSETS_TOPIC} is being created"),
        )));
    };
    let node = record.leader;
    Some(
        state
            .live_brokers(&settings.client_listener)
            .into_iter()
            .find(|b| b.node_id == node)
            .map(|b| (b.node_id, str_bytes(&b.host), i32::from(b.port)))
            .ok_or_else(|| {
                (
                    E::CoordinatorNotAvailable.code(),
                    format!(
                        "the coordinator of this group, the leader of {OFFSETS_TOPIC}-{partition} \
                         (broker {node}), is not available"
                    ),
                )
            }),
    )
}

/// Asks the controller to create the offsets topic (at most once a second per shard; creating
/// it twice is refused harmlessly).
fn request_offsets_topic(ctx: &Ctx<'_>) {
    const RETRY_MS: i64 = 1_000;
    let (Some(replicas), Some(settings)) = (&ctx.shard.replicas, &ctx.shard.config.cluster) else {
        return;
    };
    let now = crate::clock::now_ms();
    if now - replicas.offsets_topic_requested_ms.get() < RETRY_MS {
        return;
    }
    replicas.offsets_topic_requested_ms.set(now);
    let groups = &ctx.shard.config.groups;
    let overrides = [
        ("cleanup.policy", "compact".to_string()),
        ("segment.bytes", groups.offsets_segment_bytes.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let op = ControllerOp::CreateTopic {
        name: OFFSETS_TOPIC.to_string(),
        partitions: i32::try_from(ctx.shard.groups.partitions()).unwrap_or(i32::MAX),
        replication_factor: settings.offsets_replication_factor,
        overrides,
        validate_only: false,
    };
    let shard = ctx.shard.clone();
    glommio::spawn_local(async move {
        match shard
            .call(crate::ids::ShardId(0), ShardOp::Controller(op))
            .await
        {
            ShardReply::Controller(Ok(_)) => {
                tracing::info!("created the offsets topic {OFFSETS_TOPIC}");
            }
            ShardReply::Controller(Err(e)) if e.code == E::TopicAlreadyExists.code() => {}
            ShardReply::Controller(Err(e)) => {
                tracing::warn!("creating the offsets topic {OFFSETS_TOPIC}: {}", e.message);
            }
            _ => {}
        }
    })
    .detach();
}
