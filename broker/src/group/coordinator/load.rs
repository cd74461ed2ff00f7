//! Loading: the owned partitions of the offsets log replayed into groups and offsets at startup.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use super::GroupCoordinator;
use crate::clock::{mono_ms, now_ms};
use crate::group::state::{Committed, Group};
use crate::group::store::{GroupRecord, LogRecord, ReplayError};
use crate::metadata::ClusterMeta;

impl GroupCoordinator {
    /// Replays the owned partitions of the offsets log into memory. Offsets of topics that no
    /// longer exist are dropped (and deleted from the log).
    pub async fn load(
        self: &Rc<Self>,
        owned: &[u32],
        meta: &ClusterMeta,
    ) -> Result<(), ReplayError> {
        let mut offsets: HashMap<String, HashMap<(Arc<str>, i32), Committed>> = HashMap::new();
        let mut records: HashMap<String, GroupRecord> = HashMap::new();
        let count = self
            .store
            .replay(owned, |r| match r {
                LogRecord::Offset {
                    group,
                    topic,
                    partition,
                    value,
                } => match value {
                    Some(c) => {
                        offsets
                            .entry(group)
                            .or_default()
                            .insert((topic, partition), c);
                    }
                    None => {
                        if let Some(m) = offsets.get_mut(&group) {
                            m.remove(&(topic, partition));
                        }
                    }
                },
                LogRecord::Group { group, value } => match value {
                    Some(v) => {
                        records.insert(group, v);
                    }
                    None => {
                        records.remove(&group);
                    }
                },
            })
            .await?;
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
        Ok(())
    }
}
