//! One file per Kafka API. Each handler decodes its request, does the work (forwarding to the
//! owning shards where partitions are involved) and encodes its response.

pub mod alter_configs;
pub mod api_versions;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_groups;
pub mod delete_records;
pub mod delete_topics;
pub mod describe_cluster;
pub mod describe_configs;
pub mod describe_groups;
pub mod describe_log_dirs;
pub mod fetch;
pub mod find_coordinator;
pub mod heartbeat;
pub mod incremental_alter_configs;
pub mod init_producer_id;
pub mod join_group;
pub mod leave_group;
pub mod list_groups;
pub mod list_offsets;
pub mod metadata;
pub mod offset_commit;
pub mod offset_delete;
pub mod offset_fetch;
pub mod offset_for_leader_epoch;
pub mod produce;
pub mod sync_group;

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::ResponseError;
use strom_net::OutChunk;

use super::codec::frame_response;
use crate::group::{input, GroupOp, GroupReply};
use crate::ids::ShardId;
use crate::kafka::affinity::Hint;
use crate::metadata::controller::{
    ControllerError, ControllerOp, ControllerReply, CONTROLLER_SHARD,
};
use crate::metrics::stages::RequestTrace;
use crate::shard::{Shard, ShardOp, ShardReply};

/// What the connection writer does with a request's result.
pub enum Outcome {
    Respond(Vec<OutChunk>),
    /// acks=0 produce: no response at all.
    NoResponse,
    /// Protocol error: close without answering.
    Close(String),
}

/// Request-scoped values every handler needs.
pub struct Ctx<'a> {
    pub shard: &'a Rc<Shard>,
    pub api: ApiKey,
    pub version: i16,
    pub header: RequestHeader,
    /// The client's address, `ip:port`.
    pub peer: &'a str,
    /// The connection came in on the replication listener (a peer node, not a client).
    pub from_peer: bool,
    /// Set when the response carries an error code (for `strom_request_errors_total`).
    failed: Cell<bool>,
    /// The request's stage stamps.
    pub trace: &'a RequestTrace,
    /// The shards the request's partitions live on (for connection migration).
    hint: Cell<Hint>,
}

impl Ctx<'_> {
    /// Notes an error code of the response; any non-zero one counts the request as failed.
    pub fn note_error(&self, code: i16) {
        if code != 0 {
            self.failed.set(true);
        }
    }

    pub fn respond<R: Encodable>(&self, body: &R) -> Outcome {
        match frame_response(self.api, self.version, self.header.correlation_id, body) {
            Ok(b) => Outcome::Respond(vec![OutChunk::Bytes(b)]),
            Err(e) => Outcome::Close(format!(
                "encoding {:?} v{} response: {e}",
                self.api, self.version
            )),
        }
    }

    pub fn decode<R: Decodable>(&self, body: &mut Bytes) -> Result<R, Outcome> {
        let decoded = R::decode(body, self.version).map_err(|e| {
            Outcome::Close(format!(
                "malformed {:?} v{} request: {e}",
                self.api, self.version
            ))
        });
        self.trace.decoded();
        decoded
    }

    /// Runs `op` on the shard that owns its partitions, stamping the hop stages of the trace.
    pub async fn call_owner(&self, to: ShardId, op: ShardOp) -> ShardReply {
        self.hint.set(self.hint.get().with(to));
        let (reply, ran) = self.shard.call_timed(to, op).await;
        if let Some(ran) = ran {
            self.trace.owner_replied(ran);
        }
        reply
    }

    /// The client id from the request header ("" if none).
    pub fn client_id(&self) -> String {
        self.header
            .client_id
            .as_ref()
            .map(|c| c.to_string())
            .unwrap_or_default()
    }

    /// The client host as Kafka reports it in DescribeGroups: `/ip`.
    pub fn client_host(&self) -> String {
        let ip = self.peer.rsplit_once(':').map_or(self.peer, |(ip, _)| ip);
        format!("/{}", ip.trim_start_matches('[').trim_end_matches(']'))
    }

    /// Runs a metadata change on the controller (shard 0).
    pub async fn controller(&self, op: ControllerOp) -> Result<(), ControllerError> {
        self.controller_output(op).await.map(|_| ())
    }

    /// Runs an operation on the controller (shard 0) and returns what it produced.
    pub async fn controller_output(&self, op: ControllerOp) -> ControllerReply {
        match self
            .shard
            .call(CONTROLLER_SHARD, ShardOp::Controller(op))
            .await
        {
            ShardReply::Controller(r) => r,
            _ => Err(ControllerError {
                code: ResponseError::UnknownServerError.code(),
                message: "controller unavailable".into(),
            }),
        }
    }
}

