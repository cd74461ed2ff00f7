//! One controller node: tikv's Raft `RawNode` over the metadata image, without I/O.
//!
//! The driver (the broker's shard 0, or the simulator) owns the clock, the network and the disk:
//! - every tick interval it calls [`ControllerNode::tick`];
//! - it hands every message from a peer to [`ControllerNode::step`];
//! - it proposes commands with [`ControllerNode::propose`] (only the leader accepts);
//! - after each of those it drains [`ControllerNode::poll_ready`]: send `send` at once, make
//!   `persist` durable (in order; writes may overlap further steps), then call
//!   [`ControllerNode::on_persisted`] with the step's number and send what it returns.
//!   `applied` lists committed commands in log order with their results, tagged with the
//!   proposal id when this node proposed them.
//!
//! Raft ids are `node.id + 1` (Raft reserves 0; Kafka node ids start at 0). Membership is static:
//! the voters of `controller.quorum.voters`.

use std::collections::VecDeque;

use protobuf::Message as _;
use raft::eraftpb::{Entry, EntryType, Message, MessageType, Snapshot};
use raft::{RawNode, SnapshotStatus, StateRole, Storage as _};

use super::image::{Applied, Command, MetadataImage};
use super::store::{PersistBatch, RaftLogStore};
use crate::types::NodeId;

/// Settings of one controller node.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// This node.
    pub node_id: NodeId,
    /// All voters, this node included (`controller.quorum.voters`).
    pub voters: Vec<NodeId>,
    /// Ticks without a leader's heartbeat before a follower campaigns: Raft picks a random
    /// number in `election_ticks..election_ticks_max` at every election.
    pub election_ticks: usize,
    /// Upper bound (exclusive) of the random election timeout. `election_ticks + 1` makes it
    /// fixed: Raft draws from the thread's random generator, which a seeded simulation cannot
    /// replay, so the simulation jitters the ticks itself instead.
    pub election_ticks_max: usize,
    /// Ticks between the leader's heartbeats.
    pub heartbeat_ticks: usize,
    /// Applied entries after which the log is compacted into a snapshot of the image.
    pub snapshot_every: u64,
}

impl ControllerConfig {
    /// Defaults for a node of `voters`: heartbeat every 2 ticks, election after 10 to 20.
    pub fn new(node_id: NodeId, voters: Vec<NodeId>) -> ControllerConfig {
        ControllerConfig {
            node_id,
            voters,
            election_ticks: 10,
            election_ticks_max: 20,
            heartbeat_ticks: 2,
            snapshot_every: 1_000,
        }
    }

    /// A new, empty log for this node's cluster.
    pub fn initial_store(&self) -> RaftLogStore {
        RaftLogStore::new(self.voters.iter().map(|&n| raft_id(n)).collect())
    }
}

/// Why the controller cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// Raft refused the configuration or the stored state.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// A message from a peer that is not a Raft message.
    #[error("peer message does not decode: {0}")]
    BadMessage(String),
    /// A committed entry or snapshot that is not a valid command or image: the log was written
    /// by something else, or damaged.
    #[error("committed controller record at index {index}: {reason}")]
    BadRecord {
        /// Raft index of the record.
        index: u64,
        /// What is wrong with it.
        reason: String,
    },
}

/// A proposal sent to a node that is not the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not the active controller (leader: {leader:?})")]
pub struct NotLeader {
    /// The leader this node knows of, if any.
    pub leader: Option<NodeId>,
}

/// A message for a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    /// The peer.
    pub to: NodeId,
    /// The encoded Raft message.
    pub bytes: Vec<u8>,
}

/// A committed command, applied.
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedEntry {
    /// Raft index.
    pub index: u64,
    /// The id [`ControllerNode::propose`] returned, when this node proposed it.
    pub proposal: Option<u64>,
    /// The command.
    pub command: Command,
    /// What it did.
    pub result: Applied,
}

/// One batch of work from Raft.
#[derive(Debug, Default)]
pub struct ReadyStep {
    /// Pass to [`ControllerNode::on_persisted`] once `persist` is durable.
    pub number: u64,
    /// Send now (a leader may send its appends before its own write).
    pub send: Vec<Outbound>,
    /// Make durable, in order with earlier batches.
    pub persist: PersistBatch,
    /// Committed commands applied to the image.
    pub applied: Vec<AppliedEntry>,
}

/// One controller node.
pub struct ControllerNode {
    config: ControllerConfig,
    raw: RawNode<RaftLogStore>,
    image: MetadataImage,
    applied: u64,
    next_proposal: u64,
    /// Messages to send once the batch with that number is durable.
    after_persist: VecDeque<(u64, Vec<Outbound>)>,
    last_number: u64,
    /// A snapshot taken after applying, to go into the next persist batch.
    compaction: Option<Snapshot>,
}

fn raft_id(node: NodeId) -> u64 {
    u64::try_from(node.0).unwrap_or(0) + 1
}

