//! One consumer group's state (Kafka's classic group protocol) and the pure parts of its state
//! machine: membership, protocol selection, and what a rebalance does.
//!
//! ```text
//!            join                      all members rejoined / rebalance timeout
//!   Empty ---------> PreparingRebalance -----------------------------------> CompletingRebalance
//!     ^                 ^   ^   (no members left: back to Empty)                    |
//!     |    member leaves|   |  join with new metadata / leader joins     leader's   |
//!     |    or times out |   +-------------------------------- Stable <-----SyncGroup+
//!     +-----------------+ (last member gone)
//! ```
//!
//! Deadlines use a monotonic millisecond clock ([`crate::clock::mono_ms`]); commit and state timestamps that
//! are stored use the wall clock.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::ResponseError as E;

use super::store::{GroupRecord, MemberRecord};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    /// The name Kafka uses in DescribeGroups and ListGroups.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// A committed offset.
#[derive(Clone, Debug, PartialEq)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    /// Wall-clock ms of the commit.
    pub commit_ms: i64,
}

#[derive(Clone, Debug, Default)]
pub struct JoinedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub metadata: Bytes,
}

/// What a JoinGroup request gets back.
#[derive(Clone, Debug, Default)]
pub struct JoinResult {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Filled for the leader only.
    pub members: Vec<JoinedMember>,
    pub skip_assignment: bool,
}

impl JoinResult {
    pub fn error(code: E, member_id: &str) -> JoinResult {
        JoinResult {
            error: code.code(),
            generation: -1,
            member_id: member_id.to_string(),
            ..Default::default()
        }
    }
}

/// What a SyncGroup request gets back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncResult {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignment: Bytes,
}

impl SyncResult {
    pub fn error(code: E) -> SyncResult {
        SyncResult {
            error: code.code(),
            ..Default::default()
        }
    }
}

pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    /// (name, metadata) in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    pub join_waiter: Option<oneshot::Sender<JoinResult>>,
    pub sync_waiter: Option<oneshot::Sender<SyncResult>>,
    /// Monotonic ms of the last sign of life (heartbeat, join, sync, commit) or of the answer to
    /// a waiting join or sync (each starts a new session).
    pub last_seen_ms: i64,
    /// Join order; the earliest member (the earliest that rejoined, when a join phase ends)
    /// leads when the leader must be replaced.
    pub order: u64,
}

impl Member {
    pub fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    fn record(&self) -> MemberRecord {
        MemberRecord {
            member_id: self.id.clone(),
            instance_id: self.instance_id.clone(),
            client_id: self.client_id.clone(),
            client_host: self.client_host.clone(),
            session_timeout_ms: self.session_timeout_ms,
            rebalance_timeout_ms: self.rebalance_timeout_ms,
            protocol_type: self.protocol_type.clone(),
            protocols: self
                .protocols
                .iter()
                .map(|(n, m)| (n.clone(), m.to_vec()))
                .collect(),
            assignment: self.assignment.to_vec(),
        }
    }

    fn from_record(r: &MemberRecord, order: u64, now: i64) -> Member {
        Member {
            id: r.member_id.clone(),
            instance_id: r.instance_id.clone(),
            client_id: r.client_id.clone(),
            client_host: r.client_host.clone(),
            session_timeout_ms: r.session_timeout_ms,
            rebalance_timeout_ms: r.rebalance_timeout_ms,
            protocol_type: r.protocol_type.clone(),
            protocols: r
                .protocols
                .iter()
                .map(|(n, m)| (n.clone(), Bytes::from(m.clone())))
                .collect(),
            assignment: Bytes::from(r.assignment.clone()),
            join_waiter: None,
            sync_waiter: None,
            last_seen_ms: now,
            order,
        }
    }

    fn fail_waiters(&mut self, code: E) {
        if let Some(w) = self.join_waiter.take() {
            let _ = w.send(JoinResult::error(code, &self.id));
        }
        if let Some(w) = self.sync_waiter.take() {
            let _ = w.send(SyncResult::error(code));
        }
    }
}

/// The first rebalance of an empty group waits `group.initial.rebalance.delay.ms` for more
/// members, extended while new members keep arriving, up to the rebalance timeout.
#[derive(Clone, Copy, Debug)]
pub struct InitialDelay {
    pub delay_ms: i64,
    pub remaining_ms: i64,
    pub new_member_added: bool,
}

