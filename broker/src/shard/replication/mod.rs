//! Partition replication in cluster mode: this shard's side of Kafka's ISR protocol.
//!
//! A partition's replicas live on the same shard index of every node, so shard i only talks to
//! shard i of its peers. For every partition it holds a replica of, the shard keeps a role:
//! - **leader** ([`LeaderReplica`]): followers fetch from it over the replication listener
//!   (`serve_replica_fetch`); it answers from its log up to the log end, counts each follower's
//!   durable end, moves the high watermark to the minimum durable end over the ISR (the log's
//!   high watermark follows it, so consumers read only replicated data), proposes ISR changes
//!   to the controller, and answers acks=all produces once the high watermark passes them;
//! - **follower** ([`FollowerReplica`]): one fetcher task per leader node (`fetcher`) pulls
//!   every partition it follows there in one Fetch request, appends the leader's batches as
//!   they are, fsyncs, and asks again from its durable end.
//!
//! The decisions are the sans-I/O machines of `strom_cluster::replication`
//! ([`LeaderPartition`], [`FollowerPartition`]); this module feeds them the log's state and the
//! clock, and carries out what they decide. Roles follow the controller's committed image
//! ([`reconcile`]), checked on every change and at every replication tick.

mod fetcher;
mod leader;
mod offsets;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use event_listener::Event;
use futures::future::select;
use strom_cluster::controller::MetadataImage;
use strom_cluster::replication::{
    EpochLookup, FollowerPartition, FollowerUpdate, LeaderPartition, LeaderUpdate,
    ReplicationConfig,
};
use strom_cluster::{LeaderEpoch, NodeId, Offset};
use strom_storage::PartitionLog;

use super::Shard;
use crate::clock::now_ms;
use crate::group::store::OFFSETS_TOPIC;
use crate::ids::PartitionId;

pub use leader::{serve_replica_fetch, wait_for_ack, AckOutcome, ReplicaFetchPart};
pub use offsets::ShardOffsets;

/// How often roles are checked against the image, ISR changes proposed and fetchers started.
pub const REPLICATION_TICK_MS: u64 = 50;

/// How long an ISR change waits for the controller before it is proposed again.
const ISR_CHANGE_RETRY_MS: i64 = 1_000;

/// A partition, by topic name and index.
pub type PartKey = (Arc<str>, i32);

/// The leader's side of one partition.
pub struct LeaderReplica {
    pub log: Rc<PartitionLog>,
    pub state: RefCell<LeaderPartition>,
    /// Set when this leadership ended (another leader or epoch, the topic gone).
    pub resigned: Cell<bool>,
    /// Fires when the machine's high watermark moves (acks=all produces wait on it).
    pub hw_event: Event,
    /// The machine's high watermark when it was last published.
    published: Cell<Offset>,
}

impl LeaderReplica {
    /// Tells the machine how far the log is appended and synced, and moves the log's high
    /// watermark to the machine's.
    pub fn sync(&self) {
        {
            let mut state = self.state.borrow_mut();
            state.on_local_append(self.log.log_end_offset());
            state.on_local_durable(self.log.durable_end_offset());
        }
        self.publish_high_watermark();
    }

    /// Moves the log's high watermark (what consumers may read, what wakes acks=all produces)
    /// up to the machine's. A log opened with its high watermark at its end is ahead until
    /// replication catches up; it never goes back.
    pub fn publish_high_watermark(&self) {
        let hw = self.state.borrow().high_watermark();
        if hw <= self.published.get() {
            return;
        }
        self.published.set(hw);
        if hw > self.log.high_watermark() && hw <= self.log.log_end_offset() {
            self.log.set_high_watermark(hw);
        }
        self.hw_event.notify(usize::MAX);
    }
}

/// A follower's side of one partition.
pub struct FollowerReplica {
    pub key: PartKey,
    pub log: Rc<PartitionLog>,
    pub state: RefCell<FollowerPartition>,
    /// Set when this node stopped following the partition.
    pub removed: Cell<bool>,
}

/// What this shard is for one partition it holds a replica of.
#[derive(Clone)]
pub enum Role {
    Leader(Rc<LeaderReplica>),
    Follower(Rc<FollowerReplica>),
}

/// The epochs of a partition's log, for the replication machines.
pub struct LogLookup<'a>(pub &'a PartitionLog);

impl EpochLookup for LogLookup<'_> {
    fn end_offset_for(&self, epoch: LeaderEpoch) -> (LeaderEpoch, Offset) {
        self.0.epoch_end_offset(epoch)
    }
}

