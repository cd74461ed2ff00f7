//! A follower shard's fetcher for one leader node: one connection to the same shard of that
//! node's replication listener, one Fetch (v12, with this node as `replica_id`) at a time for
//! every partition followed there, each answer appended, synced and acknowledged by the next
//! fetch from the new durable end.

use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::{join_all, select};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::ResponseError as E;
use strom_cluster::replication::{FetchDecision, FetchRequest as PartFetch, FollowerAction};
use strom_cluster::{LeaderEpoch, Offset};

use super::{FollowerReplica, LogLookup, Replicas};
use crate::clock::now_ms;
use crate::limits::{
    REPLICA_CONNECT_TIMEOUT_MS, REPLICA_FETCH_RESPONSE_BYTES_MAX, REPLICA_RETRY_MS,
};
use crate::shard::Shard;

/// The Fetch version followers send: the first with `LastFetchedEpoch` and `DivergingEpoch`.
const FETCH_VERSION: i16 = 12;

/// Fetches for the partitions this shard follows on `leader` until there are none, or until
/// shutdown.
pub(super) async fn run(
    shard: Rc<Shard>,
    replicas: Rc<Replicas>,
    leader: i32,
    shutdown: Arc<AtomicBool>,
) {
    let me = shard.config.node_id;
    let mut conn: Option<(SocketAddr, TcpStream)> = None;
    let mut correlation = 0i32;
    let mut failures = 0u32;
    tracing::info!(shard = shard.id.0, "fetching from node {leader}");
    loop {
        if shutdown.load(Ordering::Relaxed) {
            break;
        }
        let changed = replicas.changed.listen();
        let followed = replicas.following(leader);
        if followed.is_empty() {
            break;
        }
        let wanted: Vec<(Rc<FollowerReplica>, PartFetch)> = followed
            .into_iter()
            .filter_map(|f| {
                let request = f.state.borrow().next_fetch()?;
                Some((f, request))
            })
            .collect();
        if wanted.is_empty() {
            pause(changed, REPLICA_RETRY_MS).await;
            continue;
        }
        let Some(addr) = leader_address(&shard, leader) else {
            pause(changed, REPLICA_RETRY_MS).await;
            continue;
        };
        if conn.as_ref().is_some_and(|(a, _)| *a != addr) {
            conn = None;
        }
        if conn.is_none() {
            match TcpStream::connect_timeout(
                addr,
                Duration::from_millis(REPLICA_CONNECT_TIMEOUT_MS),
            )
            .await
            {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    conn = Some((addr, stream));
                }
                Err(e) => {
                    failed(&mut failures, &shard, || {
                        format!("connecting to node {leader} at {addr}: {e}")
                    });
                    pause(changed, REPLICA_RETRY_MS).await;
                    continue;
                }
            }
        }
        let Some((_, stream)) = conn.as_mut() else {
            continue;
        };
        correlation = correlation.wrapping_add(1);
        let wait_ms = shard
            .config
            .cluster
            .as_ref()
            .map_or(500, |c| c.replica_fetch_wait_max_ms);
        let max_bytes = shard
            .config
            .cluster
            .as_ref()
            .map_or(1 << 20, |c| c.replica_fetch_max_bytes);
        let request = encode_fetch(me, correlation, wait_ms, max_bytes, &wanted);
        let timeout = Duration::from_millis(wait_ms.max(0) as u64 + REPLICA_CONNECT_TIMEOUT_MS);
        let answer = exchange(stream, &request, correlation, timeout).await;
        let response = match answer {
            Ok(r) => r,
            Err(e) => {
                failed(&mut failures, &shard, || {
                    format!("fetch from node {leader}: {e}")
                });
                conn = None;
                pause(changed, REPLICA_RETRY_MS).await;
                continue;
            }
        };
        failures = 0;
        let any_error = apply(&wanted, response).await;
        if any_error {
            pause(replicas.changed.listen(), REPLICA_RETRY_MS).await;
        }
    }
    replicas.fetchers.borrow_mut().remove(&leader);
    tracing::info!(shard = shard.id.0, "stopped fetching from node {leader}");
}

/// Counts a failed connect or fetch in a row, logging the first and every 50th.
fn failed(failures: &mut u32, shard: &Shard, what: impl FnOnce() -> String) {
    *failures += 1;
    if *failures == 1 || failures.is_multiple_of(50) {
        tracing::warn!(
            shard = shard.id.0,
            failures = *failures,
            "replica fetcher: {}",
            what()
        );
    }
}

/// Waits for `changed` or `ms`, whichever comes first.
async fn pause(changed: event_listener::EventListener, ms: u64) {
    let timer = glommio::timer::Timer::new(Duration::from_millis(ms));
    select(changed, Box::pin(timer)).await;
}

