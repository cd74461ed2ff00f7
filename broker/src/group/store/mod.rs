//! The durable side of the group coordinator: an internal log of committed offsets and group
//! metadata, replayed when a shard starts.
//!
//! The log has `offsets.topic.num.partitions` partitions (fixed when the data directory is first
//! used, recorded in `__strom_groups/partitions`); a group lives in partition
//! `crc32c(group id) % partitions`, and that partition belongs to shard `partition % shards`.
//! Each partition is a [`PartitionLog`] in `<data>/__strom_groups/offsets-<p>/`, opened on first
//! use, holding ordinary uncompressed record batches whose records are keyed like a compacted
//! topic (the newest record per key wins; a null value deletes the key), and the log is
//! compacted (`cleanup.policy=compact`) by the shard's maintenance task:
//!
//! ```text
//! key    := version:u8 = 0, kind:u8, group:str16 [, topic:str16, partition:i32]   kind 0 = offset, 1 = group
//! offset := version:u8 = 0, offset:i64, leader_epoch:i32, commit_ms:i64, metadata:str32
//! group  := version:u8 = 0, rkyv archive of GroupRecord
//! ```
//!
//! (`str16`/`str32`: big-endian u16/u32 byte length, then UTF-8 bytes.) A record whose string
//! does not fit its length field is refused, never cut: the write fails with an error and
//! nothing of it is stored. The APIs refuse such input first (`input.rs`).
//!
//! Writes for one partition go through one writer task ([`PartitionWriter`]): requests queue up,
//! the writer appends everything queued as one batch (or a few, should they exceed the log's
//! batch limit; a write that cannot be encoded fails alone), flushes it when the broker flushes
//! acks=all writes (`log.flush.on.ack`), applies the offset changes to memory, and only then
//! answers. So memory and log change in the same order, and a commit is visible only once it is
//! stored.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::sync::Arc;

use bytes::Buf;
use event_listener::Event;
use futures::channel::oneshot;
use kafka_protocol::ResponseError as E;
use strom_storage::limits::BATCH_BYTES_MAX;
use strom_storage::records::{decode_records, encode_batch};
use strom_storage::{
    CleanupPolicy, LeaderEpoch, LogConfig, Offset, PartitionLog, StorageError, BATCH_HEADER_BYTES,
};

use super::state::Committed;
use super::GroupCoordinator;
use crate::clock::now_ms;

/// (key, value, timestamp ms) of one record of a batch the broker writes.
type BatchRecord<'a> = (Option<&'a [u8]>, Option<&'a [u8]>, i64);

/// Directory of the offsets log under the data directory.
pub const GROUPS_DIR: &str = "__strom_groups";
/// File recording the partition count of the offsets log.
const PARTITIONS_FILE: &str = "partitions";
/// Bytes read per step when replaying a partition.
const REPLAY_READ_BYTES: u32 = 1 << 20;

const FORMAT_VERSION: u8 = 0;
const KIND_OFFSET: u8 = 0;
const KIND_GROUP: u8 = 1;

/// Most bytes a record adds to a batch besides its key and value: attributes, then varints for
/// its length, timestamp delta, offset delta, key length, value length and header count.
const RECORD_OVERHEAD_BYTES_MAX: usize = 1 + 5 + 10 + 5 + 5 + 5 + 5;

/// Why a queued write was not stored.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A record does not fit the log's format (a string longer than its length field, a write
    /// larger than one batch). Retrying cannot help.
    #[error("record cannot be stored: {0}")]
    Encode(String),
    /// The log could not be opened, appended to or flushed, or the coordinator is closing.
    #[error("{0}")]
    Log(String),
}

impl StoreError {
    /// The Kafka error code of a write that failed so. A record that cannot be stored is
    /// UNKNOWN_SERVER_ERROR, as Kafka answers when a record does not fit its offsets topic
    /// (`CoordinatorOperationExceptionHelper`: MESSAGE_TOO_LARGE -> UNKNOWN_SERVER_ERROR); a
    /// failing log is COORDINATOR_NOT_AVAILABLE, which clients retry.
    pub fn code(&self) -> i16 {
        match self {
            StoreError::Encode(_) => E::UnknownServerError.code(),
            StoreError::Log(_) => E::CoordinatorNotAvailable.code(),
        }
    }
}

