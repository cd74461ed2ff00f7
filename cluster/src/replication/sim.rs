//! A deterministic, seeded simulation of one partition replicated on three nodes (RF=3,
//! min.insync.replicas=2), driving the real [`LeaderPartition`] and [`FollowerPartition`].
//!
//! Everything runs on a virtual clock from one seeded random generator, so a seed replays a run
//! exactly. The world:
//! - each node has a log (batches with base offset, record count, epoch and a unique payload id)
//!   whose durable prefix grows when a simulated fsync completes after a random delay; a crash
//!   drops the non-durable suffix, and the node restarts later as a follower from its durable
//!   log;
//! - a network that loses, duplicates, delays and therefore reorders messages, and can isolate
//!   a node from its peers for a while;
//! - a producer sending acks=all batches to whichever node acts as leader (a deposed leader
//!   that has not heard of its successor included); a batch is acknowledged when the leader's
//!   `ack_status` says `Done`;
//! - an oracle controller that commits ISR changes (checking `partition_epoch`), fences a
//!   crashed node (out of the ISR; a new leader from the live ISR if it led), elects a leader
//!   when there is none, sometimes moves leadership to another live ISR member, and broadcasts
//!   its assignment through the same lossy network.
//!
//! After every step (one event) the invariants are checked; a violation panics with the seed
//! and the step. At the end the faults stop and the run must converge: all replicas identical,
//! all in the ISR, every acknowledged batch on every replica.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strom_storage::epoch_cache::EpochCache;

use crate::replication::{
    AckStatus, FetchDecision, FetchRequest, FollowerAction, FollowerPartition, FollowerUpdate,
    IsrChangeRequest, LeaderPartition, LeaderUpdate, LogEpochs, ReplicationConfig,
};
use crate::types::{LeaderEpoch, NodeId, Offset, PartitionAssignment};

/// Replicas of the simulated partition.
const NODES: usize = 3;
/// `min.insync.replicas`.
const MIN_INSYNC: usize = 2;
/// Batches a leader sends in one fetch answer at most.
const FETCH_BATCHES_MAX: usize = 16;
/// Period of each node's timer (leader tick, follower fetch poll).
const NODE_TIMER_MS: i64 = 5;
/// A follower sends its fetch again when no answer came for this long.
const FETCH_TIMEOUT_MS: i64 = 40;
/// Period of the controller's timer (election, assignment broadcast).
const CONTROLLER_TIMER_MS: i64 = 30;
/// Period of the fault injector.
const NEMESIS_MS: i64 = 10;
/// How long the healed world gets to converge at the end.
const HEAL_MS_MAX: i64 = 20_000;

/// The replication settings under test.
const CONFIG: ReplicationConfig = ReplicationConfig {
    min_insync_replicas: MIN_INSYNC,
    replica_lag_time_max_ms: 100,
    isr_change_retry_ms: 50,
};

/// One record batch of a simulated log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Batch {
    base: i64,
    count: i64,
    epoch: i32,
    payload: u64,
}

impl Batch {
    fn end(&self) -> i64 {
        self.base + self.count
    }
}

/// A node's log: batches from offset 0, a durable prefix and the leader-epoch cache.
#[derive(Debug, Default)]
struct Log {
    batches: Vec<Batch>,
    /// Batches that survive a crash.
    durable_len: usize,
    epochs: EpochCache,
    /// Bumped on every truncation and crash, so an fsync issued before one completes nothing.
    generation: u64,
}

impl Log {
    fn end(&self) -> Offset {
        Offset(self.batches.last().map_or(0, Batch::end))
    }

    fn durable_end(&self) -> Offset {
        Offset(match self.durable_len {
            0 => 0,
            n => self.batches[n - 1].end(),
        })
    }

    fn last_epoch(&self) -> Option<LeaderEpoch> {
        self.batches.last().map(|b| LeaderEpoch(b.epoch))
    }