/// This shard's replication state.
pub struct Replicas {
    me: NodeId,
    roles: RefCell<HashMap<PartKey, Role>>,
    /// Fires when a follower's assignment or the set of followed partitions changes.
    pub changed: Event,
    /// Fires when a leader's committed ISR changes (acks=all produces check again).
    pub isr_changed: Event,
    /// Fires when roles were added (a produce that came before its leader role waits on it).
    roles_added: Event,
    /// Wakes the replication loop to check the roles now (new logs were opened).
    pub wake: Event,
    /// Leader nodes with a running fetcher task.
    fetchers: RefCell<HashSet<i32>>,
    /// The image index the roles were last made to match, and whether some replica still
    /// lacked its log then (checked again at the next tick).
    reconciled: Cell<(u64, bool)>,
    /// When this shard last asked the controller to create the offsets topic (ms).
    pub offsets_topic_requested_ms: Cell<i64>,
    /// Counters for the metrics.
    pub isr_shrinks: Cell<u64>,
    pub isr_expands: Cell<u64>,
}

impl Replicas {
    pub fn new(me: NodeId) -> Replicas {
        Replicas {
            me,
            roles: RefCell::new(HashMap::new()),
            changed: Event::new(),
            isr_changed: Event::new(),
            roles_added: Event::new(),
            wake: Event::new(),
            fetchers: RefCell::new(HashSet::new()),
            reconciled: Cell::new((0, true)),
            offsets_topic_requested_ms: Cell::new(0),
            isr_shrinks: Cell::new(0),
            isr_expands: Cell::new(0),
        }
    }

    /// The leader state of a partition this shard leads.
    pub fn leader(&self, topic: &str, partition: i32) -> Option<Rc<LeaderReplica>> {
        match self.roles.borrow().get(&(Arc::from(topic), partition)) {
            Some(Role::Leader(l)) => Some(l.clone()),
            _ => None,
        }
    }

    /// The leader state of a partition the controller's image says this node leads, waiting up
    /// to `wait_ms` for it if the shard has not taken over yet (right after the partition was
    /// created or assigned, until the replication loop has caught up with the image).
    pub async fn leader_soon(
        &self,
        shard: &Shard,
        topic: &str,
        partition: i32,
        wait_ms: u64,
    ) -> Option<Rc<LeaderReplica>> {
        let deadline = std::time::Instant::now() + Duration::from_millis(wait_ms);
        loop {
            let added = self.roles_added.listen();
            if let Some(l) = self.leader(topic, partition) {
                return Some(l);
            }
            let named = shard.quorum.as_ref().is_some_and(|view| {
                view.load()
                    .image
                    .partition(topic, partition)
                    .is_some_and(|p| p.leader == self.me.0)
            });
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if !named || left.is_zero() {
                return None;
            }
            self.wake.notify(usize::MAX);
            let timer = glommio::timer::Timer::new(left);
            select(added, Box::pin(timer)).await;
        }
    }

    /// Every role, for the metrics.
    pub fn roles(&self) -> Vec<(PartKey, Role)> {
        self.roles
            .borrow()
            .iter()
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect()
    }

    /// The follower replicas whose leader is `node`.
    fn following(&self, node: i32) -> Vec<Rc<FollowerReplica>> {
        self.roles
            .borrow()
            .values()
            .filter_map(|r| match r {
                Role::Follower(f) if f.state.borrow().leader() == Some(NodeId(node)) => {
                    Some(f.clone())
                }
                _ => None,
            })
            .collect()
    }
}

/// The replication settings of a partition of `topic`.
fn config_of(shard: &Shard, topic: &str) -> ReplicationConfig {
    let min_insync = shard
        .meta()
        .topic(topic)
        .map_or(1, |t| t.config.min_insync_replicas.max(1));
    let lag_ms = shard
        .config
        .cluster
        .as_ref()
        .map_or(30_000, |c| c.replica_lag_time_max_ms);
    ReplicationConfig {
        min_insync_replicas: usize::try_from(min_insync).unwrap_or(1),
        replica_lag_time_max_ms: lag_ms,
        isr_change_retry_ms: ISR_CHANGE_RETRY_MS,
    }
}