fn node_of(raft_id: u64) -> Option<NodeId> {
    let id = i32::try_from(raft_id.checked_sub(1)?).ok()?;
    Some(NodeId(id))
}

impl ControllerNode {
    /// Starts (or restarts) a node from its durable log.
    pub fn start(config: ControllerConfig, store: RaftLogStore) -> Result<Self, ControllerError> {
        let snapshot = store.latest_snapshot().clone();
        let snapshot_index = snapshot.get_metadata().index;
        let image = decode_image(&snapshot)?;
        let raft_config = raft::Config {
            id: raft_id(config.node_id),
            election_tick: config.election_ticks,
            min_election_tick: config.election_ticks,
            max_election_tick: config.election_ticks_max.max(config.election_ticks + 1),
            heartbeat_tick: config.heartbeat_ticks,
            applied: snapshot_index,
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            ..raft::Config::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raw = RawNode::new(&raft_config, store, &logger)?;
        Ok(ControllerNode {
            config,
            raw,
            image,
            applied: snapshot_index,
            next_proposal: 1,
            after_persist: VecDeque::new(),
            last_number: 0,
            compaction: None,
        })
    }

    /// This node.
    pub fn id(&self) -> NodeId {
        self.config.node_id
    }

    /// Advances Raft's logical clock by one tick.
    pub fn tick(&mut self) {
        self.raw.tick();
    }

    /// Starts an election now (a node that knows it should lead, e.g. the only voter).
    pub fn campaign(&mut self) -> Result<(), ControllerError> {
        Ok(self.raw.campaign()?)
    }

    /// Hands a peer's message to Raft.
    pub fn step(&mut self, bytes: &[u8]) -> Result<(), ControllerError> {
        let msg = Message::parse_from_bytes(bytes)
            .map_err(|e| ControllerError::BadMessage(e.to_string()))?;
        // Raft ignores messages from unknown peers and stale terms itself; an error here
        // is such a message, not a broken node.
        let _ = self.raw.step(msg);
        Ok(())
    }

    /// Proposes a command; returns the id its [`AppliedEntry`] will carry once committed.
    /// Only the leader accepts; a proposal can still be lost if leadership changes before it
    /// commits (the proposer times out and asks again, and `apply`'s checks make a repeated
    /// command harmless).
    pub fn propose(&mut self, command: &Command) -> Result<u64, NotLeader> {
        if self.raw.raft.state != StateRole::Leader {
            return Err(NotLeader {
                leader: self.leader(),
            });
        }
        let id = self.next_proposal;
        let mut context = Vec::with_capacity(12);
        context.extend_from_slice(&self.config.node_id.0.to_le_bytes());
        context.extend_from_slice(&id.to_le_bytes());
        match self.raw.propose(context, command.encode()) {
            Ok(()) => {
                self.next_proposal += 1;
                Ok(id)
            }
            Err(_) => Err(NotLeader {
                leader: self.leader(),
            }),
        }
    }

    /// Hands leadership to the other voter that holds most of the log (the active controller
    /// is stopping). Returns that voter, or None if this node does not lead or is alone.
    pub fn transfer_leadership(&mut self) -> Option<NodeId> {
        if !self.is_leader() {
            return None;
        }
        let me = raft_id(self.config.node_id);
        let to = self
            .raw
            .raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != me)
            .max_by_key(|(_, progress)| progress.matched)
            .map(|(id, _)| *id)?;
        self.raw.transfer_leader(to);
        node_of(to)
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<NodeId> {
        match self.raw.raft.leader_id {
            0 => None,
            id => node_of(id),
        }
    }

    /// Whether this node is the active controller.
    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The current Raft term.
    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// The metadata as of the last applied command.
    pub fn image(&self) -> &MetadataImage {
        &self.image
    }

    /// Index of the last applied command.
    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    /// The in-memory log (what a snapshot for a lagging peer is made of).
    pub fn store(&self) -> &RaftLogStore {
        self.raw.store()
    }

    /// The next batch of work, if any. Batches may be handed out while earlier ones are still
    /// being written; the driver makes them durable in the order it got them.
    pub fn poll_ready(&mut self) -> Result<Option<ReadyStep>, ControllerError> {
        if !self.raw.has_ready() {
            let Some(snapshot) = self.compaction.take() else {
                return Ok(None);
            };
            return Ok(Some(ReadyStep {
                number: self.last_number,
                persist: PersistBatch {
                    snapshot: Some(snapshot),
                    ..PersistBatch::default()
                },
                ..ReadyStep::default()
            }));
        }
        let mut ready = self.raw.ready();
        let number = ready.number();
        self.last_number = number;
        let mut step = ReadyStep {
            number,
            send: self.outbound(ready.take_messages()),
            ..ReadyStep::default()
        };
        let mut persist = PersistBatch {
            snapshot: self.compaction.take(),
            ..PersistBatch::default()
        };
        if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot().clone();
            self.image = decode_image(&snapshot)?;
            self.applied = snapshot.get_metadata().index;
            persist.snapshot = Some(snapshot);
        }
        let committed = ready.take_committed_entries();
        let last_committed = committed.last().map(|e| e.index);
        step.applied = self.apply_entries(committed)?;
        persist.entries = ready.take_entries();
        persist.hard_state = ready.hs().cloned();
        self.raw.mut_store().persist(&persist);
        let after_persist = self.outbound(ready.take_persisted_messages());
        if !after_persist.is_empty() {
            self.after_persist.push_back((number, after_persist));
        }
        self.raw.advance_append_async(ready);
        if let Some(index) = last_committed {
            // Only what Raft handed out; a snapshot's index becomes applied when it is durable.
            self.raw.advance_apply_to(index);
        }
        self.maybe_compact()?;
        step.persist = persist;
        Ok(Some(step))
    }

