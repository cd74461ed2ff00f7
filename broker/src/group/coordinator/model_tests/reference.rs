//! The reference model: one consumer group under Kafka's classic protocol, written from Kafka's
//! `GroupCoordinator` (JoinGroup, SyncGroup, Heartbeat, LeaveGroup, session and rebalance
//! timeouts) as plain data and straight-line code, without the coordinator's channels, stores or
//! bookkeeping for speed.
//!
//! Waiting requests are named by the driver's request ids; every answer the group gives during
//! one step is collected in [`Model::answers`] and compared with the futures that completed.
//! Where the coordinator's timing may legitimately vary (members that expire in the same tick),
//! [`Model::tick`] returns every allowed outcome and the driver keeps those that match what the
//! coordinator did.
//!
//! Where Strom differs from Kafka, the model follows Strom and says so in a comment starting
//! with "Kafka:". A difference found to be a bug is fixed in both places, with a named test of
//! Kafka's behaviour in `coordinator/tests.rs` (its last section).

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::ResponseError as E;

use super::answers::{
    Answer, JoinAnswer, Observed, ObservedMember, ReqId, Settings, State, SyncAnswer, SyncReq,
    PROTOCOL_ORDER,
};

mod join;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Member {
    instance_id: Option<String>,
    protocols: Vec<(String, Bytes)>,
    session_ms: i64,
    rebalance_ms: i64,
    last_heard_ms: i64,
    join_waiter: Option<ReqId>,
    sync_waiter: Option<ReqId>,
    assignment: Bytes,
    /// Join order: the earliest member leads when a leader must be chosen.
    order: u64,
}

impl Member {
    fn waiting(&self) -> bool {
        self.join_waiter.is_some() || self.sync_waiter.is_some()
    }

    /// The session is over at `now`: no request waits and nothing was heard for longer than
    /// the session timeout.
    fn session_over(&self, now: i64) -> bool {
        !self.waiting() && now - self.last_heard_ms > self.session_ms
    }

