//! The controller's event loop on shard 0: drives the Raft node, writes its log, talks to the
//! peers, answers proposals, fences silent brokers, and publishes the committed metadata.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use futures::channel::{mpsc, oneshot};
use futures::StreamExt;
use strom_cluster::controller::{
    log_file, AppliedEntry, Command, ControllerConfig, ControllerNode, Forward, ForwardReply,
    Heartbeat, Liveness, Outbound, PeerMessage, ProposalOutcome,
};
use strom_cluster::NodeId;
use strom_storage::AppendFile;

use super::transport::PeerLink;
use super::{QuorumError, QuorumSetup, QuorumState, QuorumView};
use crate::clock::now_ms;

/// Events queued for the loop; beyond it peer messages are dropped and proposals refused.
pub const QUORUM_EVENTS_MAX: usize = 8192;
/// Proposals waiting for their commit (local and forwarded together).
pub const PROPOSALS_PENDING_MAX: usize = 4096;
/// How long a proposal may wait for its commit before it is answered `TimedOut`.
pub const PROPOSAL_TIMEOUT_MS: i64 = 5_000;
/// The controller log's file name in its directory.
pub const LOG_FILE_NAME: &str = "raft.log";
/// How long a stopping controller waits for a leadership transfer before asking again.
const HAND_OVER_RETRY_MS: i64 = 500;

/// An input of the loop.
pub enum Event {
    /// Advance Raft's clock.
    Tick,
    /// A message from a peer.
    Peer(NodeId, PeerMessage),
    /// Propose a command here (forwarded to the leader when this node is not it).
    Propose(Command, oneshot::Sender<ProposalOutcome>),
    /// This node's own broker heartbeat.
    Heartbeat(Heartbeat),
}

/// Queues events for the loop.
#[derive(Clone)]
pub struct QuorumHandle {
    events: mpsc::Sender<Event>,
}

impl QuorumHandle {
    /// Proposes a command and waits for what becomes of it.
    pub async fn propose(&self, command: Command) -> ProposalOutcome {
        let (tx, rx) = oneshot::channel();
        if self
            .events
            .clone()
            .try_send(Event::Propose(command, tx))
            .is_err()
        {
            return ProposalOutcome::TimedOut;
        }
        rx.await.unwrap_or(ProposalOutcome::TimedOut)
    }

    /// Queues an event (dropped when the queue is full).
    pub fn send(&self, event: Event) {
        let _ = self.events.clone().try_send(event);
    }
}

struct Pending {
    answer: Answer,
    deadline_ms: i64,
}

enum Answer {
    Local(oneshot::Sender<ProposalOutcome>),
    Remote { node: NodeId, request_id: u64 },
}

impl Answer {
    fn give(self, outcome: ProposalOutcome, links: &HashMap<NodeId, Rc<PeerLink>>) {
        match self {
            Answer::Local(tx) => {
                let _ = tx.send(outcome);
            }
            Answer::Remote { node, request_id } => {
                if let Some(link) = links.get(&node) {
                    link.send(&PeerMessage::ForwardReply(ForwardReply {
                        request_id,
                        outcome,
                    }));
                }
            }
        }
    }
}

struct Service {
    setup: QuorumSetup,
    node: ControllerNode,
    file: AppendFile,
    links: HashMap<NodeId, Rc<PeerLink>>,
    /// Proposals of this node's Raft, by proposal id.
    proposed: HashMap<u64, Pending>,
    /// Proposals forwarded to the leader, by request id.
    forwarded: HashMap<u64, Pending>,
    next_request: u64,
    liveness: Liveness,
    /// A stopping controller's next attempt to hand over the quorum (ms).
    hand_over_after_ms: i64,
    /// When the active controller next looks for preferred-leader elections.
    next_preferred_check_ms: Option<i64>,
    view: Arc<QuorumView>,
    published: (u64, Option<NodeId>, u64),
}

/// A handle and the loop's end of its queue.
pub fn channel() -> (QuorumHandle, mpsc::Receiver<Event>) {
    let (tx, rx) = mpsc::channel(QUORUM_EVENTS_MAX);
    (QuorumHandle { events: tx }, rx)
}