/// Why this node refuses a group request: an invalid group id (INVALID_GROUP_ID), or in
/// cluster mode a group coordinated by another broker (NOT_COORDINATOR, so the client asks
/// FindCoordinator again) or by one that is down (COORDINATOR_NOT_AVAILABLE).
pub fn group_refused(ctx: &Ctx<'_>, group_id: &str, empty_allowed: bool) -> Option<ResponseError> {
    if let Some(e) = input::group_id_error(group_id, empty_allowed) {
        return Some(e);
    }
    match find_coordinator::coordinator(ctx, group_id)? {
        Ok((node, _, _)) if node == ctx.shard.config.node_id => {
            // This node leads the group's offsets partition: it answers once a shard has
            // loaded the partition's groups.
            let p = crate::group::store::partition_of(group_id, ctx.shard.groups.partitions());
            let loaded = ctx
                .shard
                .quorum
                .as_ref()
                .is_some_and(|v| v.offsets_loaded(p));
            (!loaded).then_some(ResponseError::CoordinatorLoadInProgress)
        }
        Ok(_) => Some(ResponseError::NotCoordinator),
        Err(_) => Some(ResponseError::CoordinatorNotAvailable),
    }
}

/// KIP-320: a request naming the partition's current leader epoch (-1: none) is refused when
/// that is older (FENCED_LEADER_EPOCH: the client's metadata is stale) or newer
/// (UNKNOWN_LEADER_EPOCH: this broker's is) than the partition's.
pub fn epoch_fenced(
    meta: &crate::metadata::ClusterMeta,
    topic: &str,
    partition: i32,
    current_leader_epoch: i32,
) -> Option<ResponseError> {
    if current_leader_epoch < 0 {
        return None;
    }
    let epoch = meta
        .topic(topic)?
        .partitions
        .get(usize::try_from(partition).ok()?)?
        .leader_epoch
        .0;
    match current_leader_epoch.cmp(&epoch) {
        std::cmp::Ordering::Less => Some(ResponseError::FencedLeaderEpoch),
        std::cmp::Ordering::Greater => Some(ResponseError::UnknownLeaderEpoch),
        std::cmp::Ordering::Equal => None,
    }
}

/// Who leads a partition this node does not lead, in cluster mode: `(leader, leader_epoch)`,
/// leader -1 when there is none (or the topic is not in the committed metadata). `None` when
/// this node leads it, and always on a single node.
pub fn led_elsewhere(ctx: &Ctx<'_>, topic: &str, partition: i32) -> Option<(i32, i32)> {
    let view = ctx.shard.quorum.as_ref()?;
    let state = view.load();
    let me = ctx.shard.config.node_id;
    let record = usize::try_from(partition)
        .ok()
        .and_then(|p| state.image.topics.get(topic)?.partitions.get(p));
    match record {
        Some(p) if p.leader == me => None,
        Some(p) => Some((p.leader, p.leader_epoch)),
        None => Some((-1, -1)),
    }
}

pub fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