#[derive(Clone, Copy, Debug)]
pub struct Rebalance {
    /// Monotonic ms at which the join phase ends regardless of missing members.
    pub deadline_ms: i64,
    pub initial: Option<InitialDelay>,
}

pub struct Group {
    pub id: String,
    pub state: GroupState,
    /// Wall-clock ms when the group last became empty (offsets retention counts from here).
    pub empty_since_ms: i64,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub generation: i32,
    pub leader: Option<String>,
    pub members: HashMap<String, Member>,
    next_order: u64,
    /// group.instance.id -> member id of static members.
    pub instances: HashMap<String, String>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, not yet joined, with their expiry.
    pub pending: HashMap<String, i64>,
    pub offsets: HashMap<(Arc<str>, i32), Committed>,
    pub rebalance: Option<Rebalance>,
    /// The membership changed in a way that must be stored (became empty, static member
    /// replaced); the coordinator writes it and clears the flag.
    pub dirty: bool,
}

impl Group {
    pub fn new(id: &str, now_wall_ms: i64) -> Group {
        Group {
            id: id.to_string(),
            state: GroupState::Empty,
            empty_since_ms: now_wall_ms,
            protocol_type: None,
            protocol: None,
            generation: 0,
            leader: None,
            members: HashMap::new(),
            next_order: 0,
            instances: HashMap::new(),
            pending: HashMap::new(),
            offsets: HashMap::new(),
            rebalance: None,
            dirty: false,
        }
    }

    /// Rebuilds a group from its stored record (members come back with fresh session timers).
    pub fn from_record(id: &str, record: &GroupRecord, now: i64, now_wall_ms: i64) -> Group {
        let mut g = Group::new(id, now_wall_ms);
        g.protocol_type = record.protocol_type.clone();
        g.protocol = record.protocol.clone();
        g.generation = record.generation;
        g.leader = record.leader.clone();
        for m in &record.members {
            let member = Member::from_record(m, g.next_order, now);
            g.next_order += 1;
            if let Some(i) = &member.instance_id {
                g.instances.insert(i.clone(), member.id.clone());
            }
            g.members.insert(member.id.clone(), member);
        }
        if g.members.is_empty() {
            g.protocol = None;
            g.leader = None;
        } else {
            g.state = GroupState::Stable;
            if g.leader.as_ref().is_none_or(|l| !g.members.contains_key(l)) {
                g.leader = g.first_member();
            }
        }
        g
    }

    pub fn record(&self) -> GroupRecord {
        let mut members: Vec<&Member> = self.members.values().collect();
        members.sort_by_key(|m| m.order);
        GroupRecord {
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            generation: self.generation,
            leader: self.leader.clone(),
            members: members.into_iter().map(Member::record).collect(),
        }
    }

    pub fn is(&self, state: GroupState) -> bool {
        self.state == state
    }

    fn first_member(&self) -> Option<String> {
        self.members
            .values()
            .min_by_key(|m| m.order)
            .map(|m| m.id.clone())
    }

    pub fn next_order(&mut self) -> u64 {
        self.next_order += 1;
        self.next_order
    }

    /// Protocol names every member supports, in the first member's order.
    fn candidate_protocols(&self) -> Vec<String> {
        let mut members = self.members.values();
        let Some(first) = members.next() else {
            return Vec::new();
        };
        let mut names: Vec<String> = first.protocols.iter().map(|(n, _)| n.clone()).collect();
        for m in members {
            names.retain(|n| m.protocols.iter().any(|(p, _)| p == n));
        }
        names
    }

    /// Whether a member with this protocol type and protocols may join (Kafka's
    /// INCONSISTENT_GROUP_PROTOCOL check).
    pub fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.members.is_empty() {
            return true;
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        let candidates = self.candidate_protocols();
        protocols.iter().any(|(n, _)| candidates.contains(n))
    }

    /// Each member votes for its most preferred protocol among those all support; most votes
    /// wins (ties go to the earlier candidate).
    pub fn select_protocol(&self) -> Option<String> {
        let candidates = self.candidate_protocols();
        let mut votes: Vec<(String, usize)> = candidates.iter().map(|c| (c.clone(), 0)).collect();
        for m in self.members.values() {
            if let Some((name, _)) = m.protocols.iter().find(|(n, _)| candidates.contains(n)) {
                if let Some(v) = votes.iter_mut().find(|(c, _)| c == name) {
                    v.1 += 1;
                }
            }
        }
        let best = votes.iter().map(|(_, n)| *n).max()?;
        votes.into_iter().find(|(_, n)| *n == best).map(|(c, _)| c)
    }

