//! Producer ids for idempotent producers (InitProducerId), handed out by the controller.
//!
//! Ids are unique for the life of a data directory, across restarts and crashes. The controller
//! reserves them in blocks of [`PRODUCER_ID_BLOCK`]: before it hands out the first id of a new
//! block it durably records the block's end in `<data>/__strom_meta/producer-ids` (framed and
//! written like the topics snapshot, see [`super::store`]; payload: the end as i64 BE). After a
//! restart, clean or not, allocation continues at the recorded end, so the unused rest of a
//! block is skipped and no id is ever handed out twice.
//!
//! The current epoch of each id is kept in memory only, so that a producer that already has an
//! id can bump its epoch (KIP-360). An entry expires when its id has not been seen for
//! `producer.id.expiration.ms`, and the table is capped; a producer whose entry is gone (also
//! after a restart) simply gets a new id.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use glommio::sync::Semaphore;

use super::store::{self, MetaStoreError};
use crate::ids::ProducerId;

const MAGIC: &[u8; 8] = b"STRMPIDS";
const FORMAT_VERSION: u32 = 1;
pub const FILE: &str = "producer-ids";
/// Ids reserved by one write of the block file.
pub const PRODUCER_ID_BLOCK: i64 = 1000;
/// Producer epochs remembered at most; the least recently seen are forgotten first.
pub const PRODUCER_EPOCHS_MAX: usize = 1_000_000;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProducerIdError {
    #[error("persisting the producer id block: {0}")]
    Store(#[from] MetaStoreError),
    #[error("producer ids are exhausted")]
    Exhausted,
    #[error("the controller is shutting down")]
    ShuttingDown,
    /// Cluster mode: the controller quorum did not hand out a block (no active controller, or
    /// the proposal timed out). Retriable.
    #[error("no producer id block from the controller quorum: {0}")]
    QuorumUnavailable(String),
    #[error("producer {id} has epoch {current}; epoch {given} is fenced")]
    Fenced { id: i64, given: i16, current: i16 },
}

fn encode(block_end: i64) -> Vec<u8> {
    store::frame(MAGIC, FORMAT_VERSION, &block_end.to_be_bytes())
}

fn decode(path: &Path, bytes: &[u8]) -> Result<i64, MetaStoreError> {
    let corrupt = |why: &str| MetaStoreError::Corrupt {
        path: path.to_path_buf(),
        why: why.to_string(),
    };
    let payload = store::unframe(path, MAGIC, FORMAT_VERSION, bytes)?;
    let raw: [u8; 8] = payload
        .try_into()
        .map_err(|_| corrupt("payload is not 8 bytes"))?;
    let end = i64::from_be_bytes(raw);
    if end < 0 {
        return Err(corrupt("negative block end"));
    }
    Ok(end)
}

/// The persisted end of the last reserved block: the first id a restarted broker may use
/// (0 for a new data directory). Read at startup with blocking I/O.
pub fn load(data_dir: &Path) -> Result<i64, MetaStoreError> {
    match store::read_meta_file(data_dir, FILE)? {
        Some((path, bytes)) => decode(&path, &bytes),
        None => Ok(0),
    }
}

async fn save(data_dir: &Path, block_end: i64) -> Result<(), MetaStoreError> {
    store::write_meta_file(data_dir, FILE, encode(block_end)).await
}

/// The ids `next..end` of the reserved block are free; `end` is durable.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Block {
    next: i64,
    end: i64,
}

impl Block {
    fn take(&mut self) -> Option<i64> {
        (self.next < self.end).then(|| {
            self.next += 1;
            self.next - 1
        })
    }
}

/// Where blocks of ids come from.
pub enum BlockSource {
    /// A single node: reserved by persisting the block's end in `<data>/__strom_meta`.
    Local(PathBuf),
    /// Cluster mode: allocated by the controller quorum (`AllocateProducerIds`), so ids are
    /// unique across the nodes; the quorum's log makes the reservation durable.
    Quorum {
        /// This node.
        node_id: i32,
        /// Proposals go here.
        handle: crate::quorum::QuorumHandle,
    },
}

/// Hands out producer ids, reserving (persisting) a block before using it.
pub struct ProducerIdAllocator {
    source: BlockSource,
    block: RefCell<Block>,
    /// Serializes block reservations.
    reserving: Semaphore,
}

impl ProducerIdAllocator {
    /// `persisted_end`: what [`load`] returned. Nothing is reserved until the first allocation.
    pub fn new(source: BlockSource, persisted_end: i64) -> ProducerIdAllocator {
        ProducerIdAllocator {
            source,
            block: RefCell::new(Block {
                next: persisted_end,
                end: persisted_end,
            }),
            reserving: Semaphore::new(1),
        }
    }

