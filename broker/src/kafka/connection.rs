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
//!
//! A connection whose requests all go to partitions of another shard moves there
//! (`affinity.rs`): between two requests, with nothing in flight, the reader hands the socket,
//! the bytes it has read ahead and the connection's slot to that shard, which serves it from
//! then on.

use std::cell::Cell;
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::{select, Either};
use glommio::channels::local_channel;
use glommio::net::TcpStream;
use glommio::task::JoinHandle;
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::Decodable;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use strom_net::{ConnectionSlot, FrameReader, OutChunk, ResponseSender};

use super::affinity::Affinity;
use super::api;
use super::handlers::{self, Outcome};
use crate::clock::now_ms;
use crate::ids::ShardId;
use crate::limits::REQUEST_BODY_STALL_MS_MAX;
use crate::metrics::stages::RequestTrace;
use crate::shard::{Shard, ShardOp, ShardReply};

/// A connection moving to another shard: the socket, the bytes read from it and not yet
/// handled, its place in the connection limits, and when it moved.
pub struct Handoff {
    fd: OwnedFd,
    buffered: BytesMut,
    slot: ConnectionSlot,
    moved_at_ms: i64,
}

/// Serves a connection accepted on this shard.
pub fn spawn(shard: Rc<Shard>, stream: TcpStream, slot: ConnectionSlot) {
    spawn_served(shard, stream, slot, BytesMut::new(), None, false);
}

/// Serves a connection accepted on this shard's replication listener: a peer node's follower
/// fetcher. Such a connection stays on this shard and may send replica fetches.
pub fn spawn_peer(shard: Rc<Shard>, stream: TcpStream, slot: ConnectionSlot) {
    spawn_served(shard, stream, slot, BytesMut::new(), None, true);
}

/// Serves a connection another shard handed over.
fn adopt(shard: &Rc<Shard>, handoff: Handoff) {
    let Handoff {
        fd,
        buffered,
        slot,
        moved_at_ms,
    } = handoff;
    // SAFETY: `fd` is a connected TCP socket the handoff owned; the stream takes it over.
    let stream = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
    spawn_served(
        shard.clone(),
        stream,
        slot,
        buffered,
        Some(moved_at_ms),
        false,
    );
}

fn spawn_served(
    shard: Rc<Shard>,
    stream: TcpStream,
    slot: ConnectionSlot,
    buffered: BytesMut,
    moved_at_ms: Option<i64>,
    from_peer: bool,
) {
    let open = &shard.metrics.connections_open;
    open.set(open.get() + 1);
    glommio::spawn_local(async move {
        let moving = serve(
            shard.clone(),
            stream,
            slot,
            buffered,
            moved_at_ms,
            from_peer,
        )
        .await;
        let open = &shard.metrics.connections_open;
        open.set(open.get() - 1);
        if let Some((to, handoff)) = moving {
            match shard
                .call(
                    to,
                    ShardOp::AdoptConnection(Box::new(move |shard| adopt(shard, handoff))),
                )
                .await
            {
                ShardReply::Done(Ok(())) => {
                    let n = &shard.stats.connections_migrated;
                    n.set(n.get() + 1);
                }
                // The target is shutting down or its queue is full: the handoff (and with it
                // the socket) is dropped and the client reconnects.
                _ => tracing::debug!(
                    shard = shard.id.0,
                    "could not hand a connection to shard {to}; closed"
                ),
            }
        }
    })
    .detach();
}