/// The shard's replication loop (cluster mode): keeps the roles in line with the controller's
/// image, proposes ISR changes and starts fetchers, until shutdown.
pub async fn run(shard: Rc<Shard>, replicas: Rc<Replicas>, shutdown: Arc<AtomicBool>) {
    let Some(view) = shard.quorum.clone() else {
        return;
    };
    while !shutdown.load(Ordering::Relaxed) {
        let changed = view.changed.listen();
        let state = view.load();
        let (applied, incomplete) = replicas.reconciled.get();
        if state.applied != applied || incomplete {
            let incomplete = reconcile(&shard, &replicas, &state.image).await;
            replicas.reconciled.set((state.applied, incomplete));
        }
        propose_isr_changes(&shard, &replicas);
        start_fetchers(&shard, &replicas, &shutdown);
        let tick = glommio::timer::Timer::new(Duration::from_millis(REPLICATION_TICK_MS));
        let wake = replicas.wake.listen();
        select(select(changed, wake), Box::pin(tick)).await;
    }
    // Fetchers and waiters end on their own; resign everything so that waiting produces
    // answer now.
    let roles: Vec<(PartKey, Role)> = replicas.roles.borrow_mut().drain().collect();
    for (key, role) in roles {
        release(&shard, &key, &role);
    }
    replicas.changed.notify(usize::MAX);
    replicas.isr_changed.notify(usize::MAX);
}

/// This shard leads a partition of the offsets topic now: it loads the partition's groups and
/// offsets, then coordinates them.
async fn take_over_offsets(shard: &Rc<Shard>, partition: i32, log: &Rc<PartitionLog>) {
    let Ok(p) = u32::try_from(partition) else {
        return;
    };
    match shard.groups.load_partition(p, log, &shard.meta()).await {
        Ok(()) => {
            if let Some(view) = &shard.quorum {
                view.set_offsets_loaded(p, true);
            }
        }
        Err(e) => tracing::error!("loading {OFFSETS_TOPIC}-{partition}: {e}"),
    }
}

/// Ends `role` of `key`; a leader of an offsets partition stops coordinating its groups.
fn release(shard: &Shard, key: &PartKey, role: &Role) {
    end_role(role);
    if let (Role::Leader(_), Some(view)) = (role, &shard.quorum) {
        if &*key.0 == OFFSETS_TOPIC {
            if let Ok(p) = u32::try_from(key.1) {
                view.set_offsets_loaded(p, false);
                shard.groups.unload_partition(p);
            }
        }
    }
}

fn same_log(role: &Role, log: &Rc<PartitionLog>) -> bool {
    match role {
        Role::Leader(l) => Rc::ptr_eq(&l.log, log),
        Role::Follower(f) => Rc::ptr_eq(&f.log, log),
    }
}

fn end_role(role: &Role) {
    match role {
        Role::Leader(l) => l.resigned.set(true),
        Role::Follower(f) => f.removed.set(true),
    }
}