    fn lookup(&self) -> LogEpochs<'_> {
        LogEpochs {
            cache: &self.epochs,
            log_end: self.end(),
        }
    }

    /// Appends `batch`, which must start at the log end with an epoch no older than the last.
    fn append(&mut self, batch: Batch) -> Result<(), String> {
        if Offset(batch.base) != self.end() {
            return Err(format!("append of {batch:?} at log end {}", self.end()));
        }
        if self.last_epoch().is_some_and(|e| e.0 > batch.epoch) {
            return Err(format!(
                "epoch goes back: {batch:?} after {:?}",
                self.last_epoch()
            ));
        }
        self.epochs
            .assign(LeaderEpoch(batch.epoch), Offset(batch.base));
        self.batches.push(batch);
        Ok(())
    }

    /// Drops every batch that does not end at or before `to`.
    fn truncate_to(&mut self, to: Offset) {
        let keep = self.batches.partition_point(|b| b.end() <= to.0);
        self.batches.truncate(keep);
        self.durable_len = self.durable_len.min(keep);
        self.epochs.truncate_from_end(self.end());
        self.generation += 1;
    }

    /// A crash: the non-durable suffix is gone; the epoch cache is rebuilt from the batches.
    fn crash(&mut self) {
        self.batches.truncate(self.durable_len);
        self.epochs = EpochCache::new();
        for b in &self.batches {
            self.epochs.assign(LeaderEpoch(b.epoch), Offset(b.base));
        }
        self.generation += 1;
    }

    /// Index of the batch starting at `offset`, or the batch count if it is the log end.
    fn index_of(&self, offset: Offset) -> Option<usize> {
        if offset == self.end() {
            return Some(self.batches.len());
        }
        let i = self.batches.partition_point(|b| b.base < offset.0);
        (i < self.batches.len() && self.batches[i].base == offset.0).then_some(i)
    }
}

/// What a node is for the partition.
#[derive(Debug)]
enum Role {
    Leader(Box<LeaderPartition>),
    Follower(FollowerPartition),
}

impl Role {
    fn assignment(&self) -> &PartitionAssignment {
        match self {
            Role::Leader(l) => l.assignment(),
            Role::Follower(f) => f.assignment(),
        }
    }
}

/// One simulated broker.
#[derive(Debug)]
struct Node {
    id: NodeId,
    up: bool,
    log: Log,
    role: Role,
    /// acks=all batches appended as leader and not answered yet.
    waiting_produces: Vec<Batch>,
    /// When the follower's outstanding fetch was sent.
    fetch_sent_ms: Option<i64>,
    /// Cut off from the other nodes (not from the controller) until then.
    isolated_until_ms: i64,
    /// The highest leader epoch this node has acted on.
    epoch_seen: LeaderEpoch,
    /// The high watermark last seen from this node as leader in `epoch_seen`.
    tenure_hw: Offset,
    /// Leading batches of the log known equal to the committed prefix.
    verified: usize,
}

/// Where a message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Node(NodeId),
    Controller,
}

/// A message on the simulated network.
#[derive(Clone, Debug)]
enum Msg {
    Fetch {
        from: NodeId,
        to: NodeId,
        request: FetchRequest,
    },
    FetchAnswer {
        from: NodeId,
        to: NodeId,
        request: FetchRequest,
        decision: FetchDecision,
        batches: Vec<Batch>,
    },
    IsrChange(IsrChangeRequest),
    Assignment {
        to: NodeId,
        assignment: PartitionAssignment,
    },
}

impl Msg {
    fn endpoints(&self) -> (Endpoint, Endpoint) {
        match self {
            Msg::Fetch { from, to, .. } | Msg::FetchAnswer { from, to, .. } => {
                (Endpoint::Node(*from), Endpoint::Node(*to))
            }
            Msg::IsrChange(r) => (Endpoint::Node(r.leader), Endpoint::Controller),
            Msg::Assignment { to, .. } => (Endpoint::Controller, Endpoint::Node(*to)),
        }
    }
}

/// Something that happens at a point of virtual time.
#[derive(Debug)]
enum Event {
    Deliver(Msg),
    Synced {
        node: NodeId,
        generation: u64,
        len: usize,
    },
    NodeTimer(NodeId),
    Restart(NodeId),
    Produce,
    Nemesis,
    ControllerTimer,
}

/// Counts of what happened, to check that the runs exercise what they should.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SimStats {
    pub acked: u64,
    pub refused_produces: u64,
    pub after_append_errors: u64,
    pub crashes: u64,
    pub leader_moves: u64,
    pub elections: u64,
    pub isr_shrinks: u64,
    pub isr_expands: u64,
    pub truncations: u64,
    pub diverging: u64,
    pub fenced: u64,
    pub zombie_acks: u64,
}

/// The simulated world.
pub(crate) struct Sim {
    seed: u64,
    rng: StdRng,
    now_ms: i64,
    step: u64,
    seq: u64,
    events: BTreeMap<(i64, u64), Event>,
    nodes: Vec<Node>,
    /// The controller's committed assignment.
    controller: PartitionAssignment,
    /// Faults stopped; the world converges.
    healing: bool,
    loss: f64,
    duplication: f64,
    /// The committed prefix: batches below the highest high watermark any leader exposed.
    committed: Vec<Batch>,
    next_payload: u64,
    pub(crate) stats: SimStats,
}

