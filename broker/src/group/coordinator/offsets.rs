//! Committed offsets of the coordinator's groups: OffsetCommit, OffsetFetch, OffsetDelete, and
//! the removal of offsets of deleted topics.

use std::rc::Rc;
use std::sync::Arc;

use kafka_protocol::ResponseError as E;

use super::{CommitParams, FetchedOffset, GroupCoordinator};
use crate::clock::{mono_ms, now_ms};
use crate::group::input;
use crate::group::state::{Committed, Group, GroupState};
use crate::group::store::{self, LogRecord};
use crate::metadata::ClusterMeta;

impl GroupCoordinator {
    /// Commits offsets; one error code per entry of `p.offsets`, in order.
    pub async fn commit(self: &Rc<Self>, p: CommitParams, meta: &ClusterMeta) -> Vec<i16> {
        let mut codes = vec![0i16; p.offsets.len()];
        let group_error = self.commit_check(&p);
        let mut records = Vec::new();
        let wall = now_ms();
        for (i, (topic, partition, offset, leader_epoch, metadata)) in p.offsets.iter().enumerate()
        {
            // As Kafka: unknown partitions are reported before the group is checked.
            codes[i] = if meta
                .topic(topic)
                .is_none_or(|t| *partition < 0 || *partition as usize >= t.partitions.len())
            {
                E::UnknownTopicOrPartition.code()
            } else if let Some(code) = group_error {
                code
            } else if metadata
                .as_ref()
                .is_some_and(|m| m.len() > self.settings.offset_metadata_bytes_max)
            {
                E::OffsetMetadataTooLarge.code()
            } else {
                records.push(LogRecord::Offset {
                    group: p.group_id.clone(),
                    topic: topic.clone(),
                    partition: *partition,
                    value: Some(Committed {
                        offset: *offset,
                        leader_epoch: *leader_epoch,
                        metadata: metadata.clone().unwrap_or_default(),
                        commit_ms: wall,
                    }),
                });
                continue;
            };
        }
        if records.is_empty() {
            return codes;
        }
        if let Err(e) = store::outcome(self.store.submit(self, records)).await {
            tracing::warn!(group = %p.group_id, "offset commit failed: {e}");
            for c in codes.iter_mut().filter(|c| **c == 0) {
                *c = e.code();
            }
        }
        codes
    }

    /// The group-level verdict on a commit (None = allowed).
    fn commit_check(&self, p: &CommitParams) -> Option<i16> {
        // An empty group id is valid for OffsetCommit (as in Kafka).
        let mut groups = self.groups.borrow_mut();
        let Some(group) = groups.get_mut(&p.group_id) else {
            if p.generation < 0 {
                // A group used only to store offsets (manual assignment, kcat without -G).
                groups.insert(p.group_id.clone(), Group::new(&p.group_id, now_ms()));
                return None;
            }
            return Some(E::IllegalGeneration.code());
        };
        if group.is(GroupState::Dead) {
            return Some(E::CoordinatorNotAvailable.code());
        }
        if group.is_fenced(&p.member_id, p.instance_id.as_deref()) {
            return Some(E::FencedInstanceId.code());
        }
        if p.generation < 0 && group.is(GroupState::Empty) {
            return None;
        }
        if group.is(GroupState::CompletingRebalance) {
            return Some(E::RebalanceInProgress.code());
        }
        if input::member_id_is_unknown(&p.member_id) {
            return Some(E::UnknownMemberId.code());
        }
        let current = group.generation;
        let Some(member) = group.members.get_mut(&p.member_id) else {
            return Some(E::UnknownMemberId.code());
        };
        if p.generation != current {
            return Some(E::IllegalGeneration.code());
        }
        member.last_seen_ms = mono_ms();
        None
    }

    /// Committed offsets of `group_id`: of the listed partitions, or all of them (None).
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        wanted: Option<&[(Arc<str>, Vec<i32>)]>,
    ) -> Vec<FetchedOffset> {
        let groups = self.groups.borrow();
        let group = groups.get(group_id);
        match wanted {
            Some(topics) => topics
                .iter()
                .flat_map(|(topic, parts)| parts.iter().map(move |p| (topic.clone(), *p)))
                .map(|(topic, partition)| {
                    let c = group.and_then(|g| g.offsets.get(&(topic.clone(), partition)));
                    FetchedOffset {
                        topic,
                        partition,
                        offset: c.map_or(-1, |c| c.offset),
                        leader_epoch: c.map_or(-1, |c| c.leader_epoch),
                        metadata: c.map(|c| c.metadata.clone()).unwrap_or_default(),
                    }
                })
                .collect(),
            None => {
                let mut all: Vec<FetchedOffset> = group
                    .map(|g| {
                        g.offsets
                            .iter()
                            .map(|((topic, partition), c)| FetchedOffset {
                                topic: topic.clone(),
                                partition: *partition,
                                offset: c.offset,
                                leader_epoch: c.leader_epoch,
                                metadata: c.metadata.clone(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                all.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
                all
            }
        }
    }

    /// OffsetDelete: (top-level error, one code per listed partition).
    pub async fn delete_offsets(
        self: &Rc<Self>,
        group_id: &str,
        partitions: &[(Arc<str>, i32)],
        meta: &ClusterMeta,
    ) -> (i16, Vec<i16>) {
        let mut records = Vec::new();
        let codes = {
            // The group id is checked on entry (`input`).
            let groups = self.groups.borrow();
            let Some(group) = groups.get(group_id).filter(|g| !g.is(GroupState::Dead)) else {
                return (E::GroupIdNotFound.code(), vec![0; partitions.len()]);
            };
            let subscribed = if group.is(GroupState::Empty) {
                Vec::new()
            } else {
                match group.subscribed_topics() {
                    Some(t) => t,
                    None => return (E::NonEmptyGroup.code(), vec![0; partitions.len()]),
                }
            };
            partitions
                .iter()
                .map(|(topic, p)| {
                    if meta
                        .topic(topic)
                        .is_none_or(|t| *p < 0 || *p as usize >= t.partitions.len())
                    {
                        E::UnknownTopicOrPartition.code()
                    } else if subscribed.iter().any(|s| **s == **topic) {
                        E::GroupSubscribedToTopic.code()
                    } else {
                        if group.offsets.contains_key(&(topic.clone(), *p)) {
                            records.push(LogRecord::Offset {
                                group: group_id.to_string(),
                                topic: topic.clone(),
                                partition: *p,
                                value: None,
                            });
                        }
                        0
                    }
                })
                .collect::<Vec<i16>>()
        };
        if !records.is_empty() {
            if let Err(e) = store::outcome(self.store.submit(self, records)).await {
                tracing::error!(group = %group_id, "deleting offsets failed: {e}");
                return (e.code(), codes);
            }
        }
        (0, codes)
    }

    /// Removes every committed offset of the given (deleted) topics.
    pub async fn topics_deleted(self: &Rc<Self>, topics: &[Arc<str>]) {
        let mut records = Vec::new();
        for g in self.groups.borrow().values() {
            for (topic, p) in g.offsets.keys() {
                if topics.contains(topic) {
                    records.push(LogRecord::Offset {
                        group: g.id.clone(),
                        topic: topic.clone(),
                        partition: *p,
                        value: None,
                    });
                }
            }
        }
        if !records.is_empty() {
            tracing::info!(
                "removing {} committed offsets of deleted topics",
                records.len()
            );
            self.write_each_group(records).await;
        }
    }
}