    pub async fn allocate(&self) -> Result<i64, ProducerIdError> {
        if let Some(id) = self.block.borrow_mut().take() {
            return Ok(id);
        }
        let _permit = self
            .reserving
            .acquire_permit(1)
            .await
            .map_err(|_| ProducerIdError::ShuttingDown)?;
        // Another allocation may have reserved a block while this one waited.
        if let Some(id) = self.block.borrow_mut().take() {
            return Ok(id);
        }
        let reserved = match &self.source {
            BlockSource::Local(data_dir) => {
                let next = self.block.borrow().end;
                let end = next
                    .checked_add(PRODUCER_ID_BLOCK)
                    .ok_or(ProducerIdError::Exhausted)?;
                save(data_dir, end).await?;
                Block { next, end }
            }
            BlockSource::Quorum { node_id, handle } => quorum_block(*node_id, handle).await?,
        };
        let mut block = self.block.borrow_mut();
        *block = reserved;
        block.take().ok_or(ProducerIdError::Exhausted)
    }
}

/// A block of [`PRODUCER_ID_BLOCK`] ids from the controller quorum. A proposal that meets no
/// active controller is tried again for up to `QUORUM_BLOCK_WAIT_MS` (an election takes about a
/// second).
async fn quorum_block(
    node_id: i32,
    handle: &crate::quorum::QuorumHandle,
) -> Result<Block, ProducerIdError> {
    use strom_cluster::controller::{AllocateProducerIds, Applied, Command, ProposalOutcome};
    const QUORUM_BLOCK_WAIT_MS: u64 = 5_000;
    const RETRY_MS: u64 = 100;
    let command = Command::AllocateProducerIds(AllocateProducerIds {
        node_id,
        count: PRODUCER_ID_BLOCK,
    });
    let mut waited = 0;
    loop {
        let outcome = handle.propose(command.clone()).await;
        match outcome {
            ProposalOutcome::Applied(Applied::ProducerIds(b)) => {
                return Ok(Block {
                    next: b.start,
                    end: b.start.saturating_add(b.count),
                })
            }
            ProposalOutcome::Applied(other) => {
                return Err(ProducerIdError::QuorumUnavailable(format!("{other:?}")))
            }
            other if waited >= QUORUM_BLOCK_WAIT_MS => {
                return Err(ProducerIdError::QuorumUnavailable(format!("{other:?}")))
            }
            _ => {
                glommio::timer::sleep(std::time::Duration::from_millis(RETRY_MS)).await;
                waited += RETRY_MS;
            }
        }
    }
}

/// The current epoch of recently seen producer ids, forgotten after `expiration_ms` unseen.
pub struct ProducerEpochs {
    expiration_ms: i64,
    cap: usize,
    /// id -> (epoch, last seen ms)
    by_id: HashMap<i64, (i16, i64)>,
    /// (last seen ms, id), oldest first.
    by_seen: BTreeSet<(i64, i64)>,
}

impl ProducerEpochs {
    pub fn new(expiration_ms: i64, cap: usize) -> ProducerEpochs {
        ProducerEpochs {
            expiration_ms,
            cap: cap.max(1),
            by_id: HashMap::new(),
            by_seen: BTreeSet::new(),
        }
    }