/// Makes the roles match `image` for the partitions this shard holds. Returns whether some
/// replica could not be set up yet (its log is not open yet).
async fn reconcile(shard: &Rc<Shard>, replicas: &Rc<Replicas>, image: &MetadataImage) -> bool {
    let me = replicas.me;
    let meta = shard.meta();
    // Until this process is registered, the image may still show the leader epochs of its
    // previous incarnation, which its registration bumps: it leads nothing before that.
    let registered = shard.quorum.as_ref().is_some_and(|v| v.registered());
    let mut incomplete = !registered;
    let mut seen = HashSet::new();
    let mut follower_changed = false;
    // Fenced brokers may not join an ISR (the controller refuses them): not proposed.
    let fenced: Vec<NodeId> = image
        .brokers
        .values()
        .filter(|b| b.fenced)
        .map(|b| NodeId(b.node_id))
        .collect();
    for (name, topic) in &image.topics {
        for (p, record) in topic.partitions.iter().enumerate() {
            if !record.replicas.contains(&me.0) {
                continue;
            }
            let p = p as i32;
            match meta.owner(name, PartitionId(p)) {
                Some(owner) if owner == shard.id => {}
                Some(_) => continue,
                None => {
                    incomplete = true;
                    continue;
                }
            }
            let Some(log) = shard.logs.get(name, p) else {
                incomplete = true;
                continue;
            };
            let key: PartKey = (Arc::from(name.as_str()), p);
            seen.insert(key.clone());
            let mut assignment = record.assignment();
            if !registered && assignment.leader == Some(me) {
                assignment.leader = None;
            }
            let config = config_of(shard, name);
            let existing = replicas.roles.borrow().get(&key).cloned();
            // A log replaced under the same name (topic deleted and created again) starts over.
            let current = match existing {
                Some(r) if same_log(&r, &log) => Some(r),
                Some(r) => {
                    release(shard, &key, &r);
                    None
                }
                None => None,
            };
            let next = match current {
                Some(Role::Leader(l)) => {
                    let update = l.state.borrow_mut().apply_assignment(assignment.clone());
                    match update {
                        LeaderUpdate::Stale | LeaderUpdate::Applied => {
                            l.state.borrow_mut().set_ineligible(fenced.clone());
                            if l.state.borrow().config() != config {
                                l.state.borrow_mut().set_config(config);
                            }
                            l.publish_high_watermark();
                            if update == LeaderUpdate::Applied {
                                replicas.isr_changed.notify(usize::MAX);
                            }
                            continue;
                        }
                        LeaderUpdate::Resign => {
                            release(shard, &key, &Role::Leader(l.clone()));
                            replicas.isr_changed.notify(usize::MAX);
                            follower_changed = true;
                            if assignment.leader == Some(me) {
                                become_leader(shard, replicas, &key, log, assignment, config).await
                            } else {
                                follow(me, &key, log, assignment).await
                            }
                        }
                    }
                }
                Some(Role::Follower(f)) => {
                    let update = f.state.borrow_mut().apply_assignment(assignment.clone());
                    // A follower held back only until this process registered leads now.
                    let lead = assignment.leader == Some(me);
                    match update {
                        FollowerUpdate::Stale if !lead => continue,
                        FollowerUpdate::Applied => {
                            follower_changed = true;
                            continue;
                        }
                        FollowerUpdate::Stale | FollowerUpdate::BecomeLeader => {
                            f.removed.set(true);
                            follower_changed = true;
                            become_leader(shard, replicas, &key, log, assignment, config).await
                        }
                    }
                }
                None => {
                    follower_changed = true;
                    if assignment.leader == Some(me) {
                        become_leader(shard, replicas, &key, log, assignment, config).await
                    } else {
                        follow(me, &key, log, assignment).await
                    }
                }
            };
            match next {
                Some(role) => {
                    if let Role::Leader(l) = &role {
                        l.state.borrow_mut().set_ineligible(fenced.clone());
                    }
                    let offsets_log = match &role {
                        Role::Leader(l) if &*key.0 == OFFSETS_TOPIC => Some(l.log.clone()),
                        _ => None,
                    };
                    replicas.roles.borrow_mut().insert(key.clone(), role);
                    replicas.roles_added.notify(usize::MAX);
                    if let Some(log) = offsets_log {
                        // A task: loading may write (offsets of deleted topics go), and a
                        // replicated write must not wait on this loop.
                        let shard = shard.clone();
                        let partition = key.1;
                        glommio::spawn_local(async move {
                            take_over_offsets(&shard, partition, &log).await;
                        })
                        .detach();
                    }
                }
                None => {
                    replicas.roles.borrow_mut().remove(&key);
                    incomplete = true;
                }
            }
        }
    }
    let gone: Vec<PartKey> = replicas
        .roles
        .borrow()
        .keys()
        .filter(|k| !seen.contains(*k))
        .cloned()
        .collect();
    for key in gone {
        let removed = replicas.roles.borrow_mut().remove(&key);
        if let Some(role) = removed {
            release(shard, &key, &role);
            follower_changed = true;
        }
    }
    if follower_changed {
        replicas.changed.notify(usize::MAX);
        replicas.isr_changed.notify(usize::MAX);
    }
    incomplete
}

/// Takes over as leader of a partition with its log as it stands: records the new epoch at the
/// log end, counts everything appended as the leader's own, and starts the task that follows
/// the log's durable end. None if the log refuses the epoch (it is closed or failed).
async fn become_leader(
    shard: &Rc<Shard>,
    replicas: &Rc<Replicas>,
    key: &PartKey,
    log: Rc<PartitionLog>,
    assignment: strom_cluster::PartitionAssignment,
    config: ReplicationConfig,
) -> Option<Role> {
    let epoch = assignment.leader_epoch;
    if let Err(e) = log.begin_epoch(epoch).await {
        tracing::error!(
            "{}-{}: cannot take over as leader in epoch {}: {e}",
            key.0,
            key.1,
            epoch.0
        );
        return None;
    }
    let state = LeaderPartition::new(
        replicas.me,
        assignment,
        config,
        log.log_end_offset(),
        log.durable_end_offset(),
        log.high_watermark(),
        now_ms(),
    );
    let leader = Rc::new(LeaderReplica {
        log,
        state: RefCell::new(state),
        resigned: Cell::new(false),
        hw_event: Event::new(),
        published: Cell::new(Offset(-1)),
    });
    leader.sync();
    tracing::info!(
        shard = shard.id.0,
        "{}-{}: leader in epoch {}",
        key.0,
        key.1,
        epoch.0
    );
    glommio::spawn_local(leader::follow_durable_end(leader.clone())).detach();
    Some(Role::Leader(leader))
}

