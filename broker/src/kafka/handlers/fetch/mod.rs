//! Fetch (key 1): reads whole batches from the owning shards and sends them zero-copy.
//!
//! Long polling: if fewer than `min_bytes` are available, the request waits (on the owners'
//! high-watermark listeners) until data arrives or `max_wait_ms` passes, then reads again.
//! Limits: `partition_max_bytes` per partition, `max_bytes` per response; the first partition
//! with data is always returned whole even if larger (KIP-74), later ones only if they fit.
//! Fetch sessions (KIP-227) are not kept: every response has session id 0, so clients send
//! full requests, which is what the protocol prescribes for a broker without sessions.

pub(crate) mod encode;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{select, select_all};
use kafka_protocol::messages::FetchRequest;
use kafka_protocol::ResponseError as E;

use super::{Ctx, HandlerResult, Outcome};
use crate::ids::{PartitionId, ShardId};
use crate::shard::ops::{FetchPart, FetchResult};
use crate::shard::replication::ReplicaFetchPart;
use crate::shard::{ShardOp, ShardReply};
use encode::{FetchOut, PartitionOut, TopicOut};

/// Longest a fetch may wait, whatever the client asks (bounds parked requests).
const FETCH_WAIT_MS_MAX: u64 = 60_000;

struct Wanted {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    max_bytes: u32,
    owner: Option<ShardId>,
    /// Answered without reading: led by another node (NOT_LEADER_OR_FOLLOWER), or the client's
    /// current leader epoch is older or newer than the partition's (KIP-320).
    refused: Option<E>,
}

fn error_result(code: E) -> FetchResult {
    FetchResult {
        error: code.code(),
        high_watermark: -1,
        last_stable_offset: -1,
        log_start_offset: -1,
        slice: None,
        diverging_epoch: None,
        current_leader: None,
    }
}

pub async fn handle(ctx: &Ctx<'_>, body: &mut Bytes) -> HandlerResult {
    let req: FetchRequest = ctx.decode(body)?;
    let started = Instant::now();
    let wait = Duration::from_millis((req.max_wait_ms.max(0) as u64).min(FETCH_WAIT_MS_MAX));
    let response_max = if req.max_bytes <= 0 {
        i32::MAX as u32
    } else {
        req.max_bytes as u32
    };
    if req.replica_id.0 >= 0 {
        return Ok(replica_fetch(ctx, &req, wait, response_max).await);
    }
    let meta = ctx.shard.meta();
    let mut wanted = Vec::new();
    let mut shape: Vec<(String, usize)> = Vec::new();
    for t in &req.topics {
        let name: Arc<str> = Arc::from(t.topic.0.as_str());
        shape.push((name.to_string(), t.partitions.len()));
        for p in &t.partitions {
            wanted.push(Wanted {
                topic: name.clone(),
                partition: p.partition,
                offset: p.fetch_offset,
                max_bytes: (p.partition_max_bytes.max(0) as u32).min(response_max),
                owner: meta.owner(&name, PartitionId(p.partition)),
                refused: if super::led_elsewhere(ctx, &name, p.partition).is_some() {
                    Some(E::NotLeaderOrFollower)
                } else {
                    super::epoch_fenced(&meta, &name, p.partition, p.current_leader_epoch)
                },
            });
        }
    }
    let mut results = loop {
        let mut results = read_round(ctx, &wanted).await;
        let bytes = apply_response_limit(&mut results, response_max);
        let any_error = results.iter().any(|r| r.error != 0);
        let elapsed = started.elapsed();
        if bytes >= req.min_bytes.max(0) as u64 || any_error || elapsed >= wait {
            break results;
        }
        wait_for_data(ctx, &wanted, &results, wait - elapsed).await;
        if started.elapsed() >= wait {
            // One last read after the deadline: data may have arrived while waiting.
            let mut results = read_round(ctx, &wanted).await;
            apply_response_limit(&mut results, response_max);
            break results;
        }
    };
    for (w, r) in wanted.iter_mut().zip(results.iter_mut()) {
        ctx.note_error(r.error);
        if let Some(s) = &r.slice {
            ctx.shard.metrics.add_bytes_out(&w.topic, u64::from(s.len));
        }
        if r.error == E::NotLeaderOrFollower.code() {
            r.current_leader = super::led_elsewhere(ctx, &w.topic, w.partition);
        }
    }
    let parts = wanted.iter().map(|w| w.partition).collect();
    Ok(respond(ctx, &req, shape, parts, results))
}

