//! JoinGroup in the reference model: new members (with KIP-394's MEMBER_ID_REQUIRED), known
//! members, and static members taking the place of their old member id.

use bytes::Bytes;
use kafka_protocol::ResponseError as E;

use super::{Member, Model, State};
use crate::group::coordinator::model_tests::answers::{JoinAnswer, JoinReq, SyncAnswer};

impl Model {
    /// JoinGroup. `fresh` is the member id the coordinator made up during the call, if it made
    /// one; an error if the model needed one and there is none, or the other way round.
    pub fn join(&mut self, now: i64, r: &JoinReq, fresh: Option<&str>) -> Result<(), String> {
        let mut fresh = fresh.map(str::to_string);
        self.join_inner(now, r, &mut fresh)?;
        match fresh {
            None => Ok(()),
            Some(id) => Err(format!(
                "the coordinator made up member id {id}; the model made none"
            )),
        }
    }

    fn join_inner(
        &mut self,
        now: i64,
        r: &JoinReq,
        fresh: &mut Option<String>,
    ) -> Result<(), String> {
        let mut new_id = || {
            fresh.take().ok_or_else(|| {
                "the model expected a new member id; the coordinator made none".to_string()
            })
        };
        let s = self.settings;
        if r.session_ms < s.session_ms_min || r.session_ms > s.session_ms_max {
            self.answer_join(
                r.id,
                JoinAnswer::error(E::InvalidSessionTimeout, &r.member_id),
            );
            return Ok(());
        }
        if !r.member_id.is_empty() && !self.exists {
            self.answer_join(r.id, JoinAnswer::error(E::UnknownMemberId, &r.member_id));
            return Ok(());
        }
        self.exists = true;
        if !self.supports(&r.protocols) {
            let error = JoinAnswer::error(E::InconsistentGroupProtocol, &r.member_id);
            self.answer_join(r.id, error);
            return Ok(());
        }
        if r.member_id.is_empty() {
            if let Some(old) = r.instance_id.as_deref().and_then(|i| self.static_member(i)) {
                self.rejoin_static_member(now, r, &old, new_id()?);
                return Ok(());
            }
            if self.members.len() + self.pending.len() >= s.members_max {
                self.answer_join(r.id, JoinAnswer::error(E::GroupMaxSizeReached, ""));
                return Ok(());
            }
            let id = new_id()?;
            if r.instance_id.is_none() && r.version >= 4 {
                // KIP-394: a new dynamic member first learns its id and must come back with it.
                self.pending
                    .insert(id.clone(), now + i64::from(r.session_ms));
                self.answer_join(r.id, JoinAnswer::error(E::MemberIdRequired, &id));
            } else {
                self.add_member(now, r, id);
            }
            return Ok(());
        }
        if self.pending.remove(&r.member_id).is_some() {
            self.add_member(now, r, r.member_id.clone());
        } else if self.fenced(&r.member_id, r.instance_id.as_deref()) {
            self.answer_join(r.id, JoinAnswer::error(E::FencedInstanceId, &r.member_id));
        } else if !self.members.contains_key(&r.member_id) {
            self.answer_join(r.id, JoinAnswer::error(E::UnknownMemberId, &r.member_id));
        } else {
            self.join_known_member(now, r);
        }
        Ok(())
    }

    fn join_known_member(&mut self, now: i64, r: &JoinReq) {
        let is_leader = self.leader.as_deref() == Some(r.member_id.as_str());
        let state = self.state;
        let m = self.members.get_mut(&r.member_id).expect("a member");
        // Kafka: restarts the session only when the join completes.
        m.heard(now);
        let unchanged = m.protocols == r.protocols;
        match state {
            // The member missed its join answer: it gets it again.
            State::CompletingRebalance if unchanged => {
                let answer = self.current_join_answer(&r.member_id, is_leader, false);
                self.answer_join(r.id, answer);
            }
            // A follower without changes may go on to SyncGroup.
            State::Stable if unchanged && !is_leader => {
                let answer = self.current_join_answer(&r.member_id, false, false);
                self.answer_join(r.id, answer);
            }
            // Changed metadata, or the leader asking for a rebalance, or a rebalance under way.
            _ => {
                m.protocols = r.protocols.clone();
                m.session_ms = i64::from(r.session_ms);
                m.rebalance_ms = i64::from(r.rebalance_ms);
                // Kafka: drops a superseded join callback without an answer.
                if let Some(old) = m.join_waiter.replace(r.id) {
                    let error = JoinAnswer::error(E::UnknownMemberId, &r.member_id);
                    self.answer_join(old, error);
                }
                if state != State::PreparingRebalance {
                    self.prepare_rebalance(now);
                }
                self.poll_rebalance(now);
            }
        }
    }

    /// A static member joined with no member id while its instance id is known: it takes the
    /// place of the old member id, which is fenced.
    fn rejoin_static_member(&mut self, now: i64, r: &JoinReq, old: &str, new: String) {
        let mut m = self.members.remove(old).expect("the static member");
        if let Some(w) = m.join_waiter.take() {
            self.answer_join(w, JoinAnswer::error(E::FencedInstanceId, old));
        }
        if let Some(w) = m.sync_waiter.take() {
            self.answer_sync(w, SyncAnswer::error(E::FencedInstanceId));
        }
        if self.leader.as_deref() == Some(old) {
            self.leader = Some(new.clone());
        }
        // Kafka: rebalances a stable group only if the protocol the group would select
        // changes (Strom also when the member's metadata, its subscription, changed), and
        // answers once the new member id is stored.
        let changed = m.protocols != r.protocols;
        m.protocols = r.protocols.clone();
        m.session_ms = i64::from(r.session_ms);
        m.rebalance_ms = i64::from(r.rebalance_ms);
        m.heard(now);
        self.members.insert(new.clone(), m);
        match self.state {
            State::Stable if !changed => {
                // KIP-814: a returning leader learns the members but need not assign.
                let is_leader = self.leader.as_deref() == Some(new.as_str());
                let answer = self.current_join_answer(&new, is_leader, is_leader);
                self.answer_join(r.id, answer);
            }
            State::PreparingRebalance => {
                self.members.get_mut(&new).expect("member").join_waiter = Some(r.id);
                self.poll_rebalance(now);
            }
            _ => {
                self.members.get_mut(&new).expect("member").join_waiter = Some(r.id);
                self.prepare_rebalance(now);
                self.poll_rebalance(now);
            }
        }
    }

    fn add_member(&mut self, now: i64, r: &JoinReq, id: String) {
        self.next_order += 1;
        if self.leader.is_none() {
            self.leader = Some(id.clone());
        }
        if self.members.is_empty() {
            // As Kafka: the first member of a group without members sets the protocol type
            // (an emptied group takes its next first member's). The model sends one type.
            self.protocol_type = Some("consumer".into());
        }
        if let Some(initial) = self.rebalance.as_mut().and_then(|r| r.initial.as_mut()) {
            // Kafka: only while the group is at generation 0.
            initial.new_member_added = true;
        }
        let member = Member {
            instance_id: r.instance_id.clone(),
            protocols: r.protocols.clone(),
            session_ms: i64::from(r.session_ms),
            rebalance_ms: i64::from(r.rebalance_ms),
            last_heard_ms: now,
            join_waiter: Some(r.id),
            sync_waiter: None,
            assignment: Bytes::new(),
            order: self.next_order,
        };
        self.members.insert(id, member);
        if self.state != State::PreparingRebalance {
            self.prepare_rebalance(now);
        }
        self.poll_rebalance(now);
    }
}