/// Why the offsets log could not be read back at startup.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// A partition of the offsets log could not be opened.
    #[error("opening {}: {source}", dir.display())]
    Open {
        /// The partition directory.
        dir: PathBuf,
        /// Why.
        source: StorageError,
    },
    /// A read from it failed.
    #[error("reading {}: {source}", dir.display())]
    Read {
        /// The partition directory.
        dir: PathBuf,
        /// Why.
        source: StorageError,
    },
    /// Copying what was read out of the segment file failed.
    #[error("reading {}: {source}", dir.display())]
    ReadFile {
        /// The partition directory.
        dir: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A batch does not decode.
    #[error("{} at byte {position}: {source}", dir.display())]
    Decode {
        /// The partition directory.
        dir: PathBuf,
        /// Where in what was read.
        position: usize,
        /// Why.
        source: strom_storage::records::DecodeError,
    },
}

/// The outcome of a write queued with [`OffsetsStore::submit`] (an error if the writer stopped).
pub async fn outcome(rx: oneshot::Receiver<Result<(), StoreError>>) -> Result<(), StoreError> {
    rx.await
        .unwrap_or_else(|_| Err(StoreError::Log("the offsets log writer stopped".into())))
}

/// Persisted form of a group's membership, written when a generation is complete and when the
/// group becomes empty.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Default)]
pub struct GroupRecord {
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub generation: i32,
    pub leader: Option<String>,
    pub members: Vec<MemberRecord>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Default)]
pub struct MemberRecord {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Vec<u8>)>,
    pub assignment: Vec<u8>,
}

/// One change to the offsets log.
#[derive(Clone, Debug)]
pub enum LogRecord {
    /// A committed offset (None deletes it).
    Offset {
        group: String,
        topic: Arc<str>,
        partition: i32,
        value: Option<Committed>,
    },
    /// A group's metadata (None deletes the group).
    Group {
        group: String,
        value: Option<GroupRecord>,
    },
}

impl LogRecord {
    fn group(&self) -> &str {
        match self {
            LogRecord::Offset { group, .. } | LogRecord::Group { group, .. } => group,
        }
    }

