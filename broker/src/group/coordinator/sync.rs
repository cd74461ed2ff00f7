//! SyncGroup: followers wait for the leader's assignment, which is stored in the offsets log
//! before the group turns Stable and every member gets its part.

use std::collections::HashMap;
use std::rc::Rc;

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::ResponseError as E;

use super::{GroupCoordinator, Reply, SyncParams};
use crate::clock::mono_ms;
use crate::group::state::{GroupState, SyncResult};
use crate::group::store::{self, LogRecord, StoreError};

impl GroupCoordinator {
    /// SyncGroup. A follower's answer waits for the leader's assignment, which is stored in the
    /// offsets log before anyone gets it.
    pub async fn sync(self: &Rc<Self>, p: SyncParams) -> SyncResult {
        let (reply, store) = self.sync_step(p);
        if let Some((group_id, generation, rx)) = store {
            let stored = store::outcome(rx).await;
            self.finish_sync(&group_id, generation, stored);
        }
        reply
            .get(|| SyncResult::error(E::RebalanceInProgress))
            .await
    }

    #[allow(
        clippy::type_complexity,
        reason = "one tuple of the sync outcome, used once"
    )]
    fn sync_step(
        self: &Rc<Self>,
        p: SyncParams,
    ) -> (
        Reply<SyncResult>,
        Option<(String, i32, oneshot::Receiver<Result<(), StoreError>>)>,
    ) {
        let now = mono_ms();
        let mut groups = self.groups.borrow_mut();
        let Some(group) = groups.get_mut(&p.group_id) else {
            return (Reply::Now(SyncResult::error(E::UnknownMemberId)), None);
        };
        if group.is(GroupState::Dead) {
            return (
                Reply::Now(SyncResult::error(E::CoordinatorNotAvailable)),
                None,
            );
        }
        if group.is_fenced(&p.member_id, p.instance_id.as_deref()) {
            return (Reply::Now(SyncResult::error(E::FencedInstanceId)), None);
        }
        if !group.members.contains_key(&p.member_id) {
            return (Reply::Now(SyncResult::error(E::UnknownMemberId)), None);
        }
        if p.generation != group.generation {
            return (Reply::Now(SyncResult::error(E::IllegalGeneration)), None);
        }
        if p.protocol_type
            .as_ref()
            .is_some_and(|t| Some(t) != group.protocol_type.as_ref())
            || p.protocol
                .as_ref()
                .is_some_and(|n| Some(n) != group.protocol.as_ref())
        {
            return (
                Reply::Now(SyncResult::error(E::InconsistentGroupProtocol)),
                None,
            );
        }
        let (protocol_type, protocol) = (group.protocol_type.clone(), group.protocol.clone());
        match group.state {
            GroupState::Empty | GroupState::Dead => {
                (Reply::Now(SyncResult::error(E::UnknownMemberId)), None)
            }
            GroupState::PreparingRebalance => {
                (Reply::Now(SyncResult::error(E::RebalanceInProgress)), None)
            }
            GroupState::Stable => {
                let m = group.members.get_mut(&p.member_id).expect("checked");
                m.last_seen_ms = now;
                (
                    Reply::Now(SyncResult {
                        error: 0,
                        protocol_type,
                        protocol,
                        assignment: m.assignment.clone(),
                    }),
                    None,
                )
            }
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                let m = group.members.get_mut(&p.member_id).expect("checked");
                m.last_seen_ms = now;
                if let Some(old) = m.sync_waiter.replace(tx) {
                    let _ = old.send(SyncResult::error(E::RebalanceInProgress));
                }
                if group.leader.as_deref() != Some(p.member_id.as_str()) {
                    return (Reply::Later(rx), None);
                }
                let assignments: HashMap<String, Bytes> = p.assignments.into_iter().collect();
                for m in group.members.values_mut() {
                    m.assignment = assignments.get(&m.id).cloned().unwrap_or_default();
                }
                let record = LogRecord::Group {
                    group: group.id.clone(),
                    value: Some(group.record()),
                };
                group.dirty = false;
                let generation = group.generation;
                let id = group.id.clone();
                drop(groups);
                let stored = self.store.submit(self, vec![record]);
                (Reply::Later(rx), Some((id, generation, stored)))
            }
        }
    }

    /// After the leader's assignment is stored: hand every member its part (or, if storing
    /// failed, make them rejoin). As in Kafka, every member answered here starts a new session:
    /// its wait may have outlasted its session timeout.
    fn finish_sync(&self, group_id: &str, generation: i32, stored: Result<(), StoreError>) {
        let now = mono_ms();
        let mut groups = self.groups.borrow_mut();
        let Some(group) = groups.get_mut(group_id) else {
            return;
        };
        if !group.is(GroupState::CompletingRebalance) || group.generation != generation {
            return;
        }
        match stored {
            Ok(()) => {
                group.state = GroupState::Stable;
                let (protocol_type, protocol) =
                    (group.protocol_type.clone(), group.protocol.clone());
                for m in group.members.values_mut() {
                    if let Some(w) = m.sync_waiter.take() {
                        let _ = w.send(SyncResult {
                            error: 0,
                            protocol_type: protocol_type.clone(),
                            protocol: protocol.clone(),
                            assignment: m.assignment.clone(),
                        });
                        m.last_seen_ms = now;
                    }
                }
                tracing::info!(group = %group.id, generation, "group is stable");
            }
            Err(e) => {
                tracing::error!(group = %group.id, "storing the assignment failed: {e}");
                for m in group.members.values_mut() {
                    m.assignment = Bytes::new();
                    if let Some(w) = m.sync_waiter.take() {
                        let _ = w.send(SyncResult {
                            error: e.code(),
                            ..Default::default()
                        });
                        m.last_seen_ms = now;
                    }
                }
                group.prepare_rebalance(now, self.settings.initial_rebalance_delay_ms);
                if let Some(rb) = group.rebalance {
                    self.lower_next_due(rb.deadline_ms);
                }
            }
        }
    }
}