/// Opens the controller log, starts the Raft node and runs the loop until the queue closes or
/// the task is cancelled. Runs on shard 0.
pub async fn run(
    setup: QuorumSetup,
    view: Arc<QuorumView>,
    links: HashMap<NodeId, Rc<PeerLink>>,
    mut events: mpsc::Receiver<Event>,
) -> Result<(), QuorumError> {
    let config = ControllerConfig {
        election_ticks: setup.election_ticks,
        election_ticks_max: setup.election_ticks * 2,
        heartbeat_ticks: setup.heartbeat_ticks,
        ..ControllerConfig::new(setup.node_id, setup.voters.iter().map(|v| v.0).collect())
    };
    let (mut file, contents) = AppendFile::open(&setup.log_dir, LOG_FILE_NAME)
        .await
        .map_err(QuorumError::Storage)?;
    let replayed = log_file::replay(config.initial_store(), &contents)
        .map_err(|e| QuorumError::Log(e.to_string()))?;
    if (replayed.valid_bytes as u64) < file.len() {
        tracing::warn!(
            "controller log {}: cutting {} bytes of a torn last record",
            setup.log_dir.join(LOG_FILE_NAME).display(),
            file.len() - replayed.valid_bytes as u64
        );
        file.truncate(replayed.valid_bytes as u64)
            .await
            .map_err(QuorumError::Storage)?;
    }
    tracing::info!(
        "controller node {} starting: {} record(s) replayed, voters {:?}",
        setup.node_id,
        replayed.records,
        setup.voters.iter().map(|v| v.0 .0).collect::<Vec<_>>()
    );
    let node = ControllerNode::start(config, replayed.store)
        .map_err(|e| QuorumError::Log(e.to_string()))?;
    let mut service = Service {
        liveness: Liveness::new(setup.session_timeout_ms as i64),
        next_preferred_check_ms: None,
        hand_over_after_ms: 0,
        setup,
        node,
        file,
        links,
        proposed: HashMap::new(),
        forwarded: HashMap::new(),
        next_request: 1,
        view,
        published: (u64::MAX, None, 0),
    };
    service.publish();
    while let Some(event) = events.next().await {
        service.handle(event);
        // Everything else already queued goes into the same write.
        while let Ok(event) = events.try_recv() {
            service.handle(event);
        }
        service.drain().await?;
        service.publish();
    }
    Ok(())
}

impl Service {
    fn handle(&mut self, event: Event) {
        match event {
            Event::Tick => self.tick(),
            Event::Peer(from, message) => self.on_peer(from, message),
            Event::Propose(command, tx) => self.propose(command, Answer::Local(tx)),
            Event::Heartbeat(hb) => self.heartbeat(hb),
        }
    }

    fn tick(&mut self) {
        self.node.tick();
        let now = now_ms();
        for map in [&mut self.proposed, &mut self.forwarded] {
            let expired: Vec<u64> = map
                .iter()
                .filter(|(_, p)| p.deadline_ms <= now)
                .map(|(&id, _)| id)
                .collect();
            for id in expired {
                if let Some(p) = map.remove(&id) {
                    p.answer.give(ProposalOutcome::TimedOut, &self.links);
                }
            }
        }
        for (node, link) in &self.links {
            self.liveness.on_connect_refused(node.0, link.refused.get());
        }
        let due = self
            .liveness
            .due(self.node.is_leader(), self.node.image(), now);
        for command in due {
            tracing::info!("controller: {command:?}");
            let _ = self.node.propose(&command);
        }
        self.elect_preferred(now);
        self.hand_over_if_stopping(now);
    }

    /// An active controller that is stopping hands the quorum to another voter once its own
    /// fence is applied, so that the others see the fence committed and elect nobody by
    /// timeout (retried every `HAND_OVER_RETRY_MS` until it no longer leads).
    fn hand_over_if_stopping(&mut self, now: i64) {
        if !self.view.shutting_down() || !self.node.is_leader() || now < self.hand_over_after_ms {
            return;
        }
        let me = self.setup.node_id.0;
        if !self.node.image().brokers.get(&me).is_some_and(|b| b.fenced) {
            return;
        }
        self.hand_over_after_ms = now + HAND_OVER_RETRY_MS;
        if let Some(to) = self.node.transfer_leadership() {
            tracing::info!("controller: stopping; handing the quorum to node {to}");
        }
    }
    /// Every `leader.imbalance.check.interval.seconds`, the active controller gives partitions
    /// back to their preferred leaders where they are live and in sync.
    fn elect_preferred(&mut self, now: i64) {
        let Some(interval) = self.setup.preferred_leader_check_ms else {
            return;
        };
        if !self.node.is_leader() {
            self.next_preferred_check_ms = None;
            return;
        }
        // A new controller waits one interval: brokers it has not heard from yet may be gone.
        let due = *self
            .next_preferred_check_ms
            .get_or_insert(now + interval as i64);
        if now < due {
            return;
        }
        self.next_preferred_check_ms = Some(now + interval as i64);
        let moves = self.node.image().preferred_elections();
        if !moves.is_empty() {
            tracing::info!(
                "controller: preferred leaders for {} partition(s)",
                moves.len()
            );
            let _ = self.node.propose(&Command::ElectPreferred(moves));
        }
    }

