//! Loading: the owned partitions of the offsets log replayed into groups and offsets at startup,
//! or (cluster mode) a partition of the replicated offsets topic when this shard takes it over.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use super::GroupCoordinator;
use crate::clock::{mono_ms, now_ms};
use crate::group::state::{Committed, Group};
use crate::group::store::{replay_log, GroupRecord, LogRecord, ReplayError};
use crate::metadata::ClusterMeta;

impl GroupCoordinator {
    /// Replays the owned partitions of the offsets log into memory. Offsets of topics that no
    /// longer exist are dropped (and deleted from the log).
    pub async fn load(
        self: &Rc<Self>,
        owned: &[u32],
        meta: &ClusterMeta,
    ) -> Result<(), ReplayError> {
        let mut loaded = Loaded::default();
        let count = self.store.replay(owned, |r| loaded.apply(r)).await?;
        self.install(loaded, count, meta).await;
        Ok(())
    }

    /// Cluster mode: this shard took over offsets partition `partition` (it leads it in the
    /// replicated topic): its groups and offsets are read from `log`.
    pub async fn load_partition(
        self: &Rc<Self>,
        partition: u32,
        log: &strom_storage::PartitionLog,
        meta: &ClusterMeta,
    ) -> Result<(), ReplayError> {
        let mut loaded = Loaded::default();
        let count = replay_log(log.dir(), log, &mut |r| loaded.apply(r)).await?;
        // What was kept from an earlier leadership of the partition is stale: the log is
        // what counts.
        self.unload_partition(partition);
        tracing::info!(partition, "offsets partition taken over");
        self.install(loaded, count, meta).await;
        Ok(())
    }

    /// Cluster mode: this shard no longer leads offsets partition `partition`; its groups
    /// leave memory (their new coordinator loads them from the log). Requests waiting on
    /// them get COORDINATOR_NOT_AVAILABLE-style answers and clients find the new coordinator.
    pub fn unload_partition(&self, partition: u32) {
        let partitions = self.store.partitions;
        let mut groups = self.groups.borrow_mut();
        let before = groups.len();
        groups.retain(|id, _| crate::group::store::partition_of(id, partitions) != partition);
        let dropped = before - groups.len();
        if dropped > 0 {
            tracing::info!(partition, groups = dropped, "offsets partition given up");
        }
    }

    /// Puts replayed groups and offsets in place. Offsets of topics that no longer exist are
    /// dropped (and deleted from the log).
    async fn install(self: &Rc<Self>, loaded: Loaded, count: usize, meta: &ClusterMeta) {
        let Loaded { offsets, records } = loaded;
        let (now, wall) = (mono_ms(), now_ms());
        let mut stale = Vec::new();
        {
            let mut groups = self.groups.borrow_mut();
            for (id, record) in &records {
                groups.insert(id.clone(), Group::from_record(id, record, now, wall));
            }
            for (id, offs) in offsets {
                if offs.is_empty() && !records.contains_key(&id) {
                    continue;
                }
                let g = groups
                    .entry(id.clone())
                    .or_insert_with(|| Group::new(&id, wall));
                for ((topic, p), c) in offs {
                    if meta.topic(&topic).is_some() {
                        g.offsets.insert((topic, p), c);
                    } else {
                        stale.push(LogRecord::Offset {
                            group: id.clone(),
                            topic,
                            partition: p,
                            value: None,
                        });
                    }
                }
            }
            tracing::info!(
                groups = groups.len(),
                records = count,
                "group coordinator loaded"
            );
        }
        if !stale.is_empty() {
            tracing::info!(
                "removing {} committed offsets of deleted topics",
                stale.len()
            );
            self.write_each_group(stale).await;
        }
    }
}

/// Groups and offsets read back from the offsets log, the newest record per key winning.
#[derive(Default)]
struct Loaded {
    offsets: HashMap<String, HashMap<(Arc<str>, i32), Committed>>,
    records: HashMap<String, GroupRecord>,
}

impl Loaded {
    fn apply(&mut self, r: LogRecord) {
        match r {
            LogRecord::Offset {
                group,
                topic,
                partition,
                value,
            } => match value {
                Some(c) => {
                    self.offsets
                        .entry(group)
                        .or_default()
                        .insert((topic, partition), c);
                }
                None => {
                    if let Some(m) = self.offsets.get_mut(&group) {
                        m.remove(&(topic, partition));
                    }
                }
            },
            LogRecord::Group { group, value } => match value {
                Some(v) => {
                    self.records.insert(group, v);
                }
                None => {
                    self.records.remove(&group);
                }
            },
        }
    }
}