    /// Every batch up to the one numbered `number` is durable: returns the messages that
    /// promised so (votes, append acknowledgements). Call [`Self::poll_ready`] again after.
    pub fn on_persisted(&mut self, number: u64) -> Vec<Outbound> {
        self.raw.on_persist_ready(number);
        // A received snapshot counts as applied for Raft once it is durable.
        let log = &self.raw.raft.raft_log;
        let applied = self.applied.min(log.persisted).min(log.committed);
        if applied > log.applied {
            self.raw.advance_apply_to(applied);
        }
        let mut send = Vec::new();
        while let Some((n, _)) = self.after_persist.front() {
            if *n > number {
                break;
            }
            if let Some((_, messages)) = self.after_persist.pop_front() {
                send.extend(messages);
            }
        }
        send
    }

    fn outbound(&mut self, messages: Vec<Message>) -> Vec<Outbound> {
        let mut out = Vec::with_capacity(messages.len());
        for m in messages {
            let Some(to) = node_of(m.to) else {
                continue;
            };
            if m.get_msg_type() == MessageType::MsgSnapshot {
                // Raft pauses a peer that was sent a snapshot until told how it went. The
                // message is handed to the transport now; if it is lost, the peer's next
                // answer shows it still lags and Raft sends another.
                self.raw.report_snapshot(m.to, SnapshotStatus::Finish);
            }
            if let Ok(bytes) = m.write_to_bytes() {
                out.push(Outbound { to, bytes });
            }
        }
        out
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<Vec<AppliedEntry>, ControllerError> {
        let mut out = Vec::new();
        for entry in entries {
            if entry.index <= self.applied {
                continue;
            }
            self.applied = entry.index;
            if entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() {
                // The no-op a new leader appends, or a membership change (membership is static).
                continue;
            }
            let command = Command::decode(&entry.data).map_err(|e| ControllerError::BadRecord {
                index: entry.index,
                reason: e.to_string(),
            })?;
            let result = self.image.apply(&command);
            out.push(AppliedEntry {
                index: entry.index,
                proposal: self.own_proposal(&entry.context),
                command,
                result,
            });
        }
        Ok(out)
    }

    fn own_proposal(&self, context: &[u8]) -> Option<u64> {
        let node = i32::from_le_bytes(context.get(..4)?.try_into().ok()?);
        let id = u64::from_le_bytes(context.get(4..12)?.try_into().ok()?);
        (node == self.config.node_id.0).then_some(id)
    }

    /// Compacts the log into a snapshot of the image once enough entries were applied.
    fn maybe_compact(&mut self) -> Result<(), ControllerError> {
        // Raft's own applied index: it lags ours while a received snapshot is not yet durable,
        // and Raft still reads the entries after it.
        let applied = self.raw.raft.raft_log.applied;
        if applied != self.applied {
            return Ok(());
        }
        let store = self.raw.store();
        let snapshot_index = store.latest_snapshot().get_metadata().index;
        if applied < snapshot_index + self.config.snapshot_every.max(1) {
            return Ok(());
        }
        let mut snapshot = Snapshot::default();
        let meta = snapshot.mut_metadata();
        meta.index = applied;
        meta.term = store.term(applied)?;
        meta.set_conf_state(
            store
                .latest_snapshot()
                .get_metadata()
                .get_conf_state()
                .clone(),
        );
        snapshot.data = self.image.encode().into();
        let batch = PersistBatch {
            snapshot: Some(snapshot.clone()),
            ..PersistBatch::default()
        };
        self.raw.mut_store().persist(&batch);
        self.compaction = Some(snapshot);
        Ok(())
    }
}

fn decode_image(snapshot: &Snapshot) -> Result<MetadataImage, ControllerError> {
    if snapshot.data.is_empty() {
        return Ok(MetadataImage::default());
    }
    MetadataImage::decode(&snapshot.data).map_err(|e| ControllerError::BadRecord {
        index: snapshot.get_metadata().index,
        reason: e.to_string(),
    })
}