/// Serves the connection until it closes (None) or moves to another shard (Some).
async fn serve(
    shard: Rc<Shard>,
    stream: TcpStream,
    slot: ConnectionSlot,
    buffered: BytesMut,
    moved_at_ms: Option<i64>,
    from_peer: bool,
) -> Option<(ShardId, Handoff)> {
    let peer: Rc<str> = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into())
        .into();
    let sender = match ResponseSender::new(stream.as_raw_fd(), shard.config.send_wait_ms_max) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("{peer}: cannot set up the connection: {e}");
            return None;
        }
    };
    let (tx, rx) = local_channel::new_bounded::<JoinHandle<Answer>>(
        shard.config.connection_requests_inflight_max,
    );
    // Requests read and not yet answered (or dropped, for acks=0): a connection waiting for a
    // long poll is busy, not idle.
    let inflight = Rc::new(Cell::new(0usize));
    let writer = glommio::spawn_local(write_responses(
        shard.clone(),
        sender,
        rx,
        peer.to_string(),
        inflight.clone(),
    ));

    let idle = Duration::from_millis(shard.config.connection_idle_ms);
    // A started request may not stall longer than an idle connection may live.
    let stall =
        Duration::from_millis(REQUEST_BODY_STALL_MS_MAX.min(shard.config.connection_idle_ms));
    let mut reader = FrameReader::with_buffered(stream, shard.config.request_bytes_max, buffered);
    let progress = reader.progress();
    let affinity = Rc::new(Affinity::new(shard.id, moved_at_ms));
    let mut moving_to = None;
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
                tracing::debug!(
                    "{peer}: closing connection idle for {} ms (connections.max.idle.ms)",
                    idle.as_millis()
                );
                count_idle_close(&shard);
                break;
            }
        };
        // Between requests with nothing in flight, the connection may move (responses stay in
        // order: every earlier one is written before the handoff).
        if shard.config.connection_migrate && !from_peer && inflight.get() == 0 {
            if let Some(to) = affinity.target(now_ms()) {
                moving_to = Some(to);
                break;
            }
        }
        // Back-pressure: nothing more is read from this connection until the request fits.
        let permit = shard.request_budget.acquire(4 + len).await;
        let (frame, trace) =
            match quiet_bounded(reader.next_frame(), &progress, || false, stall).await {
                Some(Ok(Some(f))) => (f.freeze(), RequestTrace::new()),
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
                let affinity = affinity.clone();
                glommio::spawn_local(async move {
                    trace.started();
                    let (outcome, hint) = handlers::dispatch(
                        &shard, api, version, header, &peer, from_peer, body, &trace,
                    )
                    .await;
                    affinity.observe(hint);
                    trace.encoded();
                    drop(permit);
                    Answer {
                        outcome,
                        trace: Some((api, trace)),
                    }
                })
                .detach()
            }
            Err(outcome) => {
                drop(permit);
                let stop = matches!(outcome, Outcome::Close(_));
                let t = glommio::spawn_local(async move {
                    Answer {
                        outcome,
                        trace: None,
                    }
                })
                .detach();
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
    let sender = writer.await;
    let to = moving_to?;
    let sender = sender?;
    let (stream, buffered) = reader.into_parts();
    // The sender's descriptor keeps the socket open; this one is closed.
    drop(stream);
    Some((
        to,
        Handoff {
            fd: sender.into_fd(),
            buffered,
            slot,
            moved_at_ms: now_ms(),
        },
    ))
}

/// Awaits `fut` unless `quiet` passes with no byte read (`progress` unchanged) and `busy()`
/// false, checked every `quiet`: so a connection is given up between one and two `quiet`
/// periods after its last byte. The future is polled once before any timer exists, so a frame
/// already in the buffer costs no timer.
async fn quiet_bounded<T>(
    fut: impl Future<Output = T>,
    progress: &Cell<u64>,
    busy: impl Fn() -> bool,
    quiet: Duration,
) -> Option<T> {
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
        return Err(Outcome::Close(format!(
            "request of {} bytes is too short for a header",
            frame.len()
        )));
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
        return Err(Outcome::Close(format!(
            "{api:?} v{version} is not supported"
        )));
    }
    let header = RequestHeader::decode(&mut frame, api.request_header_version(version))
        .map_err(|e| Outcome::Close(format!("malformed {api:?} v{version} request header: {e}")))?;
    Ok((api, version, header, frame))
}

/// A handler's result, with its stage stamps when it was a decodable request.
struct Answer {
    outcome: Outcome,
    trace: Option<(ApiKey, RequestTrace)>,
}

async fn write_responses(
    shard: Rc<Shard>,
    mut sender: ResponseSender,
    rx: local_channel::LocalReceiver<JoinHandle<Answer>>,
    peer: String,
    inflight: Rc<Cell<usize>>,
) -> Option<ResponseSender> {
    while let Some(task) = rx.recv().await {
        let Answer { outcome, trace } = task.await.unwrap_or_else(|| Answer {
            outcome: Outcome::Close("request handler was cancelled".into()),
            trace: None,
        });
        inflight.set(inflight.get().saturating_sub(1));
        if let Some((_, trace)) = &trace {
            trace.write_start();
        }
        let chunks: Vec<OutChunk> = match outcome {
            Outcome::Respond(chunks) => chunks,
            Outcome::NoResponse => {
                if let Some((api, trace)) = &trace {
                    shard.metrics.record_stages(*api, trace);
                }
                continue;
            }
            Outcome::Close(why) => {
                tracing::warn!("{peer}: closing connection: {why}");
                sender.shutdown();
                return None;
            }
        };
        if let Err(e) = sender.send(&chunks, false).await {
            tracing::debug!("{peer}: write failed, closing: {e}");
            sender.shutdown();
            return None;
        }
        if let Some((api, trace)) = &trace {
            trace.written();
            shard.metrics.record_stages(*api, trace);
        }
    }
    Some(sender)
}