    pub fn get(&self, id: i64) -> Option<i16> {
        self.by_id.get(&id).map(|&(epoch, _)| epoch)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn set(&mut self, id: i64, epoch: i16, now_ms: i64) {
        if let Some((_, seen)) = self.by_id.insert(id, (epoch, now_ms)) {
            self.by_seen.remove(&(seen, id));
        }
        self.by_seen.insert((now_ms, id));
        while self.by_id.len() > self.cap {
            self.pop_oldest();
        }
    }

    pub fn remove(&mut self, id: i64) {
        if let Some((_, seen)) = self.by_id.remove(&id) {
            self.by_seen.remove(&(seen, id));
        }
    }

    /// Forgets ids not seen for `expiration_ms`.
    pub fn expire(&mut self, now_ms: i64) {
        let cutoff = now_ms.saturating_sub(self.expiration_ms);
        while self
            .by_seen
            .first()
            .is_some_and(|&(seen, _)| seen <= cutoff)
        {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((_, id)) = self.by_seen.pop_first() {
            self.by_id.remove(&id);
        }
    }
}

/// The controller's producer id service: allocation plus epoch bumps.
pub struct ProducerIds {
    allocator: ProducerIdAllocator,
    epochs: RefCell<ProducerEpochs>,
}

impl ProducerIds {
    #[cfg(test)]
    pub fn new(data_dir: PathBuf, persisted_end: i64, expiration_ms: i64) -> ProducerIds {
        ProducerIds::with_source(BlockSource::Local(data_dir), persisted_end, expiration_ms)
    }

    /// Ids from `source` (the quorum in cluster mode).
    pub fn with_source(source: BlockSource, persisted_end: i64, expiration_ms: i64) -> ProducerIds {
        ProducerIds {
            allocator: ProducerIdAllocator::new(source, persisted_end),
            epochs: RefCell::new(ProducerEpochs::new(expiration_ms, PRODUCER_EPOCHS_MAX)),
        }
    }

    /// InitProducerId for an idempotent (non-transactional) producer. `current` is the id and
    /// epoch a producer that already has an id sends to bump its epoch (KIP-360): the same id
    /// with the next epoch if `current` holds the id's current epoch, `Fenced` if it holds
    /// another. Otherwise (no id, or one this broker does not know or whose epochs are used up)
    /// a new id with epoch 0.
    pub async fn init(
        &self,
        current: Option<(ProducerId, i16)>,
        now_ms: i64,
    ) -> Result<(ProducerId, i16), ProducerIdError> {
        {
            let mut epochs = self.epochs.borrow_mut();
            epochs.expire(now_ms);
            if let Some((ProducerId(id), given)) = current {
                match epochs.get(id) {
                    Some(epoch) if epoch != given => {
                        return Err(ProducerIdError::Fenced {
                            id,
                            given,
                            current: epoch,
                        })
                    }
                    Some(epoch) if epoch < i16::MAX - 1 => {
                        epochs.set(id, epoch + 1, now_ms);
                        return Ok((ProducerId(id), epoch + 1));
                    }
                    // The next epoch would be i16::MAX: a new id instead.
                    Some(_) => epochs.remove(id),
                    None => {}
                }
            }
        }
        let id = self.allocator.allocate().await?;
        self.epochs.borrow_mut().set(id, 0, now_ms);
        Ok((ProducerId(id), 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<F, T>(f: impl FnOnce() -> F + Send + 'static) -> T
    where
        F: std::future::Future<Output = T> + 'static,
        T: Send + 'static,
    {
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move { f().await })
            .unwrap()
            .join()
            .unwrap()
    }

    /// A new data directory, prepared as at startup (`load` creates the metadata directory).
    fn data_dir() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("d");
        assert_eq!(load(&data).unwrap(), 0);
        (dir, data)
    }

    #[test]
    fn block_file_round_trips_and_detects_corruption() {
        let p = Path::new("x");
        let mut bytes = encode(123_000);
        assert_eq!(decode(p, &bytes).unwrap(), 123_000);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(matches!(
            decode(p, &bytes),
            Err(MetaStoreError::Corrupt { .. })
        ));
        assert!(decode(p, &bytes[..20]).is_err());
        assert!(decode(p, &store::frame(MAGIC, FORMAT_VERSION, &[0; 4])).is_err());
        assert!(decode(
            p,
            &store::frame(b"STRMMETA", FORMAT_VERSION, &7i64.to_be_bytes())
        )
        .is_err());
        assert!(decode(p, &encode(-5)).is_err());
    }

    #[test]
    fn new_data_dir_starts_at_zero_and_reserves_before_use() {
        let (_t, data) = data_dir();
        assert_eq!(load(&data).unwrap(), 0);
        let d = data.clone();
        let ids = run(move || async move {
            let a = ProducerIdAllocator::new(BlockSource::Local(d.clone()), 0);
            let mut ids = Vec::new();
            for _ in 0..3 {
                ids.push(a.allocate().await.unwrap());
                // The id's block is durable before the id is handed out.
                assert!(load(&d).unwrap() > *ids.last().unwrap());
            }
            ids
        });
        assert_eq!(ids, vec![0, 1, 2]);
        assert_eq!(load(&data).unwrap(), PRODUCER_ID_BLOCK);
    }

    #[test]
    fn allocation_continues_across_blocks_and_restarts_without_repeats() {
        let (_t, data) = data_dir();
        let mut seen = std::collections::HashSet::new();
        let mut last = -1;
        // Each round is a broker life: allocate some ids, then "crash" (drop the allocator,
        // losing its in-memory counter) and start again from what is on disk.
        for (round, count) in [2500usize, 1, 0, 999, 1000, 1001].into_iter().enumerate() {
            let start = load(&data).unwrap();
            assert!(
                start > last,
                "round {round}: restart at {start} after id {last}"
            );
            let d = data.clone();
            let ids = run(move || async move {
                let a = ProducerIdAllocator::new(BlockSource::Local(d), start);
                let mut ids = Vec::new();
                for _ in 0..count {
                    ids.push(a.allocate().await.unwrap());
                }
                ids
            });
            for w in ids.windows(2) {
                assert_eq!(w[1], w[0] + 1);
            }
            for id in ids {
                assert!(id > last);
                assert!(seen.insert(id), "id {id} handed out twice");
                last = id;
            }
            assert!(load(&data).unwrap() > last);
        }
        assert_eq!(seen.len(), 2500 + 1 + 999 + 1000 + 1001);
    }

    #[test]
    fn concurrent_allocations_share_one_reservation() {
        let (_t, data) = data_dir();
        let d = data.clone();
        let mut ids = run(move || async move {
            let a = std::rc::Rc::new(ProducerIdAllocator::new(BlockSource::Local(d), 0));
            let tasks = (0..1500).map(|_| {
                let a = a.clone();
                async move { a.allocate().await.unwrap() }
            });
            futures::future::join_all(tasks).await
        });
        ids.sort_unstable();
        assert_eq!(ids, (0..1500).collect::<Vec<i64>>());
        assert_eq!(load(&data).unwrap(), 2 * PRODUCER_ID_BLOCK);
    }

    #[test]
    fn interrupted_write_leaves_the_previous_block() {
        let (_t, data) = data_dir();
        let d = data.clone();
        run(move || async move { save(&d, 4000).await.unwrap() });
        // A crash after writing the temporary file but before the rename.
        std::fs::write(
            store::meta_dir(&data).join(format!("{FILE}.tmp")),
            encode(9000),
        )
        .unwrap();
        assert_eq!(load(&data).unwrap(), 4000);
        let d = data.clone();
        let id = run(move || async move {
            ProducerIdAllocator::new(BlockSource::Local(d), 4000)
                .allocate()
                .await
                .unwrap()
        });
        assert_eq!(id, 4000);
        assert_eq!(load(&data).unwrap(), 5000);
    }

    #[test]
    fn epochs_expire_and_are_capped() {
        let mut e = ProducerEpochs::new(100, 3);
        e.set(1, 0, 0);
        e.set(2, 0, 10);
        e.set(1, 1, 50);
        e.expire(110);
        assert_eq!((e.get(1), e.get(2)), (Some(1), None));
        e.set(3, 0, 120);
        e.set(4, 0, 130);
        e.set(5, 0, 140);
        assert_eq!(e.len(), 3);
        assert_eq!(e.get(1), None, "least recently seen goes first");
        e.remove(4);
        assert_eq!((e.get(3), e.get(4), e.get(5)), (Some(0), None, Some(0)));
        e.expire(1000);
        assert_eq!(e.len(), 0);
    }

    #[test]
    fn init_bumps_fences_and_falls_back_to_new_ids() {
        let (_t, data) = data_dir();
        run(move || async move {
            let p = ProducerIds::new(data, 0, 1000);
            assert_eq!(p.init(None, 0).await.unwrap(), (ProducerId(0), 0));
            assert_eq!(p.init(None, 0).await.unwrap(), (ProducerId(1), 0));
            // KIP-360 bump with the current epoch: same id, next epoch.
            assert_eq!(
                p.init(Some((ProducerId(0), 0)), 1).await.unwrap(),
                (ProducerId(0), 1)
            );
            assert_eq!(
                p.init(Some((ProducerId(0), 1)), 2).await.unwrap(),
                (ProducerId(0), 2)
            );
            // A stale epoch is fenced and changes nothing.
            assert!(matches!(
                p.init(Some((ProducerId(0), 1)), 3).await,
                Err(ProducerIdError::Fenced {
                    id: 0,
                    given: 1,
                    current: 2
                })
            ));
            assert_eq!(
                p.init(Some((ProducerId(0), 2)), 4).await.unwrap(),
                (ProducerId(0), 3)
            );
            // An id this broker does not know (e.g. from before a restart): a new id.
            assert_eq!(
                p.init(Some((ProducerId(777), 5)), 5).await.unwrap(),
                (ProducerId(2), 0)
            );
            // Exhausted epochs: a new id, and the old one is forgotten.
            p.epochs.borrow_mut().set(1, i16::MAX - 2, 6);
            assert_eq!(
                p.init(Some((ProducerId(1), i16::MAX - 2)), 7)
                    .await
                    .unwrap(),
                (ProducerId(1), i16::MAX - 1)
            );
            assert_eq!(
                p.init(Some((ProducerId(1), i16::MAX - 1)), 8)
                    .await
                    .unwrap(),
                (ProducerId(3), 0)
            );
            assert_eq!(p.epochs.borrow().get(1), None);
            // Expired after 1000 ms unseen: treated as unknown.
            assert_eq!(
                p.init(Some((ProducerId(0), 3)), 2000).await.unwrap(),
                (ProducerId(4), 0)
            );
        });
    }
}