/// Where this shard reaches the same shard of node `leader`: its advertised replication
/// listener, port + shard index. A host name is resolved with the system's resolver (cluster
/// scripts advertise addresses).
fn leader_address(shard: &Shard, leader: i32) -> Option<SocketAddr> {
    let settings = shard.config.cluster.as_ref()?;
    let state = shard.quorum.as_ref()?.load();
    let broker = state.image.brokers.get(&leader)?;
    let endpoint = broker
        .endpoints
        .iter()
        .find(|e| e.listener == settings.replication_listener)?;
    let port = endpoint.port.checked_add(u16::try_from(shard.id.0).ok()?)?;
    if let Ok(ip) = endpoint.host.parse::<std::net::IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    (endpoint.host.as_str(), port)
        .to_socket_addrs()
        .ok()?
        .next()
}

/// The Fetch request (size-prefixed) for `wanted`.
fn encode_fetch(
    me: i32,
    correlation: i32,
    wait_ms: i64,
    partition_max_bytes: i32,
    wanted: &[(Rc<FollowerReplica>, PartFetch)],
) -> Bytes {
    let mut topics: Vec<FetchTopic> = Vec::new();
    for (f, request) in wanted {
        let mut p = FetchPartition::default();
        p.partition = f.key.1;
        p.fetch_offset = request.offset.0;
        p.last_fetched_epoch = request.last_fetched_epoch.map_or(-1, |e| e.0);
        p.current_leader_epoch = request.current_leader_epoch.map_or(-1, |e| e.0);
        p.log_start_offset = f.log.log_start_offset().0;
        p.partition_max_bytes = partition_max_bytes;
        match topics.iter_mut().find(|t| *t.topic == *f.key.0) {
            Some(t) => t.partitions.push(p),
            None => {
                let mut t = FetchTopic::default();
                t.topic = TopicName(StrBytes::from_string(f.key.0.to_string()));
                t.partitions.push(p);
                topics.push(t);
            }
        }
    }
    let mut req = FetchRequest::default();
    req.replica_id = me.into();
    req.max_wait_ms = i32::try_from(wait_ms).unwrap_or(i32::MAX);
    req.min_bytes = 1;
    req.max_bytes = i32::try_from(REPLICA_FETCH_RESPONSE_BYTES_MAX).unwrap_or(i32::MAX);
    req.session_epoch = -1;
    req.topics = topics;
    let mut header = RequestHeader::default();
    header.request_api_key = ApiKey::Fetch as i16;
    header.request_api_version = FETCH_VERSION;
    header.correlation_id = correlation;
    header.client_id = Some(StrBytes::from_static_str("strom-replica"));
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    header
        .encode(
            &mut buf,
            ApiKey::Fetch.request_header_version(FETCH_VERSION),
        )
        .expect("a request header always encodes");
    req.encode(&mut buf, FETCH_VERSION)
        .expect("a Fetch v12 request always encodes");
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf.freeze()
}

/// Sends `request` and reads its answer within `timeout`.
async fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
    correlation: i32,
    timeout: Duration,
) -> Result<FetchResponse, String> {
    let io = async {
        stream
            .write_all(request)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut len = [0u8; 4];
        stream
            .read_exact(&mut len)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let len = i32::from_be_bytes(len);
        // The leader answers at most the response limit, plus one whole batch (KIP-74).
        let max =
            REPLICA_FETCH_RESPONSE_BYTES_MAX + strom_storage::limits::BATCH_BYTES_MAX as usize;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= max)
            .ok_or_else(|| format!("response of {len} bytes (at most {max})"))?;
        let mut body = vec![0u8; len];
        stream
            .read_exact(&mut body)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Ok::<Vec<u8>, String>(body)
    };
    let timer = glommio::timer::Timer::new(timeout);
    let body = match select(Box::pin(io), Box::pin(timer)).await {
        futures::future::Either::Left((r, _)) => r?,
        futures::future::Either::Right(_) => {
            return Err(format!("no answer within {} ms", timeout.as_millis()))
        }
    };
    let mut body = Bytes::from(body);
    let header = ResponseHeader::decode(
        &mut body,
        ApiKey::Fetch.response_header_version(FETCH_VERSION),
    )
    .map_err(|e| format!("decoding the response header: {e}"))?;
    if header.correlation_id != correlation {
        return Err(format!(
            "answer to request {} while waiting for {correlation}",
            header.correlation_id
        ));
    }
    let response = FetchResponse::decode(&mut body, FETCH_VERSION)
        .map_err(|e| format!("decoding the response: {e}"))?;
    if response.error_code != 0 {
        return Err(format!("error {}", response.error_code));
    }
    Ok(response)
}

