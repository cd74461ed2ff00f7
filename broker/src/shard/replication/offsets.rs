//! The offsets log of consumer groups as a replicated topic (cluster mode): the group
//! coordinator of an offsets partition is its leader, and stores through it.

use std::rc::{Rc, Weak};
use std::sync::Arc;

use futures::future::LocalBoxFuture;
use strom_storage::PartitionLog;

use crate::group::store::{OffsetsTopic, OFFSETS_TOPIC};
use crate::shard::ops::ProducePart;
use crate::shard::produce::produce_replicated;
use crate::shard::Shard;

/// How long a group write waits for the ISR (Kafka's `offsets.commit.timeout.ms`).
const OFFSETS_COMMIT_TIMEOUT_MS: i32 = 5_000;

/// The shard's side of [`OffsetsTopic`].
pub struct ShardOffsets(pub Weak<Shard>);

impl OffsetsTopic for ShardOffsets {
    fn log(&self, partition: u32) -> Option<Rc<PartitionLog>> {
        let shard = self.0.upgrade()?;
        let replicas = shard.replicas.as_ref()?;
        let leader = replicas.leader(OFFSETS_TOPIC, i32::try_from(partition).ok()?)?;
        Some(leader.log.clone())
    }

    fn append<'a>(
        &'a self,
        partition: u32,
        batch: &'a [u8],
    ) -> LocalBoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let shard = self.0.upgrade().ok_or("the shard is shutting down")?;
            let replicas = shard.replicas.clone().ok_or("not in cluster mode")?;
            let partition = i32::try_from(partition).map_err(|e| e.to_string())?;
            let log = shard
                .logs
                .get(OFFSETS_TOPIC, partition)
                .ok_or_else(|| format!("no replica of {OFFSETS_TOPIC}-{partition} here"))?;
            let records = bytes::Bytes::copy_from_slice(batch);
            let part = ProducePart {
                topic: Arc::from(OFFSETS_TOPIC),
                partition,
                records: Some(records.clone()),
                acks: -1,
                timeout_ms: OFFSETS_COMMIT_TIMEOUT_MS,
            };
            let r = produce_replicated(&shard, &replicas, &part, &log, &records).await;
            match r.error {
                0 => Ok(()),
                code => Err(format!("error {code}: {}", r.message.unwrap_or_default())),
            }
        })
    }
}
