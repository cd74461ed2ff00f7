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

mod invariants;
mod log;
mod oracle;
mod tests;

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::replication::{
    FetchDecision, FetchRequest, FollowerAction, FollowerPartition, FollowerUpdate,
    IsrChangeRequest, LeaderPartition, LeaderUpdate, ReplicationConfig,
};
use crate::types::{LeaderEpoch, NodeId, Offset, PartitionAssignment};
use log::{Batch, Log};

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
    MoveLeader(NodeId),
}

/// Counts of what happened, to check that the runs exercise what they should.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SimStats {
    acked: u64,
    refused_produces: u64,
    after_append_errors: u64,
    crashes: u64,
    leader_moves: u64,
    elections: u64,
    isr_shrinks: u64,
    isr_expands: u64,
    truncations: u64,
    diverging: u64,
    fenced: u64,
    unknown_epoch: u64,
    zombie_acks: u64,
}

impl SimStats {
    /// Each count with its name.
    pub(crate) fn counts(&self) -> [(&'static str, u64); 13] {
        [
            ("acked", self.acked),
            ("refused_produces", self.refused_produces),
            ("after_append_errors", self.after_append_errors),
            ("crashes", self.crashes),
            ("leader_moves", self.leader_moves),
            ("elections", self.elections),
            ("isr_shrinks", self.isr_shrinks),
            ("isr_expands", self.isr_expands),
            ("truncations", self.truncations),
            ("diverging", self.diverging),
            ("fenced", self.fenced),
            ("unknown_epoch", self.unknown_epoch),
            ("zombie_acks", self.zombie_acks),
        ]
    }
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
    /// Print every event (`STROM_REPL_SIM_TRACE=1`), to follow a failing seed.
    pub(crate) trace: bool,
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
            trace: false,
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
        if self.trace {
            for n in &self.nodes {
                let batches: Vec<String> = n
                    .log
                    .batches
                    .iter()
                    .map(|b| format!("{}+{}@{}#{}", b.base, b.count, b.epoch, b.payload))
                    .collect();
                eprintln!(
                    "node {} up={} durable={} epochs={:?} role={:?}\n  log={}",
                    n.id,
                    n.up,
                    n.log.durable_len,
                    n.log.epochs.entries(),
                    n.role,
                    batches.join(" ")
                );
            }
        }
        panic!(
            "replication simulation: seed {} step {} (t={} ms): {why}\n\
             rerun with STROM_REPL_SIM_SEED={} (STROM_REPL_SIM_TRACE=1 prints every event)",
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
        // Nodes learn of assignments at quite different times (as brokers replaying the
        // metadata log do), which keeps deposed leaders and stale followers around.
        let slow = if matches!(msg, Msg::Assignment { .. }) {
            5
        } else {
            50
        };
        for _ in 0..copies {
            let delay = if self.rng.gen_ratio(1, slow) {
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
        if self.trace {
            eprintln!("{} t={at} {event:?}", self.step);
        }
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
            Event::MoveLeader(to) => {
                if !self.healing {
                    self.move_leader(to);
                }
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
            FetchDecision::UnknownLeaderEpoch => self.stats.unknown_epoch += 1,
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
                let latest = node.log.latest_epoch().expect("has records");
                follower.on_local_append(node.log.end(), latest);
                self.schedule_sync(id);
            }
            FollowerAction::Truncate { to } => {
                self.stats.truncations += 1;
                node.log.truncate_to(to);
                node.verified = node.verified.min(node.log.batches.len());
                follower.on_truncated(node.log.end(), node.log.latest_epoch());
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
                    node.log.latest_epoch(),
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
            node.log.latest_epoch(),
        ));
        self.send_fetch(id);
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
}
