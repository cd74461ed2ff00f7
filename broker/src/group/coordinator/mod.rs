//! The group coordinator of one shard: the groups whose offsets-log partition this shard owns.
//!
//! Every operation is a synchronous step on the shard's own `RefCell` of groups (no locks, no
//! borrow held across an await) that either answers at once or hands back a receiver the
//! answer will arrive on (a JoinGroup waiting for the other members, a SyncGroup waiting for the
//! leader). Writes to the offsets log are queued in call order on the partition's writer and
//! awaited outside the borrow; committed offsets change in memory only once stored.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::ResponseError as E;

use super::input;
use super::state::{Committed, Group, GroupState, JoinResult, Member, SyncResult};
use super::store::{self, LogRecord, OffsetsStore, StoreError};
use crate::clock::{mono_ms, now_ms};
use crate::config::GroupSettings;
use crate::metadata::ClusterMeta;

mod offsets;

/// How often expired offsets of empty groups are looked for.
const RETENTION_CHECK_MS: i64 = 60_000;

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

    /// The open partitions of the offsets log (compacted by the shard's cleaner).
    pub fn offsets_logs(&self) -> Vec<Rc<strom_storage::PartitionLog>> {
        self.store.logs()
    }

    /// Replays the owned partitions of the offsets log into memory. Offsets of topics that no
    /// longer exist are dropped (and deleted from the log).
    pub async fn load(
        self: &Rc<Self>,
        owned: &[u32],
        meta: &ClusterMeta,
    ) -> Result<(), store::ReplayError> {
        let mut offsets: HashMap<String, HashMap<(Arc<str>, i32), Committed>> = HashMap::new();
        let mut records: HashMap<String, store::GroupRecord> = HashMap::new();
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

    // ---------------------------------------------------------------------------------------
    // JoinGroup

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

    // ---------------------------------------------------------------------------------------
    // SyncGroup

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
    /// failed, make them rejoin).
    fn finish_sync(&self, group_id: &str, generation: i32, stored: Result<(), StoreError>) {
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
                    }
                }
                group.prepare_rebalance(mono_ms(), self.settings.initial_rebalance_delay_ms);
                if let Some(rb) = group.rebalance {
                    self.lower_next_due(rb.deadline_ms);
                }
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Heartbeat, LeaveGroup

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

    // ---------------------------------------------------------------------------------------
    // ListGroups, DescribeGroups, DeleteGroups

    pub fn list(&self, states: &[String], types: &[String]) -> Vec<ListedGroup> {
        let groups = self.groups.borrow();
        let mut out: Vec<ListedGroup> = groups
            .values()
            .filter(|g| !g.is(GroupState::Dead))
            .filter(|g| {
                states.is_empty()
                    || states
                        .iter()
                        .any(|s| s.eq_ignore_ascii_case(g.state.name()))
            })
            .filter(|_| types.is_empty() || types.iter().any(|t| t.eq_ignore_ascii_case("classic")))
            .map(|g| ListedGroup {
                group_id: g.id.clone(),
                protocol_type: g.protocol_type.clone().unwrap_or_default(),
                state: g.state.name(),
            })
            .collect();
        out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        out
    }

    pub fn describe(&self, group_id: &str) -> DescribedGroup {
        let groups = self.groups.borrow();
        let Some(g) = groups.get(group_id) else {
            return DescribedGroup {
                group_id: group_id.to_string(),
                state: GroupState::Dead.name(),
                ..Default::default()
            };
        };
        let stable = g.is(GroupState::Stable);
        let protocol = if stable {
            g.protocol.clone().unwrap_or_default()
        } else {
            String::new()
        };
        let mut members: Vec<&Member> = g.members.values().collect();
        members.sort_by_key(|m| m.order);
        DescribedGroup {
            error: 0,
            group_id: g.id.clone(),
            state: g.state.name(),
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            protocol: protocol.clone(),
            members: members
                .into_iter()
                .map(|m| DescribedMember {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: if stable {
                        m.metadata_for(&protocol)
                    } else {
                        Bytes::new()
                    },
                    assignment: if stable {
                        m.assignment.clone()
                    } else {
                        Bytes::new()
                    },
                })
                .collect(),
        }
    }

    pub async fn delete_group(self: &Rc<Self>, group_id: &str) -> i16 {
        let records = {
            let mut groups = self.groups.borrow_mut();
            let Some(group) = groups.get(group_id) else {
                return E::GroupIdNotFound.code();
            };
            match group.state {
                GroupState::Dead => return E::GroupIdNotFound.code(),
                GroupState::Empty => {}
                _ => return E::NonEmptyGroup.code(),
            }
            let group = groups.remove(group_id).expect("present");
            let mut records: Vec<LogRecord> = group
                .offsets
                .keys()
                .map(|(topic, p)| LogRecord::Offset {
                    group: group_id.to_string(),
                    topic: topic.clone(),
                    partition: *p,
                    value: None,
                })
                .collect();
            records.push(LogRecord::Group {
                group: group_id.to_string(),
                value: None,
            });
            records
        };
        tracing::info!(group = %group_id, "group deleted");
        let rx = self.store.submit(self, records);
        match store::outcome(rx).await {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!(group = %group_id, "deleting group: {e}");
                e.code()
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Timers

    /// Expires sessions and pending members, ends join phases whose time is up, and (rarely)
    /// removes expired offsets of empty groups. Called from the shard's tick.
    pub fn tick(self: &Rc<Self>) {
        let now = mono_ms();
        let wall = now_ms();
        if now >= self.next_retention_check_ms.get() {
            self.next_retention_check_ms.set(now + RETENTION_CHECK_MS);
            self.expire_offsets(wall);
        }
        if now < self.next_due_ms.get() {
            return;
        }
        let delay = self.settings.initial_rebalance_delay_ms;
        let mut next = i64::MAX;
        let mut groups = self.groups.borrow_mut();
        for group in groups.values_mut() {
            group.pending.retain(|id, expiry| {
                let keep = *expiry > now;
                if !keep {
                    tracing::info!(group = %group.id, member = %id, "pending member did not join in time");
                }
                keep
            });
            let expired: Vec<String> = group
                .members
                .values()
                .filter(|m| {
                    m.join_waiter.is_none()
                        && m.sync_waiter.is_none()
                        && now - m.last_seen_ms > i64::from(m.session_timeout_ms)
                })
                .map(|m| m.id.clone())
                .collect();
            for id in expired {
                tracing::info!(group = %group.id, member = %id, "session timed out; removing member");
                group.remove_member_and_update(&id, now, delay, wall);
            }
            group.poll_rebalance(now, wall);
            for m in group.members.values() {
                if m.join_waiter.is_none() && m.sync_waiter.is_none() {
                    next = next.min(m.last_seen_ms + i64::from(m.session_timeout_ms) + 1);
                }
            }
            for expiry in group.pending.values() {
                next = next.min(*expiry);
            }
            if let Some(rb) = group.rebalance {
                next = next.min(rb.deadline_ms);
            }
            self.persist_dirty(group);
        }
        // Heartbeats only push deadlines later, so `next` stays a safe lower bound until a new
        // deadline is set (which lowers it again).
        self.next_due_ms.set(next.min(now + 1_000));
    }

    fn expire_offsets(self: &Rc<Self>, wall: i64) {
        let retention = self.settings.offsets_retention_ms;
        let mut records = Vec::new();
        let mut groups = self.groups.borrow_mut();
        let mut drop_groups = Vec::new();
        for g in groups.values() {
            if !g.is(GroupState::Empty) {
                continue;
            }
            let mut left = 0;
            for ((topic, p), c) in &g.offsets {
                if c.commit_ms.max(g.empty_since_ms).saturating_add(retention) <= wall {
                    records.push(LogRecord::Offset {
                        group: g.id.clone(),
                        topic: topic.clone(),
                        partition: *p,
                        value: None,
                    });
                } else {
                    left += 1;
                }
            }
            if left == 0 && g.empty_since_ms.saturating_add(retention) <= wall {
                drop_groups.push(g.id.clone());
            }
        }
        for id in &drop_groups {
            groups.remove(id);
            records.push(LogRecord::Group {
                group: id.clone(),
                value: None,
            });
        }
        drop(groups);
        if !records.is_empty() {
            tracing::info!(
                groups = drop_groups.len(),
                records = records.len(),
                "expiring offsets of empty groups"
            );
            let me = self.clone();
            glommio::spawn_local(async move { me.write_each_group(records).await }).detach();
        }
    }

    pub async fn close(&self) {
        self.store.close().await;
    }
}