    fn encode_key(&self) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::with_capacity(64);
        out.push(FORMAT_VERSION);
        match self {
            LogRecord::Offset {
                group,
                topic,
                partition,
                ..
            } => {
                out.push(KIND_OFFSET);
                put_str16(&mut out, group, "group id")?;
                put_str16(&mut out, topic, "topic name")?;
                out.extend_from_slice(&partition.to_be_bytes());
            }
            LogRecord::Group { group, .. } => {
                out.push(KIND_GROUP);
                put_str16(&mut out, group, "group id")?;
            }
        }
        Ok(out)
    }

    fn encode_value(&self) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            LogRecord::Offset { value: None, .. } | LogRecord::Group { value: None, .. } => {
                Ok(None)
            }
            LogRecord::Offset { value: Some(c), .. } => {
                let len = u32::try_from(c.metadata.len()).map_err(|_| {
                    StoreError::Encode(format!(
                        "commit metadata of {} bytes does not fit a u32 length",
                        c.metadata.len()
                    ))
                })?;
                let mut out = Vec::with_capacity(32 + c.metadata.len());
                out.push(FORMAT_VERSION);
                out.extend_from_slice(&c.offset.to_be_bytes());
                out.extend_from_slice(&c.leader_epoch.to_be_bytes());
                out.extend_from_slice(&c.commit_ms.to_be_bytes());
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(c.metadata.as_bytes());
                Ok(Some(out))
            }
            LogRecord::Group { value: Some(g), .. } => {
                // rkyv's relative pointers are 32-bit: an archive too large for them is an error.
                let archive = rkyv::to_bytes::<rkyv::rancor::Error>(g)
                    .map_err(|e| StoreError::Encode(format!("group record: {e}")))?;
                let mut out = Vec::with_capacity(1 + archive.len());
                out.push(FORMAT_VERSION);
                out.extend_from_slice(&archive);
                Ok(Some(out))
            }
        }
    }

    /// Decodes a stored record; None if it is not one this version understands.
    pub fn decode(key: &[u8], value: Option<&[u8]>) -> Option<LogRecord> {
        let mut k = key;
        if k.len() < 2 || k.get_u8() != FORMAT_VERSION {
            return None;
        }
        let kind = k.get_u8();
        let group = get_str16(&mut k)?;
        match kind {
            KIND_OFFSET => {
                let topic: Arc<str> = get_str16(&mut k)?.into();
                if k.remaining() != 4 {
                    return None;
                }
                let partition = k.get_i32();
                let value = match value {
                    None => None,
                    Some(mut v) => {
                        if v.len() < 25 || v.get_u8() != FORMAT_VERSION {
                            return None;
                        }
                        let offset = v.get_i64();
                        let leader_epoch = v.get_i32();
                        let commit_ms = v.get_i64();
                        let len = v.get_u32() as usize;
                        if v.remaining() != len {
                            return None;
                        }
                        let metadata = String::from_utf8(v.to_vec()).ok()?;
                        Some(Committed {
                            offset,
                            leader_epoch,
                            metadata,
                            commit_ms,
                        })
                    }
                };
                Some(LogRecord::Offset {
                    group,
                    topic,
                    partition,
                    value,
                })
            }
            KIND_GROUP => {
                if k.has_remaining() {
                    return None;
                }
                let value = match value {
                    None => None,
                    Some(v) => {
                        if v.first() != Some(&FORMAT_VERSION) {
                            return None;
                        }
                        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(v.len() - 1);
                        aligned.extend_from_slice(&v[1..]);
                        Some(rkyv::from_bytes::<GroupRecord, rkyv::rancor::Error>(&aligned).ok()?)
                    }
                };
                Some(LogRecord::Group { group, value })
            }
            _ => None,
        }
    }
}

/// Writes `s` with a u16 length; refuses (rather than cut) a string longer than that holds.
fn put_str16(out: &mut Vec<u8>, s: &str, what: &str) -> Result<(), StoreError> {
    let len = u16::try_from(s.len()).map_err(|_| {
        StoreError::Encode(format!(
            "{what} of {} bytes is longer than {} bytes",
            s.len(),
            u16::MAX
        ))
    })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn get_str16(buf: &mut &[u8]) -> Option<String> {
    if buf.remaining() < 2 {
        return None;
    }
    let len = buf.get_u16() as usize;
    if buf.remaining() < len {
        return None;
    }
    let s = String::from_utf8(buf[..len].to_vec()).ok()?;
    buf.advance(len);
    Some(s)
}

/// The partition of the offsets log that holds `group`.
pub fn partition_of(group: &str, partitions: u32) -> u32 {
    crc32c::crc32c(group.as_bytes()) % partitions
}

/// Reads (or, on first use, records) the partition count of the offsets log.
pub fn load_partition_count(data_dir: &Path, configured: u32) -> std::io::Result<u32> {
    let dir = data_dir.join(GROUPS_DIR);
    let path = dir.join(PARTITIONS_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} does not hold a partition count", path.display()),
                )
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            crate::data_dir::replace_file_durable(
                &dir,
                PARTITIONS_FILE,
                format!("{configured}\n").as_bytes(),
            )?;
            Ok(configured)
        }
        Err(e) => Err(e),
    }
}

/// Kafka's name for the offsets log as a topic: in cluster mode the offsets log is that topic,
/// replicated like any other.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Cluster mode: the offsets log's partitions are the partitions of [`OFFSETS_TOPIC`], which
/// replication owns. The shard that leads a partition gives its log and stores writes through
/// its leader (appended, then acknowledged once the ISR holds them, as an acks=all produce).
pub trait OffsetsTopic {
    /// The log of offsets partition `partition` if this shard leads it.
    fn log(&self, partition: u32) -> Option<Rc<PartitionLog>>;

