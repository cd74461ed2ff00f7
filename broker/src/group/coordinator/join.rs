//! JoinGroup: new members (with KIP-394's MEMBER_ID_REQUIRED round trip), known members
//! rejoining, and static members (KIP-345) whose rejoin fences their old member id.

use std::rc::Rc;

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::ResponseError as E;

use super::{GroupCoordinator, JoinParams, Reply};
use crate::clock::{mono_ms, now_ms};
use crate::group::input;
use crate::group::state::{Group, GroupState, JoinResult, Member};

impl GroupCoordinator {
    /// JoinGroup. The answer may wait for the rest of the group (the end of the join phase).
    pub async fn join(self: &Rc<Self>, p: JoinParams) -> JoinResult {
        let member_id = p.member_id.clone();
        self.join_step(p)
            .get(|| JoinResult::error(E::UnknownMemberId, &member_id))
            .await
    }

    fn join_step(self: &Rc<Self>, p: JoinParams) -> Reply<JoinResult> {
        // The group id, member id, instance id and protocol sizes are checked on entry (`input`).
        let s = &self.settings;
        if p.session_timeout_ms < s.session_timeout_ms_min
            || p.session_timeout_ms > s.session_timeout_ms_max
        {
            return Reply::Now(JoinResult::error(E::InvalidSessionTimeout, &p.member_id));
        }
        if p.protocol_type.is_empty() || p.protocols.is_empty() {
            return Reply::Now(JoinResult::error(
                E::InconsistentGroupProtocol,
                &p.member_id,
            ));
        }
        let (now, wall) = (mono_ms(), now_ms());
        let mut groups = self.groups.borrow_mut();
        if !p.member_id.is_empty() && !groups.contains_key(&p.group_id) {
            return Reply::Now(JoinResult::error(E::UnknownMemberId, &p.member_id));
        }
        let group = groups
            .entry(p.group_id.clone())
            .or_insert_with(|| Group::new(&p.group_id, wall));
        if group.is(GroupState::Dead) {
            return Reply::Now(JoinResult::error(E::CoordinatorNotAvailable, &p.member_id));
        }
        if !group.supports(&p.protocol_type, &p.protocols) {
            return Reply::Now(JoinResult::error(
                E::InconsistentGroupProtocol,
                &p.member_id,
            ));
        }
        let reply = if p.member_id.is_empty() {
            self.join_unknown_member(group, p, now, wall)
        } else {
            self.join_known_member(group, p, now, wall)
        };
        if let Some(rb) = group.rebalance {
            self.lower_next_due(rb.deadline_ms);
        }
        self.persist_dirty(group);
        reply
    }

    fn join_unknown_member(
        self: &Rc<Self>,
        group: &mut Group,
        p: JoinParams,
        now: i64,
        wall: i64,
    ) -> Reply<JoinResult> {
        let s = &self.settings;
        if let Some(instance) = &p.instance_id {
            if let Some(old_id) = group.instances.get(instance).cloned() {
                return self.rejoin_static_member(group, &old_id, p, now, wall);
            }
        }
        if group.members.len() + group.pending.len() >= s.members_max {
            return Reply::Now(JoinResult::error(E::GroupMaxSizeReached, ""));
        }
        let prefix = p.instance_id.clone().unwrap_or_else(|| p.client_id.clone());
        let new_id = input::new_member_id(&prefix);
        if p.instance_id.is_none() && p.version >= 4 {
            // KIP-394: the member must come back with the id, so a client that never does
            // (it timed out) leaves no ghost member behind.
            let expiry = now + i64::from(p.session_timeout_ms);
            group.pending.insert(new_id.clone(), expiry);
            self.lower_next_due(expiry);
            return Reply::Now(JoinResult::error(E::MemberIdRequired, &new_id));
        }
        self.add_member_and_rebalance(group, new_id, p, now, wall)
    }

    fn add_member_and_rebalance(
        &self,
        group: &mut Group,
        id: String,
        p: JoinParams,
        now: i64,
        wall: i64,
    ) -> Reply<JoinResult> {
        let (tx, rx) = oneshot::channel();
        let order = group.next_order();
        group.add_member(Member {
            id,
            instance_id: p.instance_id,
            client_id: p.client_id,
            client_host: p.client_host,
            session_timeout_ms: p.session_timeout_ms,
            rebalance_timeout_ms: p.rebalance_timeout_ms,
            protocol_type: p.protocol_type,
            protocols: p.protocols,
            assignment: Bytes::new(),
            join_waiter: Some(tx),
            sync_waiter: None,
            last_seen_ms: now,
            order,
        });
        if !group.is(GroupState::PreparingRebalance) {
            group.prepare_rebalance(now, self.settings.initial_rebalance_delay_ms);
        }
        group.poll_rebalance(now, wall);
        Reply::Later(rx)
    }