impl Sim {
    pub(crate) fn new(seed: u64) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let replicas: Vec<NodeId> = (0..NODES as i32).map(NodeId).collect();
        let controller = PartitionAssignment {
            replicas: replicas.clone(),
            isr: replicas.clone(),
            leader: Some(NodeId(0)),
            leader_epoch: LeaderEpoch(0),
            partition_epoch: 0,
        };
        let nodes = replicas
            .iter()
            .map(|&id| {
                let mut log = Log::default();
                let role = if id == NodeId(0) {
                    log.epochs.assign(LeaderEpoch(0), Offset(0));
                    Role::Leader(Box::new(LeaderPartition::new(
                        id,
                        controller.clone(),
                        CONFIG,
                        Offset(0),
                        Offset(0),
                        Offset(0),
                        0,
                    )))
                } else {
                    Role::Follower(FollowerPartition::new(
                        id,
                        controller.clone(),
                        Offset(0),
                        Offset(0),
                        None,
                    ))
                };
                Node {
                    id,
                    up: true,
                    log,
                    role,
                    waiting_produces: Vec::new(),
                    fetch_sent_ms: None,
                    isolated_until_ms: 0,
                    epoch_seen: LeaderEpoch(0),
                    tenure_hw: Offset(0),
                    verified: 0,
                }
            })
            .collect();
        let loss = rng.gen_range(0.0..0.1);
        let duplication = rng.gen_range(0.0..0.05);
        let mut sim = Sim {
            seed,
            rng,
            now_ms: 0,
            step: 0,
            seq: 0,
            events: BTreeMap::new(),
            nodes,
            controller,
            healing: false,
            loss,
            duplication,
            committed: Vec::new(),
            next_payload: 1,
            stats: SimStats::default(),
        };
        for i in 0..NODES {
            let at = sim.rng.gen_range(0..NODE_TIMER_MS);
            sim.schedule(at, Event::NodeTimer(NodeId(i as i32)));
        }
        sim.schedule(1, Event::Produce);
        sim.schedule(NEMESIS_MS, Event::Nemesis);
        sim.schedule(CONTROLLER_TIMER_MS, Event::ControllerTimer);
        sim
    }

    /// Runs `steps` events with faults, then heals the world and runs until it converges.
    pub(crate) fn run(&mut self, steps: u64) {
        while self.step < steps {
            self.next_event();
        }
        self.heal();
        let deadline = self.now_ms + HEAL_MS_MAX;
        while !self.converged() {
            if self.now_ms > deadline {
                let isr = self.controller.isr.clone();
                let leader = self.controller.leader;
                self.fail(&format!(
                    "no convergence after healing: leader {leader:?}, isr {isr:?}, logs {:?}",
                    self.nodes
                        .iter()
                        .map(|n| (n.log.batches.len(), n.log.durable_len))
                        .collect::<Vec<_>>()
                ));
            }
            self.next_event();
        }
        self.check_final();
    }

    fn fail(&self, why: &str) -> ! {
        panic!(
            "replication simulation: seed {} step {} (t={} ms): {why}\n\
             rerun with STROM_REPL_SIM_SEED={}",
            self.seed, self.step, self.now_ms, self.seed
        );
    }

    fn schedule(&mut self, delay_ms: i64, event: Event) {
        self.seq += 1;
        self.events
            .insert((self.now_ms + delay_ms, self.seq), event);
    }

    fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0 as usize]
    }

    fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id.0 as usize]
    }

    /// Whether a message between `a` and `b` gets through the isolation faults now (they cut
    /// a node off from its peers, not from the controller).
    fn linked(&self, a: Endpoint, b: Endpoint) -> bool {
        match (a, b) {
            (Endpoint::Node(x), Endpoint::Node(y)) => {
                self.node(x).isolated_until_ms <= self.now_ms
                    && self.node(y).isolated_until_ms <= self.now_ms
            }
            _ => true,
        }
    }

    fn send(&mut self, msg: Msg) {
        let (from, to) = msg.endpoints();
        if !self.linked(from, to) || self.rng.gen_bool(self.loss) {
            return;
        }
        let copies = if self.rng.gen_bool(self.duplication) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = if self.rng.gen_ratio(1, 50) {
                self.rng.gen_range(20..120)
            } else {
                self.rng.gen_range(1..8)
            };
            self.schedule(delay, Event::Deliver(msg.clone()));
        }
    }

    fn next_event(&mut self) {
        let Some(((at, _), event)) = self.events.pop_first() else {
            self.fail("no events left");
        };
        debug_assert!(at >= self.now_ms, "virtual time goes forward");
        self.now_ms = at;
        self.step += 1;
        match event {
            Event::Deliver(msg) => self.deliver(msg),
            Event::Synced {
                node,
                generation,
                len,
            } => self.synced(node, generation, len),
            Event::NodeTimer(id) => {
                self.node_timer(id);
                self.schedule(NODE_TIMER_MS, Event::NodeTimer(id));
            }
            Event::Restart(id) => self.restart(id),
            Event::Produce => {
                if !self.healing {
                    self.produce();
                    let next = self.rng.gen_range(1..6);
                    self.schedule(next, Event::Produce);
                }
            }
            Event::Nemesis => {
                if !self.healing {
                    self.nemesis();
                    self.schedule(NEMESIS_MS, Event::Nemesis);
                }
            }
            Event::ControllerTimer => {
                self.controller_timer();
                self.schedule(CONTROLLER_TIMER_MS, Event::ControllerTimer);
            }
        }
        self.observe();
    }

    // ---- nodes -------------------------------------------------------------------------------

    fn node_timer(&mut self, id: NodeId) {
        if !self.node(id).up {
            return;
        }
        let now = self.now_ms;
        match &mut self.node_mut(id).role {
            Role::Leader(leader) => {
                if let Some(request) = leader.tick(now) {
                    self.send(Msg::IsrChange(request));
                }
            }
            Role::Follower(_) => {
                let sent = self.node(id).fetch_sent_ms;
                if sent.is_none_or(|t| now - t >= FETCH_TIMEOUT_MS) {
                    self.send_fetch(id);
                }
            }
        }
    }

    /// Sends the follower's next fetch, if it has one.
    fn send_fetch(&mut self, id: NodeId) {
        let now = self.now_ms;
        let node = self.node_mut(id);
        let Role::Follower(follower) = &node.role else {
            return;
        };
        let (Some(request), Some(leader)) = (follower.next_fetch(), follower.leader()) else {
            return;
        };
        node.fetch_sent_ms = Some(now);
        self.send(Msg::Fetch {
            from: id,
            to: leader,
            request,
        });
    }

    fn deliver(&mut self, msg: Msg) {
        let (from, to) = msg.endpoints();
        if !self.linked(from, to) {
            return;
        }
        if let Endpoint::Node(n) = to {
            if !self.node(n).up {
                return;
            }
        }
        match msg {
            Msg::Fetch { from, to, request } => self.on_fetch(from, to, request),
            Msg::FetchAnswer {
                from: _,
                to,
                request,
                decision,
                batches,
            } => self.on_fetch_answer(to, request, decision, batches),
            Msg::IsrChange(request) => self.on_isr_change(request),
            Msg::Assignment { to, assignment } => self.on_assignment(to, assignment),
        }
    }

    fn on_fetch(&mut self, follower: NodeId, leader_id: NodeId, request: FetchRequest) {
        let now = self.now_ms;
        let node = &mut self.nodes[leader_id.0 as usize];
        let decision = match &mut node.role {
            Role::Leader(leader) => leader.on_follower_fetch(
                follower,
                request.offset,
                request.last_fetched_epoch,
                request.current_leader_epoch,
                now,
                &node.log.lookup(),
            ),
            Role::Follower(_) => FetchDecision::NotLeader,
        };
        let mut batches = Vec::new();
        if let FetchDecision::Read { from, .. } = decision {
            let Some(i) = node.log.index_of(from) else {
                let why = format!("fetch at {from}, inside a batch of the leader's log");
                self.fail(&why);
            };
            let end = (i + FETCH_BATCHES_MAX).min(node.log.batches.len());
            batches = node.log.batches[i..end].to_vec();
        }
        match decision {
            FetchDecision::Diverging { .. } => self.stats.diverging += 1,
            FetchDecision::FencedLeaderEpoch => self.stats.fenced += 1,
            _ => {}
        }
        self.send(Msg::FetchAnswer {
            from: leader_id,
            to: follower,
            request,
            decision,
            batches,
        });
    }

    fn on_fetch_answer(
        &mut self,
        id: NodeId,
        request: FetchRequest,
        decision: FetchDecision,
        batches: Vec<Batch>,
    ) {
        let node = &mut self.nodes[id.0 as usize];
        let Role::Follower(follower) = &mut node.role else {
            return;
        };
        let action = follower.on_fetch_response(
            &request,
            &decision,
            !batches.is_empty(),
            &node.log.lookup(),
        );
        if action != FollowerAction::Stale {
            node.fetch_sent_ms = None;
        }
        match action {
            FollowerAction::Append { from } => {
                if from != node.log.end() {
                    let why = format!("append from {from} at log end {}", node.log.end());
                    self.fail(&why);
                }
                for b in &batches {
                    if let Err(why) = node.log.append(*b) {
                        self.fail(&why);
                    }
                }
                let last = LeaderEpoch(batches.last().expect("has records").epoch);
                follower.on_local_append(node.log.end(), last);
                self.schedule_sync(id);
            }
            FollowerAction::Truncate { to } => {
                self.stats.truncations += 1;
                node.log.truncate_to(to);
                node.verified = node.verified.min(node.log.batches.len());
                follower.on_truncated(node.log.end(), node.log.last_epoch());
                self.send_fetch(id);
            }
            FollowerAction::Backoff | FollowerAction::AwaitAssignment | FollowerAction::Stale => {}
        }
    }

    fn schedule_sync(&mut self, id: NodeId) {
        let node = self.node(id);
        let event = Event::Synced {
            node: id,
            generation: node.log.generation,
            len: node.log.batches.len(),
        };
        let delay = self.rng.gen_range(1..15);
        self.schedule(delay, event);
    }

    fn synced(&mut self, id: NodeId, generation: u64, len: usize) {
        let node = self.node_mut(id);
        if !node.up || node.log.generation != generation {
            return;
        }
        node.log.durable_len = node.log.durable_len.max(len.min(node.log.batches.len()));
        let durable = node.log.durable_end();
        match &mut node.role {
            Role::Leader(leader) => {
                leader.on_local_durable(durable);
            }
            Role::Follower(follower) => {
                follower.on_local_durable(durable);
                if node.fetch_sent_ms.is_none() {
                    self.send_fetch(id);
                }
            }
        }
    }

    fn on_assignment(&mut self, id: NodeId, assignment: PartitionAssignment) {
        /// What the node does after applying an assignment.
        enum Next {
            Nothing,
            Fetch,
            Follow,
            Lead,
        }
        let node = self.node_mut(id);
        let next = match &mut node.role {
            Role::Leader(leader) => match leader.apply_assignment(assignment.clone()) {
                LeaderUpdate::Stale | LeaderUpdate::Applied => Next::Nothing,
                LeaderUpdate::Resign if assignment.leader == Some(id) => Next::Lead,
                LeaderUpdate::Resign => Next::Follow,
            },
            Role::Follower(follower) => match follower.apply_assignment(assignment.clone()) {
                FollowerUpdate::Stale => Next::Nothing,
                FollowerUpdate::Applied => Next::Fetch,
                FollowerUpdate::BecomeLeader => Next::Lead,
            },
        };
        match next {
            Next::Nothing => {}
            Next::Fetch => {
                node.fetch_sent_ms = None;
                self.send_fetch(id);
            }
            Next::Follow => {
                node.waiting_produces.clear();
                node.fetch_sent_ms = None;
                node.role = Role::Follower(FollowerPartition::new(
                    id,
                    assignment,
                    node.log.end(),
                    node.log.durable_end(),
                    node.log.last_epoch(),
                ));
                self.send_fetch(id);
            }
            Next::Lead => self.become_leader(id, assignment),
        }
    }

    fn become_leader(&mut self, id: NodeId, assignment: PartitionAssignment) {
        let now = self.now_ms;
        let node = self.node_mut(id);
        let hw = match &node.role {
            Role::Follower(f) => f.high_watermark(),
            Role::Leader(l) => l.high_watermark(),
        };
        // Kafka assigns the new epoch in the cache at the log end when a leader takes over.
        node.log
            .epochs
            .assign(assignment.leader_epoch, node.log.end());
        node.role = Role::Leader(Box::new(LeaderPartition::new(
            id,
            assignment,
            CONFIG,
            node.log.end(),
            node.log.durable_end(),
            hw,
            now,
        )));
        node.waiting_produces.clear();
        node.fetch_sent_ms = None;
    }

    fn produce(&mut self) {
        let acting: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|n| n.up && matches!(n.role, Role::Leader(_)))
            .map(|n| n.id)
            .collect();
        if acting.is_empty() {
            return;
        }
        // Mostly the controller's leader; sometimes a deposed one that does not know yet.
        let target = match self.controller.leader {
            Some(l) if acting.contains(&l) && !self.rng.gen_ratio(1, 5) => l,
            _ => acting[self.rng.gen_range(0..acting.len())],
        };
        let count = self.rng.gen_range(1..5);
        let payload = self.next_payload;
        self.next_payload += 1;
        let node = &mut self.nodes[target.0 as usize];
        let Role::Leader(leader) = &mut node.role else {
            return;
        };
        if leader.check_produce(true).is_err() {
            self.stats.refused_produces += 1;
            return;
        }
        let batch = Batch {
            base: node.log.end().0,
            count,
            epoch: leader.leader_epoch().0,
            payload,
        };
        if let Err(why) = node.log.append(batch) {
            self.fail(&why);
        }
        leader.on_local_append(node.log.end());
        node.waiting_produces.push(batch);
        self.schedule_sync(target);
    }

    fn crash(&mut self, id: NodeId) {
        self.stats.crashes += 1;
        let node = self.node_mut(id);
        node.up = false;
        node.log.crash();
        node.verified = node.verified.min(node.log.batches.len());
        node.waiting_produces.clear();
        node.fetch_sent_ms = None;
        self.fence(id);
        let down = self.rng.gen_range(20..300);
        self.schedule(down, Event::Restart(id));
    }

    fn restart(&mut self, id: NodeId) {
        let assignment = self.controller.clone();
        let node = self.node_mut(id);
        if node.up {
            return;
        }
        assert_ne!(assignment.leader, Some(id), "a down node is never elected");
        node.up = true;
        node.role = Role::Follower(FollowerPartition::new(
            id,
            assignment,
            node.log.end(),
            node.log.durable_end(),
            node.log.last_epoch(),
        ));
        self.send_fetch(id);
    }

    // ---- controller --------------------------------------------------------------------------

    fn commit(&mut self, mut next: PartitionAssignment) {
        assert!(next.leader_epoch >= self.controller.leader_epoch);
        next.partition_epoch = self.controller.partition_epoch + 1;
        if let Some(l) = next.leader {
            if !self.committed_prefix_in(l) {
                self.fail(&format!("new leader {l} lacks the committed prefix"));
            }
        }
        self.controller = next;
        self.broadcast();
    }

    fn broadcast(&mut self) {
        for i in 0..NODES {
            self.send(Msg::Assignment {
                to: NodeId(i as i32),
                assignment: self.controller.clone(),
            });
        }
    }

    fn on_isr_change(&mut self, request: IsrChangeRequest) {
        let current = &self.controller;
        if current.leader != Some(request.leader)
            || current.leader_epoch != request.leader_epoch
            || current.partition_epoch != request.partition_epoch
        {
            // Kafka answers INVALID_UPDATE_VERSION / FENCED_LEADER_EPOCH; the leader learns the
            // current assignment.
            let answer = Msg::Assignment {
                to: request.leader,
                assignment: current.clone(),
            };
            self.send(answer);
            return;
        }
        assert!(request.new_isr.contains(&request.leader));
        if request.new_isr.len() < current.isr.len() {
            self.stats.isr_shrinks += 1;
        } else {
            self.stats.isr_expands += 1;
        }
        let mut next = current.clone();
        next.isr = request.new_isr;
        self.commit(next);
    }

    /// The controller notices a crashed node (Kafka fences it): out of the ISR unless it is the
    /// last member, and a new leader from the live ISR if it led.
    fn fence(&mut self, id: NodeId) {
        let mut next = self.controller.clone();
        if next.isr.len() > 1 {
            next.isr.retain(|&n| n != id);
        }
        if next.leader == Some(id) {
            next.leader = self.pick_leader(&next.isr, Some(id));
            next.leader_epoch = LeaderEpoch(next.leader_epoch.0 + 1);
        }
        if next != self.controller {
            self.commit(next);
        }
    }

    /// A live ISR member other than `except`, chosen at random.
    fn pick_leader(&mut self, isr: &[NodeId], except: Option<NodeId>) -> Option<NodeId> {
        let candidates: Vec<NodeId> = isr
            .iter()
            .copied()
            .filter(|&n| Some(n) != except && self.node(n).up)
            .collect();
        if candidates.is_empty() {
            return None;
        }
        Some(candidates[self.rng.gen_range(0..candidates.len())])
    }

    fn controller_timer(&mut self) {
        if self.controller.leader.is_none() {
            let isr = self.controller.isr.clone();
            if let Some(l) = self.pick_leader(&isr, None) {
                self.stats.elections += 1;
                let mut next = self.controller.clone();
                next.leader = Some(l);
                next.leader_epoch = LeaderEpoch(next.leader_epoch.0 + 1);
                self.commit(next);
                return;
            }
        }
        self.broadcast();
    }

    // ---- faults ------------------------------------------------------------------------------

    fn nemesis(&mut self) {
        let roll = self.rng.gen_range(0..1000);
        let id = NodeId(self.rng.gen_range(0..NODES as i32));
        match roll {
            0..=14 if self.node(id).up => self.crash(id),
            15..=29 => {
                let isr = self.controller.isr.clone();
                let current = self.controller.leader;
                if let Some(l) = self.pick_leader(&isr, current) {
                    self.stats.leader_moves += 1;
                    let mut next = self.controller.clone();
                    next.leader = Some(l);
                    next.leader_epoch = LeaderEpoch(next.leader_epoch.0 + 1);
                    self.commit(next);
                }
            }
            30..=44 => {
                let until = self.now_ms + self.rng.gen_range(20..300);
                self.node_mut(id).isolated_until_ms = until;
            }
            _ => {}
        }
    }

    fn heal(&mut self) {
        self.healing = true;
        self.loss = 0.0;
        self.duplication = 0.0;
        for i in 0..NODES {
            let node = &mut self.nodes[i];
            node.isolated_until_ms = 0;
            if !node.up {
                self.restart(NodeId(i as i32));
            }
        }
    }

    // ---- invariants --------------------------------------------------------------------------

    /// Extends the verified prefix of a node's log against the committed prefix, up to `len`
    /// batches; returns whether the log holds those `len` committed batches.
    fn verify(&mut self, id: NodeId, len: usize) -> bool {
        let node = &mut self.nodes[id.0 as usize];
        while node.verified < len {
            let i = node.verified;
            if i >= node.log.batches.len()
                || i >= self.committed.len()
                || node.log.batches[i] != self.committed[i]
            {
                return false;
            }
            node.verified += 1;
        }
        true
    }

    /// Whether the node's durable log holds the whole committed prefix.
    fn committed_prefix_in(&mut self, id: NodeId) -> bool {
        let len = self.committed.len();
        self.node(id).log.durable_len >= len && self.verify(id, len)
    }

    /// After every step: leaders' high watermarks, the committed prefix, acknowledgements.
    fn observe(&mut self) {
        for i in 0..NODES {
            let id = NodeId(i as i32);
            let node = self.node(id);
            if !node.up {
                continue;
            }
            let epoch = node.role.assignment().leader_epoch;
            if epoch < node.epoch_seen {
                self.fail(&format!("node {id} went back to leader epoch {epoch}"));
            }
            let Role::Leader(leader) = &node.role else {
                let node = self.node_mut(id);
                node.epoch_seen = epoch;
                continue;
            };
            let hw = leader.high_watermark();
            if epoch == node.epoch_seen && hw < node.tenure_hw {
                self.fail(&format!(
                    "leader {id} moved its high watermark back to {hw}"
                ));
            }
            if hw > node.log.durable_end() {
                self.fail(&format!(
                    "leader {id} high watermark {hw} past its durable end"
                ));
            }
            for &m in &self.controller.isr {
                let durable = self.node(m).log.durable_end();
                if hw > durable {
                    self.fail(&format!(
                        "leader {id} high watermark {hw} past the durable end {durable} of ISR \
                         member {m}"
                    ));
                }
            }
            let node = self.node_mut(id);
            node.epoch_seen = epoch;
            node.tenure_hw = hw;
            self.extend_committed(id, hw);
        }
        let isr = self.controller.isr.clone();
        for m in isr {
            if !self.committed_prefix_in(m) {
                self.fail(&format!(
                    "ISR member {m} lacks the committed prefix of {} batches",
                    self.committed.len()
                ));
            }
        }
        if let Some(l) = self.controller.leader {
            if !self.committed_prefix_in(l) {
                self.fail(&format!("leader {l} lacks the committed prefix"));
            }
        }
        self.answer_produces();
    }

    /// A leader exposes `hw`: its log below it must agree with the committed prefix, and what
    /// it adds must be durable on at least min.insync.replicas nodes.
    fn extend_committed(&mut self, id: NodeId, hw: Offset) {
        let log_batches = self.node(id).log.batches.len();
        let below = self
            .node(id)
            .log
            .batches
            .partition_point(|b| b.end() <= hw.0);
        if below < log_batches && self.node(id).log.batches[below].base < hw.0 {
            self.fail(&format!("leader {id} high watermark {hw} inside a batch"));
        }
        let known = self.committed.len().min(below);
        if !self.verify(id, known) {
            self.fail(&format!(
                "leader {id} exposes a high watermark {hw} over a log that differs from the \
                 committed prefix"
            ));
        }
        for i in self.committed.len()..below {
            let batch = self.node(id).log.batches[i];
            let holders = self
                .nodes
                .iter()
                .filter(|n| i < n.log.durable_len && n.log.batches[i] == batch)
                .count();
            if holders < MIN_INSYNC {
                self.fail(&format!(
                    "leader {id} commits {batch:?} durable on {holders} node(s) only"
                ));
            }
            self.committed.push(batch);
        }
    }

    /// Answers the waiting acks=all produces of every acting leader.
    fn answer_produces(&mut self) {
        for i in 0..NODES {
            let node = &mut self.nodes[i];
            if !node.up {
                continue;
            }
            let Role::Leader(leader) = &node.role else {
                continue;
            };
            let zombie = self.controller.leader != Some(node.id);
            let mut acked = Vec::new();
            let mut after_append = 0;
            node.waiting_produces
                .retain(|b| match leader.ack_status(Offset(b.end())) {
                    AckStatus::Done => {
                        acked.push(*b);
                        false
                    }
                    AckStatus::NotEnoughReplicasAfterAppend => {
                        after_append += 1;
                        false
                    }
                    AckStatus::Wait => true,
                });
            self.stats.after_append_errors += after_append;
            for b in acked {
                self.stats.acked += 1;
                if zombie {
                    self.stats.zombie_acks += 1;
                }
                let at = self.committed.partition_point(|c| c.base < b.base);
                if self.committed.get(at) != Some(&b) {
                    self.fail(&format!(
                        "acknowledged {b:?} is not in the committed prefix"
                    ));
                }
            }
        }
    }

    fn converged(&self) -> bool {
        let Some(l) = self.controller.leader else {
            return false;
        };
        let leader = self.node(l);
        let Role::Leader(lp) = &leader.role else {
            return false;
        };
        lp.leader_epoch() == self.controller.leader_epoch
            && self.controller.isr.len() == NODES
            && lp.high_watermark() == leader.log.end()
            && self.nodes.iter().all(|n| {
                n.up && n.log.batches == leader.log.batches
                    && n.log.durable_len == n.log.batches.len()
            })
    }

    fn check_final(&mut self) {
        let l = self.controller.leader.expect("converged with a leader");
        let reference = self.node(l).log.batches.clone();
        for i in 0..NODES {
            if !self.committed_prefix_in(NodeId(i as i32)) {
                self.fail(&format!("node {i} lacks the committed prefix at the end"));
            }
            if self.nodes[i].log.batches != reference {
                self.fail(&format!("node {i} differs from the leader at the end"));
            }
        }
    }
}

