//! The controller's Raft log as Raft reads it: hard state, membership, the latest snapshot and
//! the entries after it.
//!
//! One type serves twice: the node keeps one in memory (Raft reads it through
//! [`raft::Storage`]), and the driver keeps the durable copy by applying every
//! [`PersistBatch`] the node hands out to its own (the file on disk, or in the simulator a
//! second value that survives a crash). A node restarts from the durable copy.

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

/// What the driver must make durable before the node's `after_persist` messages are sent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PersistBatch {
    /// A snapshot to install first (received from the leader, or taken when compacting).
    pub snapshot: Option<Snapshot>,
    /// Entries to append; they replace any stored entries at the same or later indexes.
    pub entries: Vec<Entry>,
    /// The new hard state (term, vote, commit), if it changed.
    pub hard_state: Option<HardState>,
}

impl PersistBatch {
    /// Whether there is nothing to persist.
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none() && self.entries.is_empty() && self.hard_state.is_none()
    }
}

/// Hard state, membership, latest snapshot and the entries after it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RaftLogStore {
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: Snapshot,
    /// `entries[i].index == snapshot index + 1 + i`.
    entries: Vec<Entry>,
}

impl RaftLogStore {
    /// A new log for a cluster whose voters are `voters` (Raft ids).
    pub fn new(voters: Vec<u64>) -> RaftLogStore {
        let conf_state = ConfState {
            voters,
            ..ConfState::default()
        };
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().set_conf_state(conf_state.clone());
        RaftLogStore {
            hard_state: HardState::default(),
            conf_state,
            snapshot,
            entries: Vec::new(),
        }
    }

    /// Applies a batch (what the driver does to its durable copy, and the node to its own).
    pub fn persist(&mut self, batch: &PersistBatch) {
        if let Some(snapshot) = &batch.snapshot {
            self.install_snapshot(snapshot.clone());
        }
        self.append(&batch.entries);
        if let Some(hs) = &batch.hard_state {
            self.hard_state = hs.clone();
        }
    }

    /// The latest snapshot (its data is an encoded `MetadataImage`, empty for the initial one).
    pub fn latest_snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The stored hard state.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The stored entries after the snapshot.
    pub fn stored_entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Sets the commit index (it only moves forward).
    pub fn set_commit(&mut self, commit: u64) {
        if commit > self.hard_state.commit {
            self.hard_state.commit = commit;
        }
    }

    fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    fn first(&self) -> u64 {
        self.snapshot_index() + 1
    }

    fn last(&self) -> u64 {
        self.snapshot_index() + self.entries.len() as u64
    }

    /// Installs a snapshot: entries it covers are dropped, later ones kept if they agree.
    fn install_snapshot(&mut self, snapshot: Snapshot) {
        let meta = snapshot.get_metadata();
        let index = meta.index;
        if index <= self.snapshot_index() {
            return;
        }
        let keeps_tail =
            index < self.last() && self.entries[(index - self.first()) as usize].term == meta.term;
        if keeps_tail {
            let drop = (index - self.snapshot_index()) as usize;
            self.entries.drain(..drop);
        } else {
            self.entries.clear();
        }
        self.conf_state = meta.get_conf_state().clone();
        if self.hard_state.commit < index {
            self.hard_state.commit = index;
        }
        if self.hard_state.term < meta.term {
            self.hard_state.term = meta.term;
        }
        self.snapshot = snapshot;
    }

    fn append(&mut self, entries: &[Entry]) {
        let Some(first_new) = entries.first().map(|e| e.index) else {
            return;
        };
        // Entries the snapshot already covers are committed and equal: skip them.
        let skip = self.first().saturating_sub(first_new) as usize;
        let entries = entries.get(skip..).unwrap_or_default();
        let Some(first_new) = entries.first().map(|e| e.index) else {
            return;
        };
        let keep = (first_new - self.first()) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(entries);
    }
}

impl raft::Storage for RaftLogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let from = (low - self.first()) as usize;
        let to = (high - self.first()) as usize;
        let mut out = self.entries[from..to].to_vec();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snapshot_index() {
            return Ok(self.snapshot.get_metadata().term);
        }
        if idx < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.entries[(idx - self.first()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        Ok(self.snapshot.clone())
    }
}