pub async fn dispatch(
    shard: &Rc<Shard>,
    api: ApiKey,
    version: i16,
    header: RequestHeader,
    peer: &str,
    from_peer: bool,
    mut body: Bytes,
    trace: &RequestTrace,
) -> (Outcome, Hint) {
    // An old version equal to a newer one is handled as that one (`api::WIRE_ALIASES`).
    let version = super::api::wire_version(api, version);
    let started = Instant::now();
    let inflight = &shard.metrics.requests_inflight;
    inflight.set(inflight.get() + 1);
    let ctx = Ctx {
        shard,
        api,
        version,
        header,
        peer,
        from_peer,
        failed: Cell::new(false),
        trace,
        hint: Cell::new(Hint::None),
    };
    let result = match api {
        ApiKey::ApiVersions => api_versions::handle(&ctx, &mut body).await,
        ApiKey::Metadata => metadata::handle(&ctx, &mut body).await,
        ApiKey::Produce => produce::handle(&ctx, &mut body).await,
        ApiKey::Fetch => fetch::handle(&ctx, &mut body).await,
        ApiKey::ListOffsets => list_offsets::handle(&ctx, &mut body).await,
        ApiKey::OffsetForLeaderEpoch => offset_for_leader_epoch::handle(&ctx, &mut body).await,
        ApiKey::CreateTopics => create_topics::handle(&ctx, &mut body).await,
        ApiKey::DeleteTopics => delete_topics::handle(&ctx, &mut body).await,
        ApiKey::CreatePartitions => create_partitions::handle(&ctx, &mut body).await,
        ApiKey::DescribeConfigs => describe_configs::handle(&ctx, &mut body).await,
        ApiKey::AlterConfigs => alter_configs::handle(&ctx, &mut body).await,
        ApiKey::IncrementalAlterConfigs => incremental_alter_configs::handle(&ctx, &mut body).await,
        ApiKey::DescribeCluster => describe_cluster::handle(&ctx, &mut body).await,
        ApiKey::FindCoordinator => find_coordinator::handle(&ctx, &mut body).await,
        ApiKey::InitProducerId => init_producer_id::handle(&ctx, &mut body).await,
        ApiKey::JoinGroup => join_group::handle(&ctx, &mut body).await,
        ApiKey::SyncGroup => sync_group::handle(&ctx, &mut body).await,
        ApiKey::Heartbeat => heartbeat::handle(&ctx, &mut body).await,
        ApiKey::LeaveGroup => leave_group::handle(&ctx, &mut body).await,
        ApiKey::OffsetCommit => offset_commit::handle(&ctx, &mut body).await,
        ApiKey::OffsetFetch => offset_fetch::handle(&ctx, &mut body).await,
        ApiKey::ListGroups => list_groups::handle(&ctx, &mut body).await,
        ApiKey::DescribeGroups => describe_groups::handle(&ctx, &mut body).await,
        ApiKey::DeleteGroups => delete_groups::handle(&ctx, &mut body).await,
        ApiKey::OffsetDelete => offset_delete::handle(&ctx, &mut body).await,
        ApiKey::DeleteRecords => delete_records::handle(&ctx, &mut body).await,
        ApiKey::DescribeLogDirs => describe_log_dirs::handle(&ctx, &mut body).await,
        other => Err(Outcome::Close(format!("API {other:?} is not supported"))),
    };
    let outcome = result.unwrap_or_else(|o| o);
    let failed = ctx.failed.get() || matches!(outcome, Outcome::Close(_));
    shard.metrics.record_request(api, failed, started.elapsed());
    let inflight = &shard.metrics.requests_inflight;
    inflight.set(inflight.get() - 1);
    (outcome, ctx.hint.get())
}

pub type HandlerResult = Result<Outcome, Outcome>;

/// The group coordinator's answers, if it gave exactly one per item of the request (partition,
/// member, group). Another count is a bug: then Err(UNKNOWN_SERVER_ERROR) for every item, and a
/// log line, never 0 for an item nothing was answered for. Not a retriable code: a retry meets
/// the same bug, and the client should report it rather than retry until its timeout.
pub fn one_per_item<T>(answers: Vec<T>, items: usize, api: ApiKey) -> Result<Vec<T>, i16> {
    if answers.len() == items {
        return Ok(answers);
    }
    tracing::error!(
        ?api,
        items,
        answers = answers.len(),
        "the group coordinator's reply does not have one answer per item of the request"
    );
    Err(ResponseError::UnknownServerError.code())
}