    fn rejoin_static_member(
        &self,
        group: &mut Group,
        old_id: &str,
        p: JoinParams,
        now: i64,
        wall: i64,
    ) -> Reply<JoinResult> {
        let new_id = input::new_member_id(p.instance_id.as_deref().unwrap_or("static"));
        tracing::info!(group = %group.id, instance = ?p.instance_id, old = %old_id, new = %new_id, "static member rejoined; fencing its old member id");
        group.replace_static_member(old_id, &new_id);
        let protocol = group.protocol.clone();
        let member = group.members.get_mut(&new_id).expect("just replaced");
        let changed = member.protocols != p.protocols;
        member.client_id = p.client_id;
        member.client_host = p.client_host;
        member.session_timeout_ms = p.session_timeout_ms;
        member.rebalance_timeout_ms = p.rebalance_timeout_ms;
        member.protocols = p.protocols;
        member.last_seen_ms = now;
        match group.state {
            GroupState::Stable if !changed && protocol.is_some() => {
                // Same subscription: no rebalance; the member gets its stored assignment in
                // SyncGroup. A leader learns the members and (v9+, KIP-814) that it need not
                // assign; an older leader's new assignment is ignored by the stable group.
                let is_leader = group.leader.as_deref() == Some(new_id.as_str());
                Reply::Now(group.current_join_result(&new_id, is_leader, is_leader))
            }
            GroupState::PreparingRebalance => {
                let (tx, rx) = oneshot::channel();
                group.members.get_mut(&new_id).expect("member").join_waiter = Some(tx);
                group.poll_rebalance(now, wall);
                Reply::Later(rx)
            }
            _ => {
                let (tx, rx) = oneshot::channel();
                group.members.get_mut(&new_id).expect("member").join_waiter = Some(tx);
                group.prepare_rebalance(now, self.settings.initial_rebalance_delay_ms);
                group.poll_rebalance(now, wall);
                Reply::Later(rx)
            }
        }
    }

    fn join_known_member(
        &self,
        group: &mut Group,
        p: JoinParams,
        now: i64,
        wall: i64,
    ) -> Reply<JoinResult> {
        if group.pending.remove(&p.member_id).is_some() {
            let id = p.member_id.clone();
            return self.add_member_and_rebalance(group, id, p, now, wall);
        }
        if group.is_fenced(&p.member_id, p.instance_id.as_deref()) {
            return Reply::Now(JoinResult::error(E::FencedInstanceId, &p.member_id));
        }
        let is_leader = group.leader.as_deref() == Some(p.member_id.as_str());
        let Some(member) = group.members.get_mut(&p.member_id) else {
            return Reply::Now(JoinResult::error(E::UnknownMemberId, &p.member_id));
        };
        let unchanged = member.protocols == p.protocols;
        member.last_seen_ms = now;
        match group.state {
            GroupState::Empty | GroupState::Dead => {
                Reply::Now(JoinResult::error(E::UnknownMemberId, &p.member_id))
            }
            GroupState::CompletingRebalance if unchanged => {
                // The member missed the join response (or retried): tell it again.
                Reply::Now(group.current_join_result(&p.member_id, is_leader, false))
            }
            GroupState::Stable if unchanged && !is_leader => {
                Reply::Now(group.current_join_result(&p.member_id, false, false))
            }
            state => {
                let (tx, rx) = oneshot::channel();
                member.protocols = p.protocols;
                member.session_timeout_ms = p.session_timeout_ms;
                member.rebalance_timeout_ms = p.rebalance_timeout_ms;
                if let Some(old) = member.join_waiter.replace(tx) {
                    let _ = old.send(JoinResult::error(E::UnknownMemberId, &p.member_id));
                }
                if state != GroupState::PreparingRebalance {
                    group.prepare_rebalance(now, self.settings.initial_rebalance_delay_ms);
                }
                group.poll_rebalance(now, wall);
                Reply::Later(rx)
            }
        }
    }
}