/// Follows a partition with its log as it stands, once no append of an earlier leadership of
/// this node can change it any more and all of it is durable (the follower fetches from its
/// durable end). None if the log cannot be synced (it is closed or failed).
async fn follow(
    me: NodeId,
    key: &PartKey,
    log: Rc<PartitionLog>,
    assignment: strom_cluster::PartitionAssignment,
) -> Option<Role> {
    if let Err(e) = log.follow_epoch(assignment.leader_epoch).await {
        tracing::error!("{}-{}: cannot follow: {e}", key.0, key.1);
        return None;
    }
    let state = FollowerPartition::new(
        me,
        assignment,
        log.log_end_offset(),
        log.durable_end_offset(),
        log.latest_epoch(),
    );
    Some(Role::Follower(Rc::new(FollowerReplica {
        key: key.clone(),
        log,
        state: RefCell::new(state),
        removed: Cell::new(false),
    })))
}

/// Sends the ISR changes the leaders want to the controller (through shard 0, which runs the
/// quorum). The answer comes back as a new image.
fn propose_isr_changes(shard: &Rc<Shard>, replicas: &Rc<Replicas>) {
    let now = now_ms();
    let leaders: Vec<(PartKey, Rc<LeaderReplica>)> = replicas
        .roles
        .borrow()
        .iter()
        .filter_map(|(k, r)| match r {
            Role::Leader(l) => Some((k.clone(), l.clone())),
            _ => None,
        })
        .collect();
    for (key, leader) in leaders {
        leader.sync();
        let resend = leader.state.borrow().pending_isr_change().is_some();
        let Some(request) = leader.state.borrow_mut().tick(now) else {
            continue;
        };
        if !resend {
            let shrink = request.new_isr.len() < leader.state.borrow().assignment().isr.len();
            let counter = if shrink {
                &replicas.isr_shrinks
            } else {
                &replicas.isr_expands
            };
            counter.set(counter.get() + 1);
        }
        tracing::info!(
            resend,
            "{}-{}: proposing ISR {:?} (was {:?})",
            key.0,
            key.1,
            request.new_isr.iter().map(|n| n.0).collect::<Vec<_>>(),
            leader
                .state
                .borrow()
                .assignment()
                .isr
                .iter()
                .map(|n| n.0)
                .collect::<Vec<_>>()
        );
        let change = strom_cluster::controller::AlterIsr {
            topic: key.0.to_string(),
            partition: key.1,
            leader: request.leader.0,
            leader_epoch: request.leader_epoch.0,
            partition_epoch: request.partition_epoch,
            new_isr: request.new_isr.iter().map(|n| n.0).collect(),
        };
        let shard = shard.clone();
        glommio::spawn_local(async move {
            let reply = shard
                .call(
                    crate::ids::ShardId(0),
                    super::ShardOp::ProposeIsr(Box::new(change)),
                )
                .await;
            if !matches!(reply, super::ShardReply::Done(_)) {
                tracing::debug!("ISR change not sent: shard 0 is unavailable");
            }
        })
        .detach();
    }
}

/// Starts a fetcher for every leader node some follower replica of this shard follows and that
/// has none running.
fn start_fetchers(shard: &Rc<Shard>, replicas: &Rc<Replicas>, shutdown: &Arc<AtomicBool>) {
    let mut wanted = BTreeMap::new();
    for role in replicas.roles.borrow().values() {
        if let Role::Follower(f) = role {
            if let Some(leader) = f.state.borrow().leader() {
                wanted.insert(leader.0, ());
            }
        }
    }
    for node in wanted.into_keys() {
        if replicas.fetchers.borrow_mut().insert(node) {
            glommio::spawn_local(fetcher::run(
                shard.clone(),
                replicas.clone(),
                node,
                shutdown.clone(),
            ))
            .detach();
        }
    }
}
