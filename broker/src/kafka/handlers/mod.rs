//! One file per Kafka API. Each handler decodes its request, does the work (forwarding to the
//! owning shards where partitions are involved) and encodes its response.

pub mod alter_configs;
pub mod api_versions;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_topics;
pub mod describe_cluster;
pub mod describe_configs;
pub mod fetch;
pub mod find_coordinator;
pub mod incremental_alter_configs;
pub mod list_offsets;
pub mod metadata;
pub mod produce;

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use strom_net::OutChunk;

use super::codec::frame_response;
use crate::metadata::controller::{ControllerError, ControllerOp};
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
}

impl Ctx<'_> {
    pub fn respond<R: Encodable>(&self, body: &R) -> Outcome {
        match frame_response(self.api, self.version, self.header.correlation_id, body) {
            Ok(b) => Outcome::Respond(vec![OutChunk::Bytes(b)]),
            Err(e) => Outcome::Close(format!("encoding {:?} v{} response: {e}", self.api, self.version)),
        }
    }

    pub fn decode<R: Decodable>(&self, body: &mut Bytes) -> Result<R, Outcome> {
        R::decode(body, self.version)
            .map_err(|e| Outcome::Close(format!("malformed {:?} v{} request: {e}", self.api, self.version)))
    }

    /// Runs a metadata change on the controller (shard 0).
    pub async fn controller(&self, op: ControllerOp) -> Result<(), ControllerError> {
        match self.shard.call(0, ShardOp::Controller(op)).await {
            ShardReply::Controller(r) => r,
            _ => Err(ControllerError { code: kafka_protocol::ResponseError::UnknownServerError.code(), message: "controller unavailable".into() }),
        }
    }
}

pub fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

pub async fn dispatch(shard: &Rc<Shard>, api: ApiKey, version: i16, header: RequestHeader, mut body: Bytes) -> Outcome {
    let ctx = Ctx { shard, api, version, header };
    let result = match api {
        ApiKey::ApiVersions => api_versions::handle(&ctx, &mut body).await,
        ApiKey::Metadata => metadata::handle(&ctx, &mut body).await,
        ApiKey::Produce => produce::handle(&ctx, &mut body).await,
        ApiKey::Fetch => fetch::handle(&ctx, &mut body).await,
        ApiKey::ListOffsets => list_offsets::handle(&ctx, &mut body).await,
        ApiKey::CreateTopics => create_topics::handle(&ctx, &mut body).await,
        ApiKey::DeleteTopics => delete_topics::handle(&ctx, &mut body).await,
        ApiKey::CreatePartitions => create_partitions::handle(&ctx, &mut body).await,
        ApiKey::DescribeConfigs => describe_configs::handle(&ctx, &mut body).await,
        ApiKey::AlterConfigs => alter_configs::handle(&ctx, &mut body).await,
        ApiKey::IncrementalAlterConfigs => incremental_alter_configs::handle(&ctx, &mut body).await,
        ApiKey::DescribeCluster => describe_cluster::handle(&ctx, &mut body).await,
        ApiKey::FindCoordinator => find_coordinator::handle(&ctx, &mut body).await,
        other => Err(Outcome::Close(format!("API {other:?} is not supported"))),
    };
    result.unwrap_or_else(|o| o)
}

pub type HandlerResult = Result<Outcome, Outcome>;
