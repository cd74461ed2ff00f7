//! Log maintenance a shard runs beside request handling: retention, compaction, recovery
//! points, the flush policy and forgetting idle producers.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use strom_storage::StorageError;

use super::TICK_MS;
use crate::clock::now_ms;
use crate::shard::Shard;

/// Shares of the maintenance task queue; request handling runs in the default queue (1000).
pub(super) const MAINTENANCE_SHARES: usize = 100;

/// Retention every `log.retention.check.interval.ms`, compaction every `log.cleaner.backoff.ms`,
/// for every log of the shard (the consumer-group offsets logs are compacted too).
pub(super) async fn maintain_logs(shard: Rc<Shard>, shutdown: Arc<AtomicBool>) {
    let settings = shard.config.maintenance.clone();
    let fault = shard
        .config
        .faults
        .cleaner_abort_at
        .map(strom_storage::CleanerFault::Abort);
    let mut next_retention = now_ms() + settings.retention_check_interval_ms as i64;
    let mut next_clean = now_ms() + settings.cleaner_backoff_ms as i64;
    let mut next_recovery_point = now_ms() + settings.recovery_point_interval_ms as i64;
    let tick_ms = TICK_MS
        .min(settings.retention_check_interval_ms)
        .min(settings.cleaner_backoff_ms)
        .min(settings.recovery_point_interval_ms);
    while !shutdown.load(Ordering::Relaxed) {
        glommio::timer::sleep(Duration::from_millis(tick_ms)).await;
        if now_ms() >= next_recovery_point {
            let logs = shard.all_logs();
            for log in logs {
                if shutdown.load(Ordering::Relaxed) {
                    return;
                }
                match log.write_recovery_point().await {
                    Ok(_) | Err(StorageError::Closed { .. } | StorageError::SyncFailed { .. }) => {}
                    Err(e) => tracing::error!("recovery point of {}: {e}", log.dir().display()),
                }
            }
            next_recovery_point = now_ms() + settings.recovery_point_interval_ms as i64;
        }
        if now_ms() >= next_retention {
            for ((topic, p), log) in shard.logs.all() {
                if shutdown.load(Ordering::Relaxed) {
                    return;
                }
                match log.enforce_retention(now_ms()).await {
                    Ok(_) | Err(StorageError::Closed { .. }) => {}
                    Err(e) => tracing::error!("retention of {topic}-{p}: {e}"),
                }
            }
            next_retention = now_ms() + settings.retention_check_interval_ms as i64;
        }
        if settings.cleaner_enable && now_ms() >= next_clean {
            let logs = shard.all_logs();
            for log in logs {
                if shutdown.load(Ordering::Relaxed) {
                    return;
                }
                log.set_cleaner_fault(fault);
                match log.clean(now_ms()).await {
                    Ok(_) | Err(StorageError::Closed { .. }) => {}
                    Err(e) => tracing::error!("compaction of {}: {e}", log.dir().display()),
                }
            }
            next_clean = now_ms() + settings.cleaner_backoff_ms as i64;
        }
    }
}

/// How often a shard looks for idempotent producers to forget (at most).
pub(super) const PRODUCER_EXPIRY_CHECK_MS: i64 = 60_000;

/// `producer.id.expiration.ms`: forget idempotent producers not heard from for that long.
pub(super) fn expire_producers(shard: &Rc<Shard>) {
    let now = now_ms();
    let max_age = shard.config.producers.id_expiration_ms;
    for ((topic, p), log) in shard.logs.all() {
        let n = log.expire_producers(now, max_age);
        if n > 0 {
            tracing::debug!("{topic}-{p}: forgot {n} idle producer id(s)");
        }
    }
}

/// Kafka's `flush.messages` / `flush.ms`: flush logs whose policy says so.
pub(super) async fn flush_due_logs(shard: &Rc<Shard>) {
    let now = now_ms();
    for ((topic, p), log) in shard.logs.all() {
        if log.needs_flush(now) {
            if let Err(e) = log.flush().await {
                tracing::error!("flushing {topic}-{p}: {e}");
            }
        }
    }
}