    /// Appends `batch` as the leader of `partition` and waits until the ISR holds it.
    fn append<'a>(
        &'a self,
        partition: u32,
        batch: &'a [u8],
    ) -> futures::future::LocalBoxFuture<'a, Result<(), String>>;
}

/// A queued write: records plus where to send the outcome.
struct Pending {
    records: Vec<LogRecord>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// The single writer of one offsets-log partition.
pub struct PartitionWriter {
    dir: PathBuf,
    /// The offsets partition.
    partition: u32,
    /// Cluster mode: the replicated topic that holds the partition.
    topic: Option<Rc<dyn OffsetsTopic>>,
    log: RefCell<Option<Rc<PartitionLog>>>,
    queue: RefCell<Vec<Pending>>,
    ready: Event,
    closed: Cell<bool>,
}

impl PartitionWriter {
    fn new(
        dir: PathBuf,
        partition: u32,
        topic: Option<Rc<dyn OffsetsTopic>>,
        log: Option<Rc<PartitionLog>>,
    ) -> Rc<PartitionWriter> {
        Rc::new(PartitionWriter {
            dir,
            partition,
            topic,
            log: RefCell::new(log),
            queue: RefCell::new(Vec::new()),
            ready: Event::new(),
            closed: Cell::new(false),
        })
    }

    /// Queues `records` (the queue order is the log order); the receiver gets the outcome once
    /// they are stored and applied.
    pub fn submit(&self, records: Vec<LogRecord>) -> oneshot::Receiver<Result<(), StoreError>> {
        let (done, rx) = oneshot::channel();
        if self.closed.get() {
            let _ = done.send(Err(StoreError::Log(
                "the group coordinator is shutting down".into(),
            )));
            return rx;
        }
        self.queue.borrow_mut().push(Pending { records, done });
        self.ready.notify(1);
        rx
    }

    async fn open(&self, config: &LogConfig) -> Result<Rc<PartitionLog>, StoreError> {
        if let Some(topic) = &self.topic {
            return topic.log(self.partition).ok_or_else(|| {
                StoreError::Log(format!(
                    "this node does not lead partition {} of {OFFSETS_TOPIC}",
                    self.partition
                ))
            });
        }
        if let Some(log) = self.log.borrow().clone() {
            return Ok(log);
        }
        let log = PartitionLog::open(self.dir.clone(), config.clone(), now_ms())
            .await
            .map_err(|e| {
                tracing::error!("opening {}: {e}", self.dir.display());
                StoreError::Log(e.to_string())
            })?;
        *self.log.borrow_mut() = Some(log.clone());
        Ok(log)
    }

