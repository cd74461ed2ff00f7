//! The group coordinator of one shard: the groups whose offsets-log partition this shard owns.
//!
//! Every operation is a synchronous step on the shard's own `RefCell` of groups (no locks, no
//! borrow held across an await) that either answers at once or hands back a receiver the
//! answer will arrive on (a JoinGroup waiting for the other members, a SyncGroup waiting for the
//! leader). Writes to the offsets log are queued in call order on the partition's writer and
//! awaited outside the borrow; committed offsets change in memory only once stored.
//!
//! The operations live beside this file, one concern each: `join.rs` and `sync.rs` (the
//! rebalance), `membership.rs` (Heartbeat, LeaveGroup), `timers.rs` (session and rebalance
//! timeouts, offsets retention), `admin.rs` (List/Describe/DeleteGroups), `offsets.rs`
//! (OffsetCommit/Fetch/Delete) and `load.rs` (replay at startup). Tests: `tests.rs` (named
//! scenarios on a manual clock) and `model_tests.rs` (random operations checked against a
//! reference model of Kafka's classic group protocol).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use futures::channel::oneshot;

use super::state::Group;
use super::store::{LogRecord, OffsetsStore};
use crate::config::GroupSettings;

mod admin;
mod join;
mod load;
mod membership;
mod offsets;
mod sync;
mod timers;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

pub struct JoinParams {
    pub version: i16,
    pub group_id: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    pub client_id: String,
    pub client_host: String,
}

pub struct SyncParams {
    pub group_id: String,
    pub generation: i32,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignments: Vec<(String, Bytes)>,
}

pub struct CommitParams {
    pub group_id: String,
    pub generation: i32,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub offsets: Vec<CommitOffset>,
}

/// (topic, partition, offset, leader epoch, metadata)
pub type CommitOffset = (Arc<str>, i32, i64, i32, Option<String>);

/// One partition's answer to OffsetFetch.
#[derive(Clone, Debug)]
pub struct FetchedOffset {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
}

#[derive(Clone, Debug)]
pub struct ListedGroup {
    pub group_id: String,
    pub protocol_type: String,
    pub state: &'static str,
}

#[derive(Clone, Debug, Default)]
pub struct DescribedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

#[derive(Clone, Debug, Default)]
pub struct DescribedGroup {
    pub error: i16,
    pub group_id: String,
    pub state: &'static str,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<DescribedMember>,
}

/// An answer now, or a receiver it will arrive on.
enum Reply<T> {
    Now(T),
    Later(oneshot::Receiver<T>),
}

impl<T> Reply<T> {
    async fn get(self, fallback: impl FnOnce() -> T) -> T {
        match self {
            Reply::Now(t) => t,
            Reply::Later(rx) => rx.await.unwrap_or_else(|_| fallback()),
        }
    }
}

pub struct GroupCoordinator {
    settings: GroupSettings,
    groups: RefCell<HashMap<String, Group>>,
    store: OffsetsStore,
    /// Monotonic ms before which no deadline of any group is due.
    next_due_ms: Cell<i64>,
    next_retention_check_ms: Cell<i64>,
}

impl GroupCoordinator {
    pub fn new(settings: GroupSettings, store: OffsetsStore) -> Rc<GroupCoordinator> {
        Rc::new(GroupCoordinator {
            settings,
            groups: RefCell::new(HashMap::new()),
            store,
            next_due_ms: Cell::new(0),
            next_retention_check_ms: Cell::new(0),
        })
    }

    /// Every committed offset of the groups this shard coordinates (for the lag metric).
    pub fn committed_offsets(&self) -> Vec<crate::metrics::CommittedOffset> {
        let groups = self.groups.borrow();
        groups
            .iter()
            .flat_map(|(id, g)| {
                g.offsets.iter().map(move |((topic, partition), c)| {
                    crate::metrics::CommittedOffset {
                        group: id.clone(),
                        topic: topic.clone(),
                        partition: *partition,
                        offset: c.offset,
                    }
                })
            })
            .collect()
    }

    pub fn partitions(&self) -> u32 {
        self.store.partitions
    }

    /// Cluster mode: the offsets log's partitions are those of the replicated offsets topic.
    pub fn use_offsets_topic(&self, topic: Rc<dyn crate::group::store::OffsetsTopic>) {
        self.store.use_topic(topic);
    }

    /// The open partitions of the offsets log (compacted by the shard's cleaner).
    pub fn offsets_logs(&self) -> Vec<Rc<strom_storage::PartitionLog>> {
        self.store.logs()
    }

    /// Writes records that may belong to several groups (each group's to its own partition).
    async fn write_each_group(self: &Rc<Self>, records: Vec<LogRecord>) {
        let mut by_group: HashMap<String, Vec<LogRecord>> = HashMap::new();
        for r in records {
            let g = match &r {
                LogRecord::Offset { group, .. } | LogRecord::Group { group, .. } => group.clone(),
            };
            by_group.entry(g).or_default().push(r);
        }
        let writes = by_group.into_values().map(|rs| self.store.write(self, rs));
        for r in futures::future::join_all(writes).await {
            if let Err(e) = r {
                tracing::error!("writing group records: {e}");
            }
        }
    }

    /// Called by the offsets-log writer once records are stored, in log order.
    pub fn apply_stored(&self, records: &[LogRecord]) {
        let mut groups = self.groups.borrow_mut();
        for r in records {
            if let LogRecord::Offset {
                group,
                topic,
                partition,
                value,
            } = r
            {
                if let Some(g) = groups.get_mut(group) {
                    match value {
                        Some(c) => {
                            g.offsets.insert((topic.clone(), *partition), c.clone());
                        }
                        None => {
                            g.offsets.remove(&(topic.clone(), *partition));
                        }
                    }
                }
            }
        }
    }

    fn lower_next_due(&self, at: i64) {
        if at < self.next_due_ms.get() {
            self.next_due_ms.set(at);
        }
    }

    /// Stores the membership of groups flagged dirty (fire and forget; order is kept by the
    /// writer queue).
    fn persist_dirty(self: &Rc<Self>, group: &mut Group) {
        if !group.dirty {
            return;
        }
        group.dirty = false;
        let record = LogRecord::Group {
            group: group.id.clone(),
            value: Some(group.record()),
        };
        let rx = self.store.submit(self, vec![record]);
        glommio::spawn_local(async move {
            if let Ok(Err(e)) = rx.await {
                tracing::error!("storing group metadata: {e}");
            }
        })
        .detach();
    }

    /// Closes this coordinator's partitions of the offsets log.
    pub async fn close(&self) {
        self.store.close().await;
    }
}