    fn heard(&mut self, now: i64) {
        self.last_heard_ms = now;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct InitialDelay {
    delay_ms: i64,
    remaining_ms: i64,
    new_member_added: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rebalance {
    deadline_ms: i64,
    initial: Option<InitialDelay>,
}

/// One group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Model {
    settings: Settings,
    exists: bool,
    state: State,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED -> when they expire.
    pending: BTreeMap<String, i64>,
    rebalance: Option<Rebalance>,
    next_order: u64,
    /// Answers given during the current step.
    pub answers: BTreeMap<ReqId, Answer>,
}

impl Model {
    pub fn new(settings: Settings) -> Model {
        Model {
            settings,
            exists: false,
            state: State::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: BTreeMap::new(),
            rebalance: None,
            next_order: 0,
            answers: BTreeMap::new(),
        }
    }

    pub fn observed(&self) -> Observed {
        if !self.exists {
            return Observed::absent();
        }
        Observed {
            exists: self.exists,
            state: Some(self.state),
            generation: self.generation,
            leader: self.leader.clone(),
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            members: self
                .members
                .iter()
                .map(|(id, m)| {
                    let observed = ObservedMember {
                        instance_id: m.instance_id.clone(),
                        protocols: m.protocols.clone(),
                        awaiting_join: m.join_waiter.is_some(),
                        awaiting_sync: m.sync_waiter.is_some(),
                        assignment: m.assignment.clone(),
                    };
                    (id.clone(), observed)
                })
                .collect(),
            pending: self.pending.keys().cloned().collect(),
            instances: self
                .members
                .iter()
                .filter_map(|(id, m)| Some((m.instance_id.clone()?, id.clone())))
                .collect(),
        }
    }

    /// The leader's SyncGroup in CompletingRebalance ends the rebalance (once its assignment is
    /// stored): the driver waits for that store.
    pub fn sync_completes_rebalance(&self, member_id: &str, generation: i32) -> bool {
        self.state == State::CompletingRebalance
            && self.leader.as_deref() == Some(member_id)
            && generation == self.generation
            && self.members.contains_key(member_id)
    }

    /// The earliest time after `now` at which a timer of the group fires.
    pub fn next_deadline(&self, now: i64) -> Option<i64> {
        let sessions = self
            .members
            .values()
            .filter(|m| !m.waiting())
            .map(|m| m.last_heard_ms + m.session_ms + 1);
        let pending = self.pending.values().copied();
        let rebalance = self.rebalance.map(|r| r.deadline_ms);
        sessions
            .chain(pending)
            .chain(rebalance)
            .filter(|t| *t > now)
            .min()
    }

    fn answer(&mut self, id: ReqId, answer: Answer) {
        let earlier = self.answers.insert(id, answer);
        assert!(earlier.is_none(), "model: request {id} answered twice");
    }

    fn answer_join(&mut self, id: ReqId, answer: JoinAnswer) {
        self.answer(id, Answer::Join(answer));
    }

    fn answer_sync(&mut self, id: ReqId, answer: SyncAnswer) {
        self.answer(id, Answer::Sync(answer));
    }

    fn static_member(&self, instance_id: &str) -> Option<String> {
        self.members
            .iter()
            .find(|(_, m)| m.instance_id.as_deref() == Some(instance_id))
            .map(|(id, _)| id.clone())
    }

    /// The instance id belongs to another member id.
    fn fenced(&self, member_id: &str, instance_id: Option<&str>) -> bool {
        instance_id
            .and_then(|i| self.static_member(i))
            .is_some_and(|owner| owner != member_id)
    }

    fn first_member(&self) -> Option<String> {
        self.members
            .iter()
            .min_by_key(|(_, m)| m.order)
            .map(|(id, _)| id.clone())
    }

    /// Protocol names every member supports.
    fn common_protocols(&self) -> Vec<&str> {
        PROTOCOL_ORDER
            .into_iter()
            .filter(|p| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == p))
            })
            .collect()
    }

    fn supports(&self, protocols: &[(String, Bytes)]) -> bool {
        self.members.is_empty() || {
            let common = self.common_protocols();
            protocols.iter().any(|(n, _)| common.contains(&n.as_str()))
        }
    }

    fn current_join_answer(&self, member_id: &str, with_members: bool, skip: bool) -> JoinAnswer {
        JoinAnswer {
            error: 0,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            members: if with_members {
                self.member_list()
            } else {
                Vec::new()
            },
            skip_assignment: skip,
        }
    }

    /// Every member with its metadata for the selected protocol, in join order.
    fn member_list(&self) -> Vec<(String, Option<String>, Bytes)> {
        let protocol = self.protocol.clone().unwrap_or_default();
        let mut members: Vec<(&String, &Member)> = self.members.iter().collect();
        members.sort_by_key(|(_, m)| m.order);
        members
            .into_iter()
            .map(|(id, m)| {
                let metadata = m.protocols.iter().find(|(n, _)| *n == protocol);
                let metadata = metadata.map(|(_, b)| b.clone()).unwrap_or_default();
                (id.clone(), m.instance_id.clone(), metadata)
            })
            .collect()
    }

    // -----------------------------------------------------------------------------------------
    // Requests (JoinGroup is in `reference/join.rs`)

    /// SyncGroup. For the leader in CompletingRebalance this includes storing the assignment.
    pub fn sync(&mut self, now: i64, r: &SyncReq) {
        let error = if !self.exists {
            Some(E::UnknownMemberId)
        } else if self.fenced(&r.member_id, r.instance_id.as_deref()) {
            Some(E::FencedInstanceId)
        } else if !self.members.contains_key(&r.member_id) {
            Some(E::UnknownMemberId)
        } else if r.generation != self.generation {
            Some(E::IllegalGeneration)
        } else if r.protocol.is_some() && r.protocol != self.protocol {
            Some(E::InconsistentGroupProtocol)
        } else if self.state == State::PreparingRebalance {
            Some(E::RebalanceInProgress)
        } else {
            None
        };
        if let Some(code) = error {
            self.answer_sync(r.id, SyncAnswer::error(code));
            return;
        }
        let m = self.members.get_mut(&r.member_id).expect("a member");
        m.heard(now);
        if self.state == State::Stable {
            let answer = SyncAnswer {
                error: 0,
                protocol_type: self.protocol_type.clone(),
                protocol: self.protocol.clone(),
                assignment: m.assignment.clone(),
            };
            self.answer_sync(r.id, answer);
            return;
        }
        // CompletingRebalance. Kafka: drops a superseded sync callback without an answer.
        if let Some(old) = m.sync_waiter.replace(r.id) {
            self.answer_sync(old, SyncAnswer::error(E::RebalanceInProgress));
        }
        if self.leader.as_deref() != Some(r.member_id.as_str()) {
            return;
        }
        let assignments: BTreeMap<&String, &Bytes> =
            r.assignments.iter().map(|(id, a)| (id, a)).collect();
        self.state = State::Stable;
        let (protocol_type, protocol) = (self.protocol_type.clone(), self.protocol.clone());
        let mut answers = Vec::new();
        for (id, m) in self.members.iter_mut() {
            m.assignment = assignments
                .get(id)
                .map(|a| (*a).clone())
                .unwrap_or_default();
            if let Some(w) = m.sync_waiter.take() {
                // As Kafka: every member answered here starts a new session.
                m.heard(now);
                let answer = SyncAnswer {
                    error: 0,
                    protocol_type: protocol_type.clone(),
                    protocol: protocol.clone(),
                    assignment: m.assignment.clone(),
                };
                answers.push((w, answer));
            }
        }
        for (w, a) in answers {
            self.answer_sync(w, a);
        }
    }

    /// Heartbeat; the error code.
    pub fn heartbeat(
        &mut self,
        now: i64,
        member_id: &str,
        generation: i32,
        instance_id: Option<&str>,
    ) -> i16 {
        if !self.exists || self.state == State::Empty {
            return E::UnknownMemberId.code();
        }
        if self.fenced(member_id, instance_id) {
            return E::FencedInstanceId.code();
        }
        let current = self.generation;
        let state = self.state;
        let Some(m) = self.members.get_mut(member_id) else {
            return E::UnknownMemberId.code();
        };
        if state == State::PreparingRebalance {
            // Kafka: checks the generation first, so a member of an older generation gets
            // ILLEGAL_GENERATION (either way it rejoins).
            m.heard(now);
            return E::RebalanceInProgress.code();
        }
        if generation != current {
            return E::IllegalGeneration.code();
        }
        m.heard(now);
        0
    }

    /// LeaveGroup of (member id, instance id) pairs; one error code each.
    pub fn leave(&mut self, now: i64, leaving: &[(String, Option<String>)]) -> Vec<i16> {
        if !self.exists {
            return vec![E::UnknownMemberId.code(); leaving.len()];
        }
        let mut codes = Vec::new();
        for (member_id, instance_id) in leaving {
            let code = match instance_id {
                Some(instance) => match self.static_member(instance) {
                    None => E::UnknownMemberId.code(),
                    Some(owner) if !member_id.is_empty() && *member_id != owner => {
                        E::FencedInstanceId.code()
                    }
                    Some(owner) => {
                        self.remove_member_and_update(&owner, now);
                        0
                    }
                },
                None if self.pending.remove(member_id).is_some() => {
                    self.poll_rebalance(now);
                    0
                }
                None if self.members.contains_key(member_id) => {
                    self.remove_member_and_update(member_id, now);
                    0
                }
                None => E::UnknownMemberId.code(),
            };
            codes.push(code);
        }
        codes
    }

    // -----------------------------------------------------------------------------------------
    // Time

    /// Every outcome the coordinator's tick may have at `now`: pending member ids and sessions
    /// expire (those members in every order: the coordinator removes them in hash-map order,
    /// and the order can matter), then a rebalance whose time is up completes.
    pub fn tick(&self, now: i64) -> Vec<Model> {
        let mut start = self.clone();
        start.pending.retain(|_, expiry| *expiry > now);
        let over: Vec<String> = start
            .members
            .iter()
            .filter(|(_, m)| m.session_over(now))
            .map(|(id, _)| id.clone())
            .collect();
        let mut level = vec![(start, over)];
        while level.iter().any(|(_, left)| !left.is_empty()) {
            let mut next = Vec::new();
            for (model, left) in level {
                for (i, id) in left.iter().enumerate() {
                    let mut after = model.clone();
                    after.remove_member_and_update(id, now);
                    let mut rest = left.clone();
                    rest.remove(i);
                    push_new(&mut next, (after, rest));
                }
            }
            level = next;
        }
        let mut outcomes = Vec::new();
        for (mut model, _) in level {
            model.poll_rebalance(now);
            push_new(&mut outcomes, model);
        }
        outcomes
    }

    // -----------------------------------------------------------------------------------------
    // The rebalance

    fn remove_member(&mut self, id: &str, code: E) {
        let Some(mut m) = self.members.remove(id) else {
            return;
        };
        if let Some(w) = m.join_waiter.take() {
            self.answer_join(w, JoinAnswer::error(code, id));
        }
        if let Some(w) = m.sync_waiter.take() {
            self.answer_sync(w, SyncAnswer::error(code));
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = self.first_member();
        }
    }

    fn remove_member_and_update(&mut self, id: &str, now: i64) {
        if !self.members.contains_key(id) {
            return;
        }
        self.remove_member(id, E::UnknownMemberId);
        if matches!(self.state, State::Stable | State::CompletingRebalance) {
            self.prepare_rebalance(now);
        }
        self.poll_rebalance(now);
    }

    fn prepare_rebalance(&mut self, now: i64) {
        if self.state == State::CompletingRebalance {
            let mut answered = Vec::new();
            for m in self.members.values_mut() {
                m.assignment = Bytes::new();
                if let Some(w) = m.sync_waiter.take() {
                    // As Kafka: every member answered here starts a new session.
                    m.heard(now);
                    answered.push(w);
                }
            }
            for w in answered {
                self.answer_sync(w, SyncAnswer::error(E::RebalanceInProgress));
            }
        }
        let timeout = self
            .members
            .values()
            .map(|m| m.rebalance_ms)
            .max()
            .unwrap_or(0);
        self.rebalance = Some(if self.state == State::Empty {
            // group.initial.rebalance.delay.ms. Kafka: waits the whole delay even when the
            // rebalance timeout is shorter.
            let delay = self.settings.initial_delay_ms.min(timeout);
            Rebalance {
                deadline_ms: now + delay,
                initial: Some(InitialDelay {
                    delay_ms: self.settings.initial_delay_ms,
                    remaining_ms: (timeout - delay).max(0),
                    new_member_added: false,
                }),
            }
        } else {
            Rebalance {
                deadline_ms: now + timeout,
                initial: None,
            }
        });
        self.state = State::PreparingRebalance;
    }

    fn all_joined(&self) -> bool {
        self.pending.is_empty() && self.members.values().all(|m| m.join_waiter.is_some())
    }

    fn poll_rebalance(&mut self, now: i64) {
        if self.state != State::PreparingRebalance {
            return;
        }
        let all_joined = self.all_joined();
        let rebalance = self.rebalance.as_mut().expect("a rebalance under way");
        if let Some(initial) = rebalance.initial.as_mut() {
            if now < rebalance.deadline_ms {
                return;
            }
            if initial.new_member_added && initial.remaining_ms > 0 {
                let delay = initial.delay_ms.min(initial.remaining_ms);
                initial.remaining_ms -= delay;
                initial.new_member_added = false;
                rebalance.deadline_ms = now + delay;
                return;
            }
        } else if !all_joined && now < rebalance.deadline_ms {
            return;
        }
        self.complete_join(now);
    }

    fn complete_join(&mut self, now: i64) {
        let missing: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.join_waiter.is_none() && m.instance_id.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in missing {
            self.remove_member(&id, E::UnknownMemberId);
        }
        let rejoined_first = self
            .members
            .iter()
            .filter(|(_, m)| m.join_waiter.is_some())
            .min_by_key(|(_, m)| m.order)
            .map(|(id, _)| id.clone());
        if rejoined_first.is_none() && !self.members.is_empty() {
            // As Kafka: when only static members that did not rejoin are left, the join phase
            // starts again (for the longest rebalance timeout), at the same generation.
            let timeout = self.members.values().map(|m| m.rebalance_ms).max();
            self.rebalance = Some(Rebalance {
                deadline_ms: now + timeout.unwrap_or(0),
                initial: None,
            });
            return;
        }
        self.rebalance = None;
        self.generation += 1;
        if self.members.is_empty() {
            self.state = State::Empty;
            self.protocol = None;
            self.leader = None;
            return;
        }
        self.protocol = self.common_protocols().first().map(|p| p.to_string());
        // As Kafka: a leader that did not rejoin is replaced by a member that did (here the
        // earliest; Kafka takes any).
        let leader = self.leader.as_ref().and_then(|l| self.members.get(l));
        if leader.is_none_or(|m| m.join_waiter.is_none()) {
            self.leader = rejoined_first;
        }
        self.state = State::CompletingRebalance;
        let everyone = self.member_list();
        let leader = self.leader.clone().unwrap_or_default();
        let mut answers = Vec::new();
        for (id, m) in self.members.iter_mut() {
            m.heard(now);
            if let Some(w) = m.join_waiter.take() {
                let answer = JoinAnswer {
                    error: 0,
                    generation: self.generation,
                    protocol_type: self.protocol_type.clone(),
                    protocol: self.protocol.clone(),
                    leader: leader.clone(),
                    member_id: id.clone(),
                    members: if *id == leader {
                        everyone.clone()
                    } else {
                        Vec::new()
                    },
                    skip_assignment: false,
                };
                answers.push((w, answer));
            }
        }
        for (w, a) in answers {
            self.answer_join(w, a);
        }
    }
}

fn push_new<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}