    pub async fn close(&self) {
        self.closed.set(true);
        self.ready.notify(usize::MAX);
        let log = self.log.borrow_mut().take();
        if let Some(log) = log {
            if let Err(e) = log.close().await {
                tracing::error!("closing {}: {e}", self.dir.display());
            }
        }
    }
}

/// Writes queued records of one partition, in order, until the coordinator closes.
async fn writer_loop(
    writer: Rc<PartitionWriter>,
    coordinator: Weak<GroupCoordinator>,
    config: LogConfig,
    flush: bool,
) {
    loop {
        let batch: Vec<Pending> = std::mem::take(&mut *writer.queue.borrow_mut());
        if batch.is_empty() {
            if writer.closed.get() {
                return;
            }
            let listener = writer.ready.listen();
            if writer.queue.borrow().is_empty() && !writer.closed.get() {
                listener.await;
            }
            continue;
        }
        let outcomes = store(&writer, &config, flush, &batch).await;
        let Some(coordinator) = coordinator.upgrade() else {
            return;
        };
        for (p, outcome) in batch.iter().zip(&outcomes) {
            if outcome.is_ok() {
                coordinator.apply_stored(&p.records);
            }
        }
        for (p, outcome) in batch.into_iter().zip(outcomes) {
            let _ = p.done.send(outcome);
        }
    }
}

/// The encoded (key, value) records of one queued write, and the bytes they add to a batch.
struct EncodedWrite {
    records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    batch_bytes: usize,
}

/// Encodes the records of one queued write; an error if any of them cannot be stored, so a write
/// is stored whole or not at all.
fn encode_write(records: &[LogRecord]) -> Result<EncodedWrite, StoreError> {
    let mut out = Vec::with_capacity(records.len());
    let mut batch_bytes = 0;
    for r in records {
        let (key, value) = (r.encode_key()?, r.encode_value()?);
        batch_bytes += key.len() + value.as_ref().map_or(0, Vec::len) + RECORD_OVERHEAD_BYTES_MAX;
        out.push((key, value));
    }
    if (BATCH_HEADER_BYTES + batch_bytes) as u64 > BATCH_BYTES_MAX {
        return Err(StoreError::Encode(format!("{batch_bytes} bytes of records exceed the offsets log's batch limit of {BATCH_BYTES_MAX} bytes")));
    }
    Ok(EncodedWrite {
        records: out,
        batch_bytes,
    })
}

/// Stores the queued writes in order, in as few batches as the log's batch limit allows, and
/// returns the outcome of each. A write that cannot be encoded fails alone; the others are
/// stored.
async fn store(
    writer: &PartitionWriter,
    config: &LogConfig,
    flush: bool,
    batch: &[Pending],
) -> Vec<Result<(), StoreError>> {
    let encoded: Vec<Result<EncodedWrite, StoreError>> =
        batch.iter().map(|p| encode_write(&p.records)).collect();
    let mut outcomes: Vec<Result<(), StoreError>> = encoded
        .iter()
        .map(|e| e.as_ref().map(|_| ()).map_err(Clone::clone))
        .collect();
    for e in outcomes.iter().filter_map(|o| o.as_ref().err()) {
        tracing::error!("{}: refusing a write: {e}", writer.dir.display());
    }
    // Consecutive encodable writes, grouped so that each group fits in one batch.
    let mut chunks: Vec<Vec<usize>> = Vec::new();
    let mut chunk_bytes = 0;
    for (i, e) in encoded.iter().enumerate() {
        let Ok(e) = e else { continue };
        if e.records.is_empty() {
            continue;
        }
        match chunks.last_mut() {
            Some(chunk)
                if ((BATCH_HEADER_BYTES + chunk_bytes + e.batch_bytes) as u64)
                    <= BATCH_BYTES_MAX =>
            {
                chunk.push(i);
                chunk_bytes += e.batch_bytes;
            }
            _ => {
                chunks.push(vec![i]);
                chunk_bytes = e.batch_bytes;
            }
        }
    }
    let now = now_ms();
    let mut appended = Vec::new();
    for chunk in chunks {
        let parts: Vec<BatchRecord<'_>> = chunk
            .iter()
            .filter_map(|&i| encoded[i].as_ref().ok())
            .flat_map(|e| e.records.iter())
            .map(|(k, v)| (Some(k.as_slice()), v.as_deref(), now))
            .collect();
        match append(writer, config, &encode_batch(&parts), now).await {
            Ok(()) => appended.extend(chunk),
            Err(e) => chunk.iter().for_each(|&i| outcomes[i] = Err(e.clone())),
        }
    }
    if flush && !appended.is_empty() {
        if let Err(e) = flush_log(writer, config).await {
            appended.iter().for_each(|&i| outcomes[i] = Err(e.clone()));
        }
    }
    outcomes
}

async fn append(
    writer: &PartitionWriter,
    config: &LogConfig,
    bytes: &[u8],
    now: i64,
) -> Result<(), StoreError> {
    if let Some(topic) = &writer.topic {
        // Replicated: durable on the ISR when this returns.
        return topic.append(writer.partition, bytes).await.map_err(|e| {
            tracing::warn!("appending to {OFFSETS_TOPIC}-{}: {e}", writer.partition);
            StoreError::Log(e)
        });
    }
    let log = writer.open(config).await?;
    log.append(bytes, LeaderEpoch(0), now)
        .await
        .map(|_| ())
        .map_err(|e| {
            tracing::error!("appending to {}: {e}", writer.dir.display());
            match e {
                StorageError::BatchTooLarge { .. } => StoreError::Encode(e.to_string()),
                e => StoreError::Log(e.to_string()),
            }
        })
}

async fn flush_log(writer: &PartitionWriter, config: &LogConfig) -> Result<(), StoreError> {
    if writer.topic.is_some() {
        // The replicated append waited for the ISR's fdatasyncs already.
        return Ok(());
    }
    let log = writer.open(config).await?;
    log.flush().await.map_err(|e| {
        tracing::error!("flushing {}: {e}", writer.dir.display());
        StoreError::Log(e.to_string())
    })
}

/// The partitions of the offsets log that one shard owns.
pub struct OffsetsStore {
    dir: PathBuf,
    pub partitions: u32,
    config: LogConfig,
    flush: bool,
    writers: RefCell<HashMap<u32, Rc<PartitionWriter>>>,
    /// Partitions whose writer task runs.
    started: RefCell<HashSet<u32>>,
    /// Cluster mode: the replicated topic that holds the partitions (set once at startup).
    topic: RefCell<Option<Rc<dyn OffsetsTopic>>>,
}

impl OffsetsStore {
    /// `delete_retention_ms` is how long the compacted log keeps a tombstone (a deleted offset
    /// or group).
    pub fn new(
        data_dir: &Path,
        partitions: u32,
        segment_bytes: u64,
        delete_retention_ms: u64,
        flush: bool,
    ) -> OffsetsStore {
        // Keyed records, the newest per key wins: the log is compacted, never deleted by age.
        let config = LogConfig {
            segment_bytes,
            cleanup: CleanupPolicy {
                delete: false,
                compact: true,
            },
            delete_retention_ms,
            ..LogConfig::default()
        };
        OffsetsStore {
            dir: data_dir.join(GROUPS_DIR),
            partitions,
            config,
            flush,
            writers: RefCell::new(HashMap::new()),
            started: RefCell::new(HashSet::new()),
            topic: RefCell::new(None),
        }
    }