    fn max_rebalance_timeout(&self) -> i64 {
        self.members
            .values()
            .map(|m| i64::from(m.rebalance_timeout_ms))
            .max()
            .unwrap_or(0)
    }

    pub fn add_member(&mut self, member: Member) {
        if let Some(i) = &member.instance_id {
            self.instances.insert(i.clone(), member.id.clone());
        }
        if self.leader.is_none() {
            self.leader = Some(member.id.clone());
        }
        if self.members.is_empty() {
            // As Kafka: the first member of a group without members sets its protocol type.
            self.protocol_type = Some(member.protocol_type.clone());
        }
        if let Some(init) = self.rebalance.as_mut().and_then(|r| r.initial.as_mut()) {
            init.new_member_added = true;
        }
        self.members.insert(member.id.clone(), member);
    }

    /// Removes a member; its pending join or sync gets `code`.
    pub fn remove_member(&mut self, id: &str, code: E) -> Option<Member> {
        let mut member = self.members.remove(id)?;
        member.fail_waiters(code);
        if let Some(i) = &member.instance_id {
            if self.instances.get(i).is_some_and(|m| m == id) {
                self.instances.remove(i);
            }
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = self.first_member();
        }
        Some(member)
    }

    /// Removes a member and moves the group on as Kafka does: a rebalance if it was stable or
    /// syncing, a check for completion if it was already rebalancing.
    pub fn remove_member_and_update(
        &mut self,
        id: &str,
        now: i64,
        initial_delay_ms: i64,
        wall_ms: i64,
    ) {
        if self.remove_member(id, E::UnknownMemberId).is_none() {
            return;
        }
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(now, initial_delay_ms);
            }
            _ => {}
        }
        self.poll_rebalance(now, wall_ms);
    }

    /// Enters PreparingRebalance. Members waiting in SyncGroup get REBALANCE_IN_PROGRESS (and,
    /// as in Kafka, a new session from now).
    pub fn prepare_rebalance(&mut self, now: i64, initial_delay_ms: i64) {
        if self.is(GroupState::CompletingRebalance) {
            for m in self.members.values_mut() {
                m.assignment = Bytes::new();
                if let Some(w) = m.sync_waiter.take() {
                    let _ = w.send(SyncResult::error(E::RebalanceInProgress));
                    m.last_seen_ms = now;
                }
            }
        }
        let timeout = self.max_rebalance_timeout();
        self.rebalance = Some(if self.is(GroupState::Empty) {
            let delay = initial_delay_ms.min(timeout);
            Rebalance {
                deadline_ms: now + delay,
                initial: Some(InitialDelay {
                    delay_ms: initial_delay_ms,
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
        self.state = GroupState::PreparingRebalance;
    }

    fn all_joined(&self) -> bool {
        self.pending.is_empty() && self.members.values().all(|m| m.join_waiter.is_some())
    }

    /// Completes the join phase when it is due: every member has rejoined, or the deadline
    /// passed. Returns true if it completed (false also when it was postponed).
    pub fn poll_rebalance(&mut self, now: i64, wall_ms: i64) -> bool {
        if !self.is(GroupState::PreparingRebalance) {
            return false;
        }
        let Some(mut rb) = self.rebalance else {
            return false;
        };
        if let Some(mut init) = rb.initial {
            if now < rb.deadline_ms {
                return false;
            }
            if init.new_member_added && init.remaining_ms > 0 {
                let delay = init.delay_ms.min(init.remaining_ms);
                init.remaining_ms -= delay;
                init.new_member_added = false;
                rb.deadline_ms = now + delay;
                rb.initial = Some(init);
                self.rebalance = Some(rb);
                return false;
            }
        } else if !self.all_joined() && now < rb.deadline_ms {
            return false;
        }
        self.complete_join(now, wall_ms)
    }

    /// Ends the join phase: members that did not rejoin are dropped (static members are kept),
    /// the generation moves on, and every waiting member learns the result. A leader that did
    /// not rejoin hands over to the earliest member that did; if no member rejoined (only
    /// static members that did not are left), the join phase starts again at the same
    /// generation, as in Kafka, and false is returned.
    fn complete_join(&mut self, now: i64, wall_ms: i64) -> bool {
        let missing: Vec<String> = self
            .members
            .values()
            .filter(|m| m.join_waiter.is_none() && m.instance_id.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in missing {
            tracing::info!(group = %self.id, member = %id, "member did not rejoin in time; removing it");
            self.remove_member(&id, E::UnknownMemberId);
        }
        let rejoined_first = self
            .members
            .values()
            .filter(|m| m.join_waiter.is_some())
            .min_by_key(|m| m.order)
            .map(|m| m.id.clone());
        if rejoined_first.is_none() && !self.members.is_empty() {
            tracing::warn!(group = %self.id, "no member rejoined; waiting another rebalance timeout");
            self.rebalance = Some(Rebalance {
                deadline_ms: now + self.max_rebalance_timeout(),
                initial: None,
            });
            return false;
        }
        self.rebalance = None;
        self.generation += 1;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol = None;
            self.leader = None;
            self.empty_since_ms = wall_ms;
            self.dirty = true;
            tracing::info!(group = %self.id, generation = self.generation, "group is empty");
            return true;
        }
        self.protocol = self.select_protocol();
        let leader_rejoined = self
            .leader
            .as_ref()
            .and_then(|l| self.members.get(l))
            .is_some_and(|m| m.join_waiter.is_some());
        if !leader_rejoined {
            self.leader = rejoined_first;
        }
        self.state = GroupState::CompletingRebalance;
        tracing::info!(group = %self.id, generation = self.generation, members = self.members.len(), protocol = ?self.protocol, "rebalance: join phase complete");
        let everyone = self.joined_members();
        let leader = self.leader.clone().unwrap_or_default();
        for m in self.members.values_mut() {
            m.last_seen_ms = now;
            if let Some(w) = m.join_waiter.take() {
                let _ = w.send(JoinResult {
                    error: 0,
                    generation: self.generation,
                    protocol_type: self.protocol_type.clone(),
                    protocol: self.protocol.clone(),
                    leader: leader.clone(),
                    member_id: m.id.clone(),
                    members: if m.id == leader {
                        everyone.clone()
                    } else {
                        Vec::new()
                    },
                    skip_assignment: false,
                });
            }
        }
        true
    }

    /// Every member with its metadata for the selected protocol, in join order.
    pub fn joined_members(&self) -> Vec<JoinedMember> {
        let protocol = self.protocol.clone().unwrap_or_default();
        let mut members: Vec<&Member> = self.members.values().collect();
        members.sort_by_key(|m| m.order);
        members
            .into_iter()
            .map(|m| JoinedMember {
                member_id: m.id.clone(),
                instance_id: m.instance_id.clone(),
                metadata: m.metadata_for(&protocol),
            })
            .collect()
    }

    /// The join result for a member that rejoined without changes while no rebalance is needed.
    pub fn current_join_result(
        &self,
        member_id: &str,
        include_members: bool,
        skip_assignment: bool,
    ) -> JoinResult {
        JoinResult {
            error: 0,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            members: if include_members {
                self.joined_members()
            } else {
                Vec::new()
            },
            skip_assignment,
        }
    }

    /// Static membership: `instance_id`'s member was `old_id` and is now `new_id`; the old id is
    /// fenced.
    pub fn replace_static_member(&mut self, old_id: &str, new_id: &str) {
        let Some(mut member) = self.members.remove(old_id) else {
            return;
        };
        member.fail_waiters(E::FencedInstanceId);
        member.id = new_id.to_string();
        if let Some(i) = &member.instance_id {
            self.instances.insert(i.clone(), new_id.to_string());
        }
        if self.leader.as_deref() == Some(old_id) {
            self.leader = Some(new_id.to_string());
        }
        self.members.insert(new_id.to_string(), member);
        self.dirty = true;
    }

    /// The instance id fences this member id: it belongs to another member now.
    pub fn is_fenced(&self, member_id: &str, instance_id: Option<&str>) -> bool {
        match instance_id {
            Some(i) => self.instances.get(i).is_some_and(|m| m != member_id),
            None => false,
        }
    }

    /// Topics the members subscribe to, for a group using the consumer protocol; None if the
    /// subscriptions cannot be read.
    pub fn subscribed_topics(&self) -> Option<Vec<String>> {
        use kafka_protocol::messages::ConsumerProtocolSubscription;
        use kafka_protocol::protocol::Decodable;
        if self.protocol_type.as_deref() != Some("consumer") {
            return None;
        }
        let protocol = self.protocol.clone()?;
        let mut topics = Vec::new();
        for m in self.members.values() {
            let mut meta = m.metadata_for(&protocol);
            if meta.len() < 2 {
                return None;
            }
            let version = i16::from_be_bytes([meta[0], meta[1]]);
            let _ = bytes::Buf::get_i16(&mut meta);
            let version = version.clamp(0, 3);
            let sub = ConsumerProtocolSubscription::decode(&mut meta, version).ok()?;
            topics.extend(sub.topics.iter().map(|t| t.to_string()));
        }
        topics.sort();
        topics.dedup();
        Some(topics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, protocols: &[&str], order: u64) -> Member {
        Member {
            id: id.into(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 1_000,
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|p| (p.to_string(), Bytes::from_static(b"m")))
                .collect(),
            assignment: Bytes::new(),
            join_waiter: None,
            sync_waiter: None,
            last_seen_ms: 0,
            order,
        }
    }

    #[test]
    fn protocol_vote_picks_the_common_favourite() {
        let mut g = Group::new("g", 0);
        g.add_member(member("a", &["range", "roundrobin"], 1));
        g.add_member(member("b", &["roundrobin", "range"], 2));
        g.add_member(member("c", &["roundrobin", "sticky"], 3));
        assert_eq!(g.select_protocol().as_deref(), Some("roundrobin"));
        assert!(g.supports("consumer", &[("roundrobin".into(), Bytes::new())]));
        assert!(!g.supports("consumer", &[("range".into(), Bytes::new())]));
        assert!(!g.supports("connect", &[("roundrobin".into(), Bytes::new())]));
    }

    #[test]
    fn rebalance_completes_when_all_rejoin_and_drops_the_missing() {
        let mut g = Group::new("g", 0);
        let (tx, mut rx) = oneshot::channel();
        let mut a = member("a", &["range"], 1);
        a.join_waiter = Some(tx);
        g.add_member(a);
        g.prepare_rebalance(0, 0);
        assert!(g.poll_rebalance(0, 0));
        assert!(g.is(GroupState::CompletingRebalance));
        let r = rx.try_recv().unwrap().unwrap();
        assert_eq!(
            (r.generation, r.leader.as_str(), r.members.len()),
            (1, "a", 1)
        );

        // A second member joins; "a" never rejoins and is dropped at the deadline.
        g.state = GroupState::Stable;
        let (tx, mut rx) = oneshot::channel();
        let mut b = member("b", &["range"], 2);
        b.join_waiter = Some(tx);
        g.add_member(b);
        g.prepare_rebalance(100, 0);
        assert!(!g.poll_rebalance(500, 0));
        assert!(g.poll_rebalance(1100, 0));
        let r = rx.try_recv().unwrap().unwrap();
        assert_eq!(
            (r.generation, r.leader.as_str(), r.members.len()),
            (2, "b", 1)
        );
        assert!(!g.members.contains_key("a"));

        g.state = GroupState::Stable;
        g.remove_member_and_update("b", 2000, 0, 5);
        assert!(g.is(GroupState::Empty));
        assert_eq!((g.generation, g.empty_since_ms, g.dirty), (3, 5, true));
    }

    #[test]
    fn initial_delay_extends_while_members_arrive() {
        let mut g = Group::new("g", 0);
        let mut a = member("a", &["range"], 1);
        a.rebalance_timeout_ms = 10_000;
        let (tx, _rx) = oneshot::channel();
        a.join_waiter = Some(tx);
        g.add_member(a);
        g.prepare_rebalance(0, 3000);
        assert!(!g.poll_rebalance(2999, 0));
        let mut b = member("b", &["range"], 2);
        let (tx, _rx2) = oneshot::channel();
        b.join_waiter = Some(tx);
        g.add_member(b);
        assert!(!g.poll_rebalance(3000, 0), "a new member extends the delay");
        assert!(!g.poll_rebalance(5999, 0));
        assert!(g.poll_rebalance(6000, 0));
        assert_eq!(g.members.len(), 2);
    }
}
