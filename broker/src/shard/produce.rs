//! Produce on the partition's owner shard: Kafka's client-append checks, the append, and the
//! acknowledgement: on a single node after the append (and its fdatasync for acks=all with
//! `flush.on.ack`); in cluster mode, as the partition's leader, once the ISR holds the batch.
//! Each storage error becomes a Kafka error code in one place (`produce_error`).

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::ResponseError as E;
use strom_storage::{BatchError, LeaderEpoch, Offset, ProducerError, StorageError};

use super::ops::{ProducePart, ProduceResult};
use super::Shard;
use crate::clock::now_ms;

fn produce_error(e: &StorageError) -> (i16, String) {
    match e {
        StorageError::Producer(ProducerError::StaleEpoch { .. }) => {
            (E::InvalidProducerEpoch.code(), e.to_string())
        }
        StorageError::Producer(ProducerError::OutOfOrder { .. }) => {
            (E::OutOfOrderSequenceNumber.code(), e.to_string())
        }
        StorageError::InvalidBatch(BatchError::CrcMismatch { .. }) => {
            (E::CorruptMessage.code(), e.to_string())
        }
        // No transaction is ever ongoing: Kafka's answer to a transactional batch outside one.
        StorageError::InvalidBatch(BatchError::NoOngoingTransaction) => {
            (E::InvalidTxnState.code(), e.to_string())
        }
        StorageError::InvalidBatch(_) => (E::InvalidRecord.code(), e.to_string()),
        // Leadership moved while the batch waited to be appended: nothing was written.
        StorageError::FencedLeaderEpoch { .. } => (E::NotLeaderOrFollower.code(), e.to_string()),
        _ => (E::KafkaStorageError.code(), e.to_string()),
    }
}

fn fail(code: E, msg: impl Into<String>) -> ProduceResult {
    refused(code.code(), msg.into(), Vec::new())
}

/// A produce answer that appended nothing: error `code`, and the indexes of the records at fault.
fn refused(code: i16, msg: String, record_errors: Vec<i32>) -> ProduceResult {
    ProduceResult {
        error: code,
        message: Some(msg),
        base_offset: -1,
        log_append_time_ms: -1,
        log_start_offset: -1,
        record_errors,
        current_leader: None,
    }
}

pub(super) async fn produce(shard: &Rc<Shard>, p: ProducePart) -> ProduceResult {
    let meta = shard.meta();
    let (Some(topic), Some(log)) = (meta.topic(&p.topic), shard.logs.get(&p.topic, p.partition))
    else {
        return fail(E::UnknownTopicOrPartition, "unknown topic or partition");
    };
    let config = &topic.config;
    let Some(records) = p.records.clone() else {
        return fail(E::InvalidRecord, "null records");
    };
    if records.len() > config.max_message_bytes {
        return fail(
            E::MessageTooLarge,
            format!(
                "batch of {} bytes exceeds max.message.bytes {}",
                records.len(),
                config.max_message_bytes
            ),
        );
    }
    // Kafka's client-append checks: nothing refused here is appended or takes an offset.
    if let Err(e) = strom_storage::validate_client_batch(&records) {
        tracing::debug!("rejected batch for {}-{}: {e}", p.topic, p.partition);
        let (code, msg) = produce_error(&StorageError::InvalidBatch(e));
        return refused(code, msg, Vec::new());
    }
    if let Some(replicas) = &shard.replicas {
        return produce_replicated(shard, replicas, &p, &log, &records).await;
    }
    if p.acks == -1 && config.min_insync_replicas > 1 {
        return fail(
            E::NotEnoughReplicas,
            format!(
                "min.insync.replicas={} but the ISR has 1 member",
                config.min_insync_replicas
            ),
        );
    }
    let epoch = topic
        .partitions
        .get(p.partition as usize)
        .map_or(LeaderEpoch(0), |m| m.leader_epoch);
    let info = match log.append(&records, epoch, now_ms()).await {
        Ok(info) => info,
        Err(e) => return append_failed(&p, &e),
    };
    count_appended(shard, &p, &info, records.len());
    let must_flush = (p.acks == -1 && config.flush_on_ack) || log.needs_flush(now_ms());
    if must_flush {
        if let Err(e) = log.flush().await {
            tracing::error!("flush of {}-{} failed: {e}", p.topic, p.partition);
            return fail(E::KafkaStorageError, e.to_string());
        }
    } else if config.flush_on_ack && !info.duplicate {
        // Readable only once durable (design.md): start the group commit, answer now.
        log.flush_in_background();
    }
    appended(&info)
}

/// The answer to a produce whose batch is stored at `info`.
fn appended(info: &strom_storage::AppendInfo) -> ProduceResult {
    ProduceResult {
        error: 0,
        message: None,
        base_offset: info.base_offset.0,
        log_append_time_ms: info.log_append_time_ms,
        log_start_offset: info.log_start_offset.0,
        record_errors: Vec::new(),
        current_leader: None,
    }
}

/// The answer to a produce the log refused.
fn append_failed(p: &ProducePart, e: &StorageError) -> ProduceResult {
    let (code, msg) = produce_error(e);
    if matches!(
        e,
        StorageError::Producer(_)
            | StorageError::InvalidBatch(_)
            | StorageError::FencedLeaderEpoch { .. }
    ) {
        tracing::debug!("refused batch for {}-{}: {e}", p.topic, p.partition);
    } else {
        tracing::error!("append to {}-{} failed: {e}", p.topic, p.partition);
    }
    let record_errors = match e {
        StorageError::InvalidBatch(BatchError::KeylessRecords { indexes }) => indexes.clone(),
        _ => Vec::new(),
    };
    refused(code, msg, record_errors)
}