/// The response: `results` in request order, shaped as the request's topics.
fn respond(
    ctx: &Ctx<'_>,
    req: &FetchRequest,
    shape: Vec<(String, usize)>,
    partitions: Vec<i32>,
    results: Vec<FetchResult>,
) -> Outcome {
    let mut it = partitions.into_iter().zip(results);
    let topics = shape
        .into_iter()
        .map(|(name, n)| TopicOut {
            name,
            partitions: it
                .by_ref()
                .take(n)
                .map(|(partition, result)| PartitionOut { partition, result })
                .collect(),
        })
        .collect();
    let out = FetchOut {
        error_code: 0,
        session_id: 0,
        read_committed: req.isolation_level == 1,
        topics,
    };
    Outcome::Respond(encode::encode(ctx.version, ctx.header.correlation_id, &out))
}

/// A follower replica's fetch (`replica_id` set): accepted only on the replication listener,
/// where peers connect; anywhere else every partition gets TOPIC_AUTHORIZATION_FAILED, as Kafka
/// answers a replica fetch without the cluster permission, so a client cannot pose as a
/// replica and move the high watermark or the ISR. Each owning shard answers its partitions
/// (replicas of a partition use the same shard on every node, so this is the shard the
/// connection is on) and long-polls for records.
async fn replica_fetch(
    ctx: &Ctx<'_>,
    req: &FetchRequest,
    wait: Duration,
    response_max: u32,
) -> Outcome {
    let meta = ctx.shard.meta();
    let allowed = ctx.from_peer && ctx.shard.replicas.is_some();
    if !allowed {
        tracing::warn!(
            "{}: refusing a replica fetch (replica_id {}) outside the replication listener",
            ctx.peer,
            req.replica_id.0
        );
    }
    let mut shape = Vec::new();
    let mut partitions = Vec::new();
    let mut results: Vec<Option<FetchResult>> = Vec::new();
    let mut per_shard: BTreeMap<ShardId, Vec<(usize, ReplicaFetchPart)>> = BTreeMap::new();
    for t in &req.topics {
        let name: Arc<str> = Arc::from(t.topic.0.as_str());
        shape.push((name.to_string(), t.partitions.len()));
        for p in &t.partitions {
            let i = results.len();
            partitions.push(p.partition);
            results.push(None);
            if !allowed {
                results[i] = Some(error_result(E::TopicAuthorizationFailed));
                continue;
            }
            let Some(owner) = meta.owner(&name, PartitionId(p.partition)) else {
                results[i] = Some(error_result(E::UnknownTopicOrPartition));
                continue;
            };
            per_shard.entry(owner).or_default().push((
                i,
                ReplicaFetchPart {
                    topic: name.clone(),
                    partition: p.partition,
                    offset: p.fetch_offset,
                    last_fetched_epoch: p.last_fetched_epoch,
                    current_leader_epoch: p.current_leader_epoch,
                    max_bytes: (p.partition_max_bytes.max(0) as u32).min(response_max),
                },
            ));
        }
    }
    let node = req.replica_id.0;
    let wait_ms = wait.as_millis() as u64;
    let calls = per_shard.into_iter().map(|(s, parts)| async move {
        let (idx, parts): (Vec<usize>, Vec<ReplicaFetchPart>) = parts.into_iter().unzip();
        let op = ShardOp::ReplicaFetch {
            node,
            parts,
            wait_ms,
        };
        (idx, ctx.call_owner(s, op).await)
    });
    for (idx, reply) in futures::future::join_all(calls).await {
        let mut answers = match reply {
            ShardReply::Fetch(rs) => rs.into_iter().map(Some).collect(),
            _ => Vec::new(),
        };
        answers.resize(idx.len(), None);
        for (i, r) in idx.into_iter().zip(answers) {
            results[i] = Some(r.unwrap_or_else(|| error_result(E::NotLeaderOrFollower)));
        }
    }
    let mut results: Vec<FetchResult> = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| error_result(E::UnknownServerError)))
        .collect();
    apply_response_limit(&mut results, response_max);
    for r in &results {
        ctx.note_error(r.error);
    }
    respond(ctx, req, shape, partitions, results)
}