    fn on_peer(&mut self, from: NodeId, message: PeerMessage) {
        match message {
            PeerMessage::Hello(hello) => {
                if let Some(link) = self.links.get(&from) {
                    link.peer_hello(hello.session);
                }
            }
            PeerMessage::Raft(bytes) => {
                if let Err(e) = self.node.step(&bytes) {
                    tracing::warn!("controller: message from node {from}: {e}");
                }
            }
            PeerMessage::Forward(Forward {
                request_id,
                command,
            }) => self.propose(
                command,
                Answer::Remote {
                    node: from,
                    request_id,
                },
            ),
            PeerMessage::ForwardReply(reply) => {
                if let Some(p) = self.forwarded.remove(&reply.request_id) {
                    p.answer.give(reply.outcome, &self.links);
                }
            }
            PeerMessage::Heartbeat(hb) => self.heartbeat(hb),
        }
    }

    fn heartbeat(&mut self, hb: Heartbeat) {
        // Only registered brokers are tracked, so the table stays as small as the cluster.
        if !self.node.image().brokers.contains_key(&hb.node_id) {
            return;
        }
        if self.node.is_leader() {
            self.liveness
                .on_heartbeat(hb.node_id, hb.incarnation, now_ms(), hb.shutting_down);
        } else if let Some(link) = self.node.leader().and_then(|l| self.links.get(&l)) {
            link.send(&PeerMessage::Heartbeat(hb));
        }
    }

    fn propose(&mut self, command: Command, answer: Answer) {
        if self.proposed.len() + self.forwarded.len() >= PROPOSALS_PENDING_MAX {
            answer.give(ProposalOutcome::TimedOut, &self.links);
            return;
        }
        let deadline_ms = now_ms() + PROPOSAL_TIMEOUT_MS;
        if self.node.is_leader() {
            match self.node.propose(&command) {
                Ok(id) => {
                    self.proposed.insert(
                        id,
                        Pending {
                            answer,
                            deadline_ms,
                        },
                    );
                }
                Err(e) => answer.give(
                    ProposalOutcome::NotLeader(e.leader.map_or(-1, |l| l.0)),
                    &self.links,
                ),
            }
            return;
        }
        let leader = self.node.leader();
        // Only a proposal from this node's own broker is forwarded; a forwarded one that
        // reached a node that is no longer the leader goes back with the leader it knows.
        let link = match (&answer, leader) {
            (Answer::Local(_), Some(l)) => self.links.get(&l).cloned(),
            _ => None,
        };
        let Some(link) = link else {
            answer.give(
                ProposalOutcome::NotLeader(leader.map_or(-1, |l| l.0)),
                &self.links,
            );
            return;
        };
        let request_id = self.next_request;
        self.next_request += 1;
        link.send(&PeerMessage::Forward(Forward {
            request_id,
            command,
        }));
        self.forwarded.insert(
            request_id,
            Pending {
                answer,
                deadline_ms,
            },
        );
    }

    fn send(&self, messages: Vec<Outbound>) {
        for m in messages {
            if let Some(link) = self.links.get(&m.to) {
                link.send(&PeerMessage::Raft(m.bytes));
            }
        }
    }

    fn applied(&mut self, applied: Vec<AppliedEntry>) {
        for entry in applied {
            tracing::debug!("controller applied #{}: {:?}", entry.index, entry.result);
            if let Some(p) = entry.proposal.and_then(|id| self.proposed.remove(&id)) {
                p.answer
                    .give(ProposalOutcome::Applied(entry.result), &self.links);
            }
        }
    }

    /// Hands out everything Raft has ready, writes it with one fdatasync, then sends what
    /// waited for it; again until Raft has nothing more.
    async fn drain(&mut self) -> Result<(), QuorumError> {
        loop {
            let mut last = None;
            let mut records = Vec::new();
            let mut rewrite = false;
            while let Some(step) = self
                .node
                .poll_ready()
                .map_err(|e| QuorumError::Log(e.to_string()))?
            {
                self.send(step.send);
                self.applied(step.applied);
                if !step.persist.is_empty() {
                    rewrite |= step
                        .persist
                        .snapshot
                        .as_ref()
                        .is_some_and(|s| !s.data.is_empty());
                    records.extend(log_file::encode_batch(&step.persist));
                }
                last = Some(step.number);
            }
            let Some(number) = last else {
                return Ok(());
            };
            if rewrite {
                // After a compaction: the file becomes the in-memory log, which holds every
                // batch handed out above.
                let whole = log_file::encode_store(self.node.store());
                self.file
                    .rewrite(&whole)
                    .await
                    .map_err(QuorumError::Storage)?;
            } else if !records.is_empty() {
                self.file
                    .append(&records)
                    .await
                    .map_err(QuorumError::Storage)?;
                self.file.sync().await.map_err(QuorumError::Storage)?;
            }
            let after = self.node.on_persisted(number);
            self.send(after);
        }
    }

    fn publish(&mut self) {
        let now = (
            self.node.applied_index(),
            self.node.leader(),
            self.node.term(),
        );
        if now == self.published {
            return;
        }
        self.published = now;
        self.view.publish(QuorumState {
            image: Arc::new(self.node.image().clone()),
            leader: now.1,
            term: now.2,
            applied: now.0,
            node_id: self.setup.node_id,
        });
    }
}