/// Counts the bytes of a new batch; notes a retried one.
fn count_appended(shard: &Shard, p: &ProducePart, info: &strom_storage::AppendInfo, len: usize) {
    if info.duplicate {
        tracing::debug!(
            "{}-{}: retried batch already stored at offset {}",
            p.topic,
            p.partition,
            info.base_offset.0
        );
    } else {
        shard.metrics.add_bytes_in(&p.topic, len as u64);
    }
}

/// How long a produce waits for this node to take over a partition the controller just made it
/// leader of, before it answers NOT_LEADER_OR_FOLLOWER.
const LEADER_ROLE_WAIT_MS: u64 = 1_000;

/// Produce to a partition in cluster mode: only its leader appends, stamping its leader epoch;
/// the batch becomes readable once every ISR member holds it durably (the high watermark),
/// and acks=all is answered then. acks=all is refused while the ISR is below
/// `min.insync.replicas` (NOT_ENOUGH_REPLICAS), and fails with
/// NOT_ENOUGH_REPLICAS_AFTER_APPEND if the ISR falls below it before the batch is replicated.
pub(crate) async fn produce_replicated(
    shard: &Rc<Shard>,
    replicas: &super::replication::Replicas,
    p: &ProducePart,
    log: &Rc<strom_storage::PartitionLog>,
    records: &Bytes,
) -> ProduceResult {
    use super::replication::AckOutcome;
    let leader = replicas
        .leader_soon(shard, &p.topic, p.partition, LEADER_ROLE_WAIT_MS)
        .await;
    let Some(leader) = leader else {
        return fail(
            E::NotLeaderOrFollower,
            "this node does not lead the partition (right now)",
        );
    };
    if let Err(e) = leader.state.borrow().check_produce(p.acks == -1) {
        return fail(E::NotEnoughReplicas, e.to_string());
    }
    let epoch = leader.state.borrow().leader_epoch();
    let info = match log.append_as_leader(records, epoch, now_ms()).await {
        Ok(info) => info,
        Err(e) => return append_failed(p, &e),
    };
    count_appended(shard, p, &info, records.len());
    leader.sync();
    if p.acks != -1 {
        // The leader's own copy must be durable before the high watermark passes it.
        log.flush_in_background();
        return appended(&info);
    }
    if let Err(e) = log.flush().await {
        tracing::error!("flush of {}-{} failed: {e}", p.topic, p.partition);
        return fail(E::KafkaStorageError, e.to_string());
    }
    let timeout_ms = u64::try_from(p.timeout_ms).unwrap_or(0);
    let end = Offset(info.last_offset.0 + 1);
    match super::replication::wait_for_ack(replicas, &leader, end, timeout_ms).await {
        AckOutcome::Done => appended(&info),
        AckOutcome::NotEnoughReplicasAfterAppend => fail(
            E::NotEnoughReplicasAfterAppend,
            "the ISR fell below min.insync.replicas before the batch was replicated",
        ),
        AckOutcome::NotLeader => fail(
            E::NotLeaderOrFollower,
            "this node stopped leading the partition before the batch was replicated",
        ),
        AckOutcome::TimedOut => fail(
            E::RequestTimedOut,
            format!("the batch was not replicated to the ISR within {timeout_ms} ms"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::ops::tests::io_error;

    #[test]
    fn each_append_failure_gets_the_code_kafka_clients_act_on() {
        let stale = StorageError::Producer(ProducerError::StaleEpoch {
            producer_id: 7,
            epoch: 0,
            current: 1,
        });
        let gap = StorageError::Producer(ProducerError::OutOfOrder {
            producer_id: 7,
            epoch: 1,
            first_seq: 5,
            expected_after: 2,
        });
        let crc = StorageError::InvalidBatch(BatchError::CrcMismatch {
            expected: 1,
            actual: 2,
        });
        let txn = StorageError::InvalidBatch(BatchError::NoOngoingTransaction);
        let keyless = StorageError::InvalidBatch(BatchError::KeylessRecords { indexes: vec![0] });
        let cases = [
            (stale, E::InvalidProducerEpoch),
            (gap, E::OutOfOrderSequenceNumber),
            (crc, E::CorruptMessage),
            (txn, E::InvalidTxnState),
            (keyless, E::InvalidRecord),
            (io_error(), E::KafkaStorageError),
        ];
        for (e, code) in cases {
            let (got, message) = produce_error(&e);
            assert_eq!(got, code.code(), "{e}");
            assert_eq!(
                message,
                e.to_string(),
                "the client sees the storage error's text"
            );
        }
    }

    #[test]
    fn a_refused_produce_carries_no_offsets() {
        let r = fail(E::NotEnoughReplicas, "isr");
        assert_eq!(r.error, E::NotEnoughReplicas.code());
        assert_eq!(
            (r.base_offset, r.log_append_time_ms, r.log_start_offset),
            (-1, -1, -1)
        );
        assert_eq!(r.message.as_deref(), Some("isr"));
        assert!(r.record_errors.is_empty());
    }
}