/// Reads every wanted partition once, on its owner, in parallel across shards.
async fn read_round(ctx: &Ctx<'_>, wanted: &[Wanted]) -> Vec<FetchResult> {
    let mut results: Vec<Option<FetchResult>> = vec![None; wanted.len()];
    let mut per_shard: BTreeMap<ShardId, Vec<usize>> = BTreeMap::new();
    for (i, w) in wanted.iter().enumerate() {
        match w.owner {
            _ if w.refused.is_some() => {
                results[i] = Some(error_result(w.refused.unwrap_or(E::NotLeaderOrFollower)));
            }
            Some(s) => per_shard.entry(s).or_default().push(i),
            None => results[i] = Some(error_result(E::UnknownTopicOrPartition)),
        }
    }
    let calls = per_shard.into_iter().map(|(s, idx)| async move {
        let parts = idx
            .iter()
            .map(|&i| FetchPart {
                topic: wanted[i].topic.clone(),
                partition: wanted[i].partition,
                offset: wanted[i].offset,
                max_bytes: wanted[i].max_bytes,
                min_one_batch: true,
            })
            .collect();
        (idx, ctx.call_owner(s, ShardOp::Fetch(parts)).await)
    });
    for (idx, reply) in futures::future::join_all(calls).await {
        match reply {
            ShardReply::Fetch(rs) => {
                for (i, r) in idx.into_iter().zip(rs) {
                    results[i] = Some(r);
                }
            }
            _ => {
                for i in idx {
                    results[i] = Some(error_result(E::NotLeaderOrFollower));
                }
            }
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| error_result(E::UnknownServerError)))
        .collect()
}

/// Drops record data past `max_bytes` (keeping the first non-empty partition whole); returns the
/// bytes kept.
fn apply_response_limit(results: &mut [FetchResult], max_bytes: u32) -> u64 {
    let mut used: u64 = 0;
    for r in results.iter_mut() {
        let Some(s) = &r.slice else { continue };
        let len = u64::from(s.len);
        if used > 0 && used + len > u64::from(max_bytes) {
            r.slice = None;
        } else {
            used += len;
        }
    }
    used
}

/// Waits until any wanted partition without data gets new data, or `timeout`.
async fn wait_for_data(
    ctx: &Ctx<'_>,
    wanted: &[Wanted],
    results: &[FetchResult],
    timeout: Duration,
) {
    let mut per_shard: BTreeMap<ShardId, Vec<(Arc<str>, i32, i64)>> = BTreeMap::new();
    for (w, r) in wanted.iter().zip(results) {
        if let (Some(s), None, None) = (w.owner, &r.slice, w.refused) {
            per_shard
                .entry(s)
                .or_default()
                .push((w.topic.clone(), w.partition, w.offset));
        }
    }
    if per_shard.is_empty() {
        glommio::timer::sleep(timeout).await;
        return;
    }
    let wait_ms = timeout.as_millis() as u64;
    let waits: Vec<_> = per_shard
        .into_iter()
        .map(|(s, parts)| Box::pin(ctx.call_owner(s, ShardOp::WaitForData { parts, wait_ms })))
        .collect();
    let timer = Box::pin(glommio::timer::sleep(timeout));
    let _ = select(Box::pin(select_all(waits)), timer).await;
}