    fn partition_dir(&self, p: u32) -> PathBuf {
        self.dir.join(format!("offsets-{p}"))
    }

    /// Opens and reads back every existing partition in `owned`, oldest record first.
    pub async fn replay(
        &self,
        owned: &[u32],
        mut apply: impl FnMut(LogRecord),
    ) -> Result<usize, ReplayError> {
        let mut count = 0;
        for &p in owned {
            let dir = self.partition_dir(p);
            if !dir.exists() {
                continue;
            }
            let log = PartitionLog::open(dir.clone(), self.config.clone(), now_ms())
                .await
                .map_err(|source| ReplayError::Open {
                    dir: dir.clone(),
                    source,
                })?;
            count += replay_log(&dir, &log, &mut apply).await?;
            self.writers
                .borrow_mut()
                .insert(p, PartitionWriter::new(dir, p, None, Some(log)));
        }
        Ok(count)
    }

    /// Cluster mode: the offsets log's partitions live in the replicated topic `topic`.
    pub fn use_topic(&self, topic: Rc<dyn OffsetsTopic>) {
        *self.topic.borrow_mut() = Some(topic);
    }

    /// Whether the partitions live in the replicated topic (cluster mode).
    pub fn replicated(&self) -> bool {
        self.topic.borrow().is_some()
    }
}

/// Reads `log` (of `dir`) from its start to its high watermark, oldest record first, giving each
/// record to `apply`; returns how many it gave.
pub async fn replay_log(
    dir: &Path,
    log: &PartitionLog,
    apply: &mut impl FnMut(LogRecord),
) -> Result<usize, ReplayError> {
    let dir = dir.to_path_buf();
    let mut count = 0;
    {
        {
            // To the log end, past the high watermark: a coordinator that just took over
            // may not know the high watermark its predecessor reached yet, and as the leader
            // its log is the one that counts (Kafka loads to the log end too).
            let mut offset = log.log_start_offset().0;
            while offset < log.log_end_offset().0 {
                let Some(slice) = log
                    .read_to_log_end(Offset(offset), REPLAY_READ_BYTES)
                    .await
                    .map_err(|source| ReplayError::Read {
                        dir: dir.clone(),
                        source,
                    })?
                else {
                    break;
                };
                // A blocking read: at startup before the shard serves anything, or (cluster
                // mode) when this shard takes over an offsets partition, which is small.
                let bytes = slice
                    .read_blocking()
                    .map_err(|source| ReplayError::ReadFile {
                        dir: dir.clone(),
                        source,
                    })?;
                let mut pos = 0;
                while pos + BATCH_HEADER_BYTES <= bytes.len() {
                    let len =
                        i32::from_be_bytes(bytes[pos + 8..pos + 12].try_into().expect("4 bytes"))
                            as usize
                            + 12;
                    let end = (pos + len).min(bytes.len());
                    let batch = &bytes[pos..end];
                    let records = decode_records(batch).map_err(|source| ReplayError::Decode {
                        dir: dir.clone(),
                        position: pos,
                        source,
                    })?;
                    // The batch's last offset, not its last record's: compaction may have
                    // removed records at the end of a batch.
                    let base = i64::from_be_bytes(batch[0..8].try_into().expect("8 bytes"));
                    let last_delta = i32::from_be_bytes(batch[23..27].try_into().expect("4 bytes"));
                    offset = base + i64::from(last_delta) + 1;
                    for r in records {
                        match r.key.and_then(|k| LogRecord::decode(k, r.value)) {
                            Some(record) => {
                                apply(record);
                                count += 1;
                            }
                            None => tracing::warn!(
                                "{}: skipping unreadable record at offset {}",
                                dir.display(),
                                r.offset
                            ),
                        }
                    }
                    pos = end;
                }
            }
        }
    }
    Ok(count)
}

impl OffsetsStore {
    /// The open partition logs (for the shard's cleaner).
    pub fn logs(&self) -> Vec<Rc<PartitionLog>> {
        if self.replicated() {
            // The topic's partitions are the shard's own logs, maintained with the others.
            return Vec::new();
        }
        self.writers
            .borrow()
            .values()
            .filter_map(|w| w.log.borrow().clone())
            .collect()
    }