/// One error code per item of the request (see [`one_per_item`]).
pub fn codes_per_item(codes: Vec<i16>, items: usize, api: ApiKey) -> Vec<i16> {
    one_per_item(codes, items, api).unwrap_or_else(|code| vec![code; items])
}

/// Sends each group id to its coordinating shard (one call per shard, with that shard's ids)
/// and puts the per-group answers back in request order. A group without an answer gets
/// `fallback(id, code)`: INVALID_GROUP_ID for an id no group can have (not sent), else
/// COORDINATOR_NOT_AVAILABLE if its shard did not answer, or UNKNOWN_SERVER_ERROR if the answer
/// does not match the ids (see [`one_per_item`]).
pub async fn per_group_owner<T>(
    ctx: &Ctx<'_>,
    ids: &[String],
    make: impl Fn(Vec<String>) -> GroupOp,
    extract: impl Fn(GroupReply) -> Option<Vec<T>>,
    fallback: impl Fn(&str, i16) -> T,
) -> Vec<T> {
    let shard = ctx.shard;
    // DescribeGroups and DeleteGroups accept the empty group id, as Kafka does.
    let mut out: Vec<Result<T, i16>> = ids
        .iter()
        .map(|id| {
            Err(group_refused(ctx, id, true)
                .unwrap_or(ResponseError::CoordinatorNotAvailable)
                .code())
        })
        .collect();
    let mut by_owner: Vec<(ShardId, Vec<usize>)> = Vec::new();
    for (i, id) in ids
        .iter()
        .enumerate()
        .filter(|(_, id)| group_refused(ctx, id, true).is_none())
    {
        let owner = shard.group_owner(id);
        match by_owner.iter_mut().find(|(o, _)| *o == owner) {
            Some((_, v)) => v.push(i),
            None => by_owner.push((owner, vec![i])),
        }
    }
    let calls = by_owner.iter().map(|(owner, idx)| {
        let op = make(idx.iter().map(|&i| ids[i].clone()).collect());
        shard.call(*owner, ShardOp::Group(op))
    });
    let replies = futures::future::join_all(calls).await;
    for ((_, idx), reply) in by_owner.iter().zip(replies) {
        let ShardReply::Group(r) = reply else {
            continue;
        };
        match one_per_item(extract(r).unwrap_or_default(), idx.len(), ctx.api) {
            Ok(values) => idx.iter().zip(values).for_each(|(&i, v)| out[i] = Ok(v)),
            Err(code) => idx.iter().for_each(|&i| out[i] = Err(code)),
        }
    }
    out.into_iter()
        .zip(ids)
        .map(|(v, id)| v.unwrap_or_else(|code| fallback(id, code)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_reply_codes_are_errors_never_success() {
        let unknown = ResponseError::UnknownServerError.code();
        assert_eq!(
            codes_per_item(vec![0, 12], 2, ApiKey::OffsetCommit),
            [0, 12]
        );
        assert_eq!(
            codes_per_item(vec![0], 3, ApiKey::OffsetCommit),
            [unknown; 3]
        );
        assert_eq!(
            codes_per_item(Vec::new(), 2, ApiKey::LeaveGroup),
            [unknown; 2]
        );
        assert_eq!(
            codes_per_item(vec![0, 0, 0], 2, ApiKey::OffsetDelete),
            [unknown; 2]
        );
        assert!(codes_per_item(Vec::new(), 0, ApiKey::OffsetDelete).is_empty());
        assert_eq!(
            one_per_item(vec!["a"], 2, ApiKey::DescribeGroups),
            Err(unknown)
        );
    }
}
