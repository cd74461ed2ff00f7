//! Heartbeat and LeaveGroup: a member's sign of life, and members (dynamic or static) leaving.

use std::rc::Rc;

use kafka_protocol::ResponseError as E;

use super::GroupCoordinator;
use crate::clock::{mono_ms, now_ms};
use crate::group::state::GroupState;

impl GroupCoordinator {
    /// Heartbeat; the error code (REBALANCE_IN_PROGRESS: the member must rejoin).
    pub fn heartbeat(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> i16 {
        let mut groups = self.groups.borrow_mut();
        let Some(group) = groups.get_mut(group_id) else {
            return E::UnknownMemberId.code();
        };
        if group.is(GroupState::Dead) {
            return E::CoordinatorNotAvailable.code();
        }
        if group.is(GroupState::Empty) {
            return E::UnknownMemberId.code();
        }
        if group.is_fenced(member_id, instance_id) {
            return E::FencedInstanceId.code();
        }
        let state = group.state;
        let current = group.generation;
        let Some(member) = group.members.get_mut(member_id) else {
            return E::UnknownMemberId.code();
        };
        if state == GroupState::PreparingRebalance {
            member.last_seen_ms = mono_ms();
            return E::RebalanceInProgress.code();
        }
        if generation != current {
            return E::IllegalGeneration.code();
        }
        member.last_seen_ms = mono_ms();
        0
    }

    /// Removes the listed members ((member id, instance id) pairs); one error code per member.
    pub fn leave(
        self: &Rc<Self>,
        group_id: &str,
        members: &[(String, Option<String>)],
    ) -> Vec<i16> {
        let (now, wall) = (mono_ms(), now_ms());
        let mut groups = self.groups.borrow_mut();
        let Some(group) = groups.get_mut(group_id) else {
            return vec![E::UnknownMemberId.code(); members.len()];
        };
        if group.is(GroupState::Dead) {
            return vec![E::CoordinatorNotAvailable.code(); members.len()];
        }
        let delay = self.settings.initial_rebalance_delay_ms;
        let mut out = Vec::with_capacity(members.len());
        for (member_id, instance_id) in members {
            let code = match instance_id {
                Some(instance) => match group.instances.get(instance).cloned() {
                    None => E::UnknownMemberId.code(),
                    Some(id) if !member_id.is_empty() && *member_id != id => {
                        E::FencedInstanceId.code()
                    }
                    Some(id) => {
                        tracing::info!(group = %group.id, member = %id, instance = %instance, "static member left");
                        group.remove_member_and_update(&id, now, delay, wall);
                        0
                    }
                },
                None if group.pending.remove(member_id).is_some() => {
                    group.poll_rebalance(now, wall);
                    0
                }
                None if group.members.contains_key(member_id) => {
                    tracing::info!(group = %group.id, member = %member_id, "member left");
                    group.remove_member_and_update(member_id, now, delay, wall);
                    0
                }
                None => E::UnknownMemberId.code(),
            };
            out.push(code);
        }
        if let Some(rb) = group.rebalance {
            self.lower_next_due(rb.deadline_ms);
        }
        self.persist_dirty(group);
        out
    }
}
