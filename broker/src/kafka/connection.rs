//! One client connection: a reader that decodes frames and starts a handler task per request,
//! and a writer that sends the responses in request order. Up to `queued.max.requests`
//! requests of one connection are in flight at once.
//!
//! Memory: each request is charged to the shard's request budget (`queued.max.request.bytes`)
//! from its length prefix, before its body is read; while the charge does not fit the reader
//! stops reading. The charge is released when the request's handler is done. A connection with
//! nothing in flight and no byte received for `connections.max.idle.ms` is closed, and so is one
//! whose started request receives no byte for `REQUEST_BODY_STALL_MS_MAX` (or the idle time, if
//! shorter).
//!
//! A malformed request or a frame over `socket.request.max.bytes` closes the connection with a
//! log line; the requests before it still get their responses.

use std::cell::Cell;
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::{select, Either};
use glommio::channels::local_channel;
use glommio::net::TcpStream;
use glommio::task::JoinHandle;
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::Decodable;
use std::os::fd::AsRawFd;
use strom_net::{FrameReader, OutChunk, ResponseSender};

use super::handlers::{self, Outcome};
use super::api;
use crate::limits::REQUEST_BODY_STALL_MS_MAX;
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
    // Requests read and not yet answered (or dropped, for acks=0): a connection waiting for a
    // long poll is busy, not idle.
    let inflight = Rc::new(Cell::new(0usize));
    let writer = glommio::spawn_local(write_responses(sender, rx, peer.to_string(), inflight.clone()));

    let idle = Duration::from_millis(shard.config.connection_idle_ms);
    // A started request may not stall longer than an idle connection may live.
    let stall = Duration::from_millis(REQUEST_BODY_STALL_MS_MAX.min(shard.config.connection_idle_ms));
    let mut reader = FrameReader::new(stream, shard.config.request_bytes_max);
    let progress = reader.progress();
    loop {
        let busy = || inflight.get() > 0;
        let len = match quiet_bounded(reader.next_len(), &progress, busy, idle).await {
            Some(Ok(Some(len))) => len,
            Some(Ok(None)) => break,
            Some(Err(e)) => {
                tracing::warn!("{peer}: closing connection: {e}");
                break;
            }
            None => {
                tracing::debug!("{peer}: closing connection idle for {} ms (connections.max.idle.ms)", idle.as_millis());
                count_idle_close(&shard);
                break;
            }
        };
        // Back-pressure: nothing more is read from this connection until the request fits.
        let permit = shard.request_budget.acquire(4 + len).await;
        let frame = match quiet_bounded(reader.next_frame(), &progress, || false, stall).await {
            Some(Ok(Some(f))) => f.freeze(),
            Some(Ok(None)) => break,
            Some(Err(e)) => {
                tracing::warn!("{peer}: closing connection: {e}");
                break;
            }
            None => {
                tracing::warn!(
                    "{peer}: closing connection: no byte of a {len}-byte request arrived for {} ms",
                    stall.as_millis()
                );
                count_idle_close(&shard);
                break;
            }
        };
        inflight.set(inflight.get() + 1);
        let task = match parse(frame) {
            Ok((api, version, header, body)) => {
                let shard = shard.clone();
                let peer = peer.clone();
                glommio::spawn_local(async move {
                    let outcome = handlers::dispatch(&shard, api, version, header, &peer, body).await;
                    drop(permit);
                    outcome
                })
                .detach()
            }
            Err(outcome) => {
                drop(permit);
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

/// Awaits `fut` unless `quiet` passes with no byte read (`progress` unchanged) and `busy()`
/// false, checked every `quiet`: so a connection is given up between one and two `quiet`
/// periods after its last byte. The future is polled once before any timer exists, so a frame
/// already in the buffer costs no timer.
async fn quiet_bounded<T>(fut: impl Future<Output = T>, progress: &Cell<u64>, busy: impl Fn() -> bool, quiet: Duration) -> Option<T> {
    let mut fut = pin!(fut);
    let mut seen = progress.get();
    loop {
        match select(fut.as_mut(), pin!(glommio::timer::sleep(quiet))).await {
            Either::Left((v, _)) => return Some(v),
            Either::Right(_) => {
                let now = progress.get();
                if now == seen && !busy() {
                    return None;
                }
                seen = now;
            }
        }
    }
}

fn count_idle_close(shard: &Shard) {
    let closed = &shard.stats.connections_idle_closed;
    closed.set(closed.get() + 1);
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

async fn write_responses(mut sender: ResponseSender, rx: local_channel::LocalReceiver<JoinHandle<Outcome>>, peer: String, inflight: Rc<Cell<usize>>) {
    while let Some(task) = rx.recv().await {
        let outcome = task.await.unwrap_or_else(|| Outcome::Close("request handler was cancelled".into()));
        inflight.set(inflight.get().saturating_sub(1));
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