    /// The writer of `group`'s partition (created, with its task, on first use).
    pub fn writer(&self, group: &str, coordinator: &Rc<GroupCoordinator>) -> Rc<PartitionWriter> {
        let p = partition_of(group, self.partitions);
        let mut writers = self.writers.borrow_mut();
        let writer = writers
            .entry(p)
            .or_insert_with(|| {
                PartitionWriter::new(self.partition_dir(p), p, self.topic.borrow().clone(), None)
            })
            .clone();
        drop(writers);
        if self.started.borrow_mut().insert(p) {
            glommio::spawn_local(writer_loop(
                writer.clone(),
                Rc::downgrade(coordinator),
                self.config.clone(),
                self.flush,
            ))
            .detach();
        }
        writer
    }

    /// Queues `records`, all of one group, to be stored and then applied.
    pub fn submit(
        &self,
        coordinator: &Rc<GroupCoordinator>,
        records: Vec<LogRecord>,
    ) -> oneshot::Receiver<Result<(), StoreError>> {
        let Some(first) = records.first() else {
            let (tx, rx) = oneshot::channel();
            let _ = tx.send(Ok(()));
            return rx;
        };
        self.writer(first.group(), coordinator).submit(records)
    }

    /// Stores `records`, all of one group, and applies them.
    pub async fn write(
        &self,
        coordinator: &Rc<GroupCoordinator>,
        records: Vec<LogRecord>,
    ) -> Result<(), StoreError> {
        outcome(self.submit(coordinator, records)).await
    }

    pub async fn close(&self) {
        let writers: Vec<Rc<PartitionWriter>> = self.writers.borrow().values().cloned().collect();
        for w in writers {
            w.close().await;
        }
    }
}

#[cfg(test)]
mod tests;