/// Seeds and steps from `STROM_REPL_SIM_SEED` / `STROM_REPL_SIM_STEPS`, or the defaults.
fn seeds_and_steps(default_seeds: u64, default_steps: u64) -> (Vec<u64>, u64) {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let seeds = match env("STROM_REPL_SIM_SEED") {
        Some(seed) => vec![seed],
        None => (0..default_seeds).collect(),
    };
    (seeds, env("STROM_REPL_SIM_STEPS").unwrap_or(default_steps))
}

#[test]
fn seeded_runs_keep_every_invariant() {
    let (seeds, steps) = seeds_and_steps(200, 2_000);
    let mut total = SimStats::default();
    for seed in seeds {
        let mut sim = Sim::new(seed);
        sim.run(steps);
        let s = sim.stats;
        total.acked += s.acked;
        total.refused_produces += s.refused_produces;
        total.after_append_errors += s.after_append_errors;
        total.crashes += s.crashes;
        total.leader_moves += s.leader_moves;
        total.elections += s.elections;
        total.isr_shrinks += s.isr_shrinks;
        total.isr_expands += s.isr_expands;
        total.truncations += s.truncations;
        total.diverging += s.diverging;
        total.fenced += s.fenced;
        total.zombie_acks += s.zombie_acks;
    }
    println!("{total:?}");
}
