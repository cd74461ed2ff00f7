//! One client connection: a reader that decodes frames and starts a handler task per request,
//! and a writer that sends the responses in request order. Up to `queued.max.requests`
//! requests of one connection are in flight at once.
//!
//! A malformed request or a frame over `socket.request.max.bytes` closes the connection with a
//! log line; the requests before it still get their responses.

use std::rc::Rc;

use bytes::Bytes;
use glommio::channels::local_channel;
use glommio::net::TcpStream;
use glommio::task::JoinHandle;
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::Decodable;
use std::os::fd::AsRawFd;
use strom_net::{FrameReader, OutChunk, ResponseSender};

use super::handlers::{self, Outcome};
use super::api;
use crate::shard::Shard;

pub async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    let peer: Rc<str> = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into()).into();
    let sender = match ResponseSender::new(stream.as_raw_fd(), shard.config.send_wait_ms_max) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("{peer}: cannot set up the connection: {e}");
            return;
        }
    };
    let (tx, rx) = local_channel::new_bounded::<JoinHandle<Outcome>>(shard.config.connection_requests_inflight_max);
    let writer = glommio::spawn_local(write_responses(sender, rx, peer.to_string()));

    let mut reader = FrameReader::new(stream, shard.config.request_bytes_max);
    loop {
        let frame = match reader.next_frame().await {
            Ok(Some(f)) => f.freeze(),
            Ok(None) => break,
            Err(e) => {
                tracing::warn!("{peer}: closing connection: {e}");
                break;
            }
        };
        let task = match parse(frame) {
            Ok((api, version, header, body)) => {
                let shard = shard.clone();
                let peer = peer.clone();
                glommio::spawn_local(async move { handlers::dispatch(&shard, api, version, header, &peer, body).await })
                    .detach()
            }
            Err(outcome) => {
                let stop = matches!(outcome, Outcome::Close(_));
                let t = glommio::spawn_local(async move { outcome }).detach();
                if tx.send(t).await.is_err() || stop {
                    break;
                }
                continue;
            }
        };
        if tx.send(task).await.is_err() {
            break;
        }
    }
    drop(tx);
    writer.await;
}

/// Splits a frame into API, version, header and body; answers what cannot go to a handler.
fn parse(mut frame: Bytes) -> Result<(ApiKey, i16, RequestHeader, Bytes), Outcome> {
    if frame.len() < 8 {
        return Err(Outcome::Close(format!("request of {} bytes is too short for a header", frame.len())));
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let Ok(api) = ApiKey::try_from(key) else {
        return Err(Outcome::Close(format!("unknown API key {key}")));
    };
    let Some(support) = api::support(api) else {
        return Err(Outcome::Close(format!("API {api:?} is not supported")));
    };
    if version < support.decode_min || version > support.max {
        if api == ApiKey::ApiVersions {
            // KIP-511: answer in v0 with UNSUPPORTED_VERSION and our ranges.
            return Err(handlers::api_versions::unsupported_version(correlation_id));
        }
        return Err(Outcome::Close(format!("{api:?} v{version} is not supported")));
    }
    let header = RequestHeader::decode(&mut frame, api.request_header_version(version))
        .map_err(|e| Outcome::Close(format!("malformed {api:?} v{version} request header: {e}")))?;
    Ok((api, version, header, frame))
}

async fn write_responses(mut sender: ResponseSender, rx: local_channel::LocalReceiver<JoinHandle<Outcome>>, peer: String) {
    while let Some(task) = rx.recv().await {
        let outcome = task.await.unwrap_or_else(|| Outcome::Close("request handler was cancelled".into()));
        let chunks: Vec<OutChunk> = match outcome {
            Outcome::Respond(chunks) => chunks,
            Outcome::NoResponse => continue,
            Outcome::Close(why) => {
                tracing::warn!("{peer}: closing connection: {why}");
                sender.shutdown();
                return;
            }
        };
        if let Err(e) = sender.send(&chunks, false).await {
            tracing::debug!("{peer}: write failed, closing: {e}");
            sender.shutdown();
            return;
        }
    }
}
