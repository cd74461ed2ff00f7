//! Request header decoding and response framing.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ResponseHeader};
use kafka_protocol::protocol::Encodable;

/// Encodes `[size][response header][body]` for `api`/`version`.
pub fn frame_response<R: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> anyhow_free::Result<Bytes> {
    let header_version = response_header_version(api, version);
    let mut buf =
        BytesMut::with_capacity(64 + body.compute_size(version).map_err(anyhow_free::wrap)?);
    buf.put_i32(0);
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    header
        .encode(&mut buf, header_version)
        .map_err(anyhow_free::wrap)?;
    body.encode(&mut buf, version).map_err(anyhow_free::wrap)?;
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

/// ApiVersions responses always use header v0, so a client that sent a version we do not know
/// can still read the error and our ranges (KIP-511).
pub fn response_header_version(api: ApiKey, version: i16) -> i16 {
    if api == ApiKey::ApiVersions {
        0
    } else {
        api.response_header_version(version)
    }
}

/// The protocol crate reports errors as `anyhow::Error`; this keeps that type out of our APIs.
pub mod anyhow_free {
    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    pub struct CodecError(pub String);
    pub type Result<T> = std::result::Result<T, CodecError>;
    pub fn wrap(e: impl std::fmt::Display) -> CodecError {
        CodecError(e.to_string())
    }
}
