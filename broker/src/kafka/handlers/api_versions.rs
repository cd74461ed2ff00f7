//! ApiVersions (key 18): advertises the table in `kafka::api`.

use bytes::Bytes;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};
use kafka_protocol::ResponseError as E;
use strom_net::OutChunk;

use super::{Ctx, HandlerResult, Outcome};
use crate::kafka::api::SUPPORTED_APIS;
use crate::kafka::codec::frame_response;

fn response(error_code: i16) -> ApiVersionsResponse {
    let mut r = ApiVersionsResponse::default();
    r.error_code = error_code;
    r.api_keys = SUPPORTED_APIS
        .iter()
        .map(|a| {
            let mut v = ApiVersion::default();
            v.api_key = a.key as i16;
            v.min_version = a.advertised_min;
            v.max_version = a.max;
            v
        })
        .collect();
    r
}

pub async fn handle(ctx: &Ctx<'_>, body: &mut Bytes) -> HandlerResult {
    let _req: ApiVersionsRequest = ctx.decode(body)?;
    Ok(ctx.respond(&response(0)))
}

/// KIP-511: a version newer than ours gets a v0 response with UNSUPPORTED_VERSION and our
/// ranges, so the client retries with a version we know.
pub fn unsupported_version(correlation_id: i32) -> Outcome {
    match frame_response(
        ApiKey::ApiVersions,
        0,
        correlation_id,
        &response(E::UnsupportedVersion.code()),
    ) {
        Ok(b) => Outcome::Respond(vec![OutChunk::Bytes(b)]),
        Err(e) => Outcome::Close(format!("encoding ApiVersions fallback: {e}")),
    }
}