/// What the leader's answer for one partition means to the follower's machine.
fn decision_of(request: &PartFetch, error: i16, hw: i64, diverging: (i32, i64)) -> FetchDecision {
    match error {
        0 if diverging.0 >= 0 => FetchDecision::Diverging {
            epoch: LeaderEpoch(diverging.0),
            end_offset: Offset(diverging.1),
        },
        0 => FetchDecision::Read {
            from: request.offset,
            high_watermark: Offset(hw),
        },
        // The leader's log end offset comes in the high watermark field (see leader.rs).
        e if e == E::OffsetOutOfRange.code() => FetchDecision::OffsetOutOfRange {
            log_end: Offset(hw),
        },
        e if e == E::FencedLeaderEpoch.code() => FetchDecision::FencedLeaderEpoch,
        e if e == E::NotLeaderOrFollower.code() => FetchDecision::NotLeader,
        _ => FetchDecision::UnknownLeaderEpoch,
    }
}

/// Carries out the answer: appends, truncations, one sync per appended log. Returns whether
/// any partition had an error (the fetcher then pauses before the next fetch).
async fn apply(wanted: &[(Rc<FollowerReplica>, PartFetch)], response: FetchResponse) -> bool {
    let mut any_error = false;
    let mut appended: Vec<Rc<FollowerReplica>> = Vec::new();
    for t in response.responses {
        for p in t.partitions {
            let Some((f, request)) = wanted
                .iter()
                .find(|(f, _)| *f.key.0 == *t.topic.0.as_str() && f.key.1 == p.partition_index)
            else {
                continue;
            };
            if f.removed.get() {
                continue;
            }
            any_error |= p.error_code != 0;
            let decision = decision_of(
                request,
                p.error_code,
                p.high_watermark,
                (p.diverging_epoch.epoch, p.diverging_epoch.end_offset),
            );
            let records = p.records.filter(|r| !r.is_empty());
            let action = f.state.borrow_mut().on_fetch_response(
                request,
                &decision,
                records.is_some(),
                &LogLookup(&f.log),
            );
            match action {
                FollowerAction::Append { .. } => {
                    let records = records.unwrap_or_default();
                    let result = f.log.append_replicated(&records, now_ms()).await;
                    if let Err(e) = &result {
                        tracing::error!(
                            "{}-{}: appending the leader's records: {e}",
                            f.key.0,
                            f.key.1
                        );
                        any_error = true;
                    }
                    let epoch = f.log.latest_epoch().unwrap_or(LeaderEpoch(0));
                    f.state
                        .borrow_mut()
                        .on_local_append(f.log.log_end_offset(), epoch);
                    appended.push(f.clone());
                }
                FollowerAction::Truncate { to } => {
                    let before = (f.log.log_end_offset(), f.log.latest_epoch());
                    match f.log.truncate_to(to, now_ms()).await {
                        Ok(end) => {
                            if (end, f.log.latest_epoch()) == before {
                                // Nothing changed: asking again now would diverge again. Wait for
                                // the next assignment or the retry pause.
                                any_error = true;
                            }
                            tracing::info!(
                                "{}-{}: truncated to {} to match the leader",
                                f.key.0,
                                f.key.1,
                                end.0
                            );
                            f.state.borrow_mut().on_truncated(end, f.log.latest_epoch());
                        }
                        Err(e) => {
                            tracing::error!(
                                "{}-{}: truncating to {} failed: {e}",
                                f.key.0,
                                f.key.1,
                                to.0
                            );
                            any_error = true;
                        }
                    }
                }
                FollowerAction::Backoff
                | FollowerAction::AwaitAssignment
                | FollowerAction::Stale => {}
            }
            update_high_watermark(f);
        }
    }
    // One group-commit sync per log, all logs at once; the next fetch reports the new ends.
    let syncs = appended.iter().map(|f| async move {
        if let Err(e) = f.log.flush().await {
            tracing::error!("{}-{}: sync failed: {e}", f.key.0, f.key.1);
        }
        f.state
            .borrow_mut()
            .on_local_durable(f.log.durable_end_offset());
        update_high_watermark(f);
    });
    join_all(syncs).await;
    any_error
}

/// The follower's log shows the leader's high watermark as far as it holds the data.
fn update_high_watermark(f: &FollowerReplica) {
    let hw = f
        .state
        .borrow()
        .high_watermark()
        .min(f.log.log_end_offset());
    if hw > f.log.high_watermark() {
        f.log.set_high_watermark(hw);
    }
}
