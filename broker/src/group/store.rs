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
//! (`str16`/`str32`: big-endian u16/u32 byte length, then UTF-8 bytes.)
//!
//! Writes for one partition go through one writer task ([`PartitionWriter`]): requests queue up,
//! the writer appends everything queued as one batch, flushes it when the broker flushes acks=all
//! writes (`log.flush.on.ack`), applies the offset changes to memory, and only then answers. So
//! memory and log change in the same order, and a commit is visible only once it is stored.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::sync::Arc;

use bytes::Buf;
use event_listener::Event;
use futures::channel::oneshot;
use strom_storage::records::{decode_records, encode_batch};
use strom_storage::{CleanupPolicy, LeaderEpoch, LogConfig, Offset, PartitionLog, BATCH_HEADER_BYTES};

use super::state::Committed;
use super::GroupCoordinator;
use crate::now_ms;

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
    Offset { group: String, topic: Arc<str>, partition: i32, value: Option<Committed> },
    /// A group's metadata (None deletes the group).
    Group { group: String, value: Option<GroupRecord> },
}

impl LogRecord {
    fn group(&self) -> &str {
        match self {
            LogRecord::Offset { group, .. } | LogRecord::Group { group, .. } => group,
        }
    }

    fn encode_key(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.push(FORMAT_VERSION);
        match self {
            LogRecord::Offset { group, topic, partition, .. } => {
                out.push(KIND_OFFSET);
                put_str16(&mut out, group);
                put_str16(&mut out, topic);
                out.extend_from_slice(&partition.to_be_bytes());
            }
            LogRecord::Group { group, .. } => {
                out.push(KIND_GROUP);
                put_str16(&mut out, group);
            }
        }
        out
    }

    fn encode_value(&self) -> Option<Vec<u8>> {
        match self {
            LogRecord::Offset { value, .. } => value.as_ref().map(|c| {
                let mut out = Vec::with_capacity(32 + c.metadata.len());
                out.push(FORMAT_VERSION);
                out.extend_from_slice(&c.offset.to_be_bytes());
                out.extend_from_slice(&c.leader_epoch.to_be_bytes());
                out.extend_from_slice(&c.commit_ms.to_be_bytes());
                out.extend_from_slice(&(c.metadata.len() as u32).to_be_bytes());
                out.extend_from_slice(c.metadata.as_bytes());
                out
            }),
            LogRecord::Group { value, .. } => value.as_ref().map(|g| {
                let archive = rkyv::to_bytes::<rkyv::rancor::Error>(g).expect("group record serializes");
                let mut out = Vec::with_capacity(1 + archive.len());
                out.push(FORMAT_VERSION);
                out.extend_from_slice(&archive);
                out
            }),
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
                        Some(Committed { offset, leader_epoch, metadata, commit_ms })
                    }
                };
                Some(LogRecord::Offset { group, topic, partition, value })
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

fn put_str16(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
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
        Ok(text) => text.trim().parse::<u32>().ok().filter(|&n| n > 0).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{} does not hold a partition count", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(&dir)?;
            let tmp = dir.join(format!("{PARTITIONS_FILE}.tmp"));
            {
                use std::io::Write;
                let mut f = std::fs::File::create(&tmp)?;
                writeln!(f, "{configured}")?;
                f.sync_all()?;
            }
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&dir)?.sync_all()?;
            if let Some(parent) = dir.parent() {
                std::fs::File::open(parent)?.sync_all()?;
            }
            Ok(configured)
        }
        Err(e) => Err(e),
    }
}

/// A queued write: records plus where to send the outcome.
struct Pending {
    records: Vec<LogRecord>,
    done: oneshot::Sender<Result<(), String>>,
}

/// The single writer of one offsets-log partition.
pub struct PartitionWriter {
    dir: PathBuf,
    log: RefCell<Option<Rc<PartitionLog>>>,
    queue: RefCell<Vec<Pending>>,
    ready: Event,
    closed: Cell<bool>,
}

impl PartitionWriter {
    fn new(dir: PathBuf, log: Option<Rc<PartitionLog>>) -> Rc<PartitionWriter> {
        Rc::new(PartitionWriter { dir, log: RefCell::new(log), queue: RefCell::new(Vec::new()), ready: Event::new(), closed: Cell::new(false) })
    }

    /// Queues `records` (the queue order is the log order); the receiver gets the outcome once
    /// they are stored and applied.
    pub fn submit(&self, records: Vec<LogRecord>) -> oneshot::Receiver<Result<(), String>> {
        let (done, rx) = oneshot::channel();
        if self.closed.get() {
            let _ = done.send(Err("the group coordinator is shutting down".into()));
            return rx;
        }
        self.queue.borrow_mut().push(Pending { records, done });
        self.ready.notify(1);
        rx
    }

    async fn open(&self, config: &LogConfig) -> Result<Rc<PartitionLog>, String> {
        if let Some(log) = self.log.borrow().clone() {
            return Ok(log);
        }
        let log = PartitionLog::open(self.dir.clone(), config.clone(), now_ms()).await.map_err(|e| e.to_string())?;
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
async fn writer_loop(writer: Rc<PartitionWriter>, coordinator: Weak<GroupCoordinator>, config: LogConfig, flush: bool) {
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
        let result = store(&writer, &config, flush, &batch).await;
        let Some(coordinator) = coordinator.upgrade() else { return };
        if result.is_ok() {
            for p in &batch {
                coordinator.apply_stored(&p.records);
            }
        }
        for p in batch {
            let _ = p.done.send(result.clone());
        }
    }
}

async fn store(writer: &PartitionWriter, config: &LogConfig, flush: bool, batch: &[Pending]) -> Result<(), String> {
    let now = now_ms();
    let encoded: Vec<(Vec<u8>, Option<Vec<u8>>)> =
        batch.iter().flat_map(|p| p.records.iter()).map(|r| (r.encode_key(), r.encode_value())).collect();
    if encoded.is_empty() {
        return Ok(());
    }
    let parts: Vec<BatchRecord<'_>> =
        encoded.iter().map(|(k, v)| (Some(k.as_slice()), v.as_deref(), now)).collect();
    let bytes = encode_batch(&parts);
    let log = writer.open(config).await?;
    log.append(&bytes, LeaderEpoch(0), now).await.map_err(|e| {
        tracing::error!("appending to {}: {e}", writer.dir.display());
        e.to_string()
    })?;
    if flush {
        log.flush().await.map_err(|e| {
            tracing::error!("flushing {}: {e}", writer.dir.display());
            e.to_string()
        })?;
    }
    Ok(())
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
}

impl OffsetsStore {
    /// `delete_retention_ms` is how long the compacted log keeps a tombstone (a deleted offset
    /// or group).
    pub fn new(data_dir: &Path, partitions: u32, segment_bytes: u64, delete_retention_ms: u64, flush: bool) -> OffsetsStore {
        // Keyed records, the newest per key wins: the log is compacted, never deleted by age.
        let config = LogConfig {
            segment_bytes,
            cleanup: CleanupPolicy { delete: false, compact: true },
            delete_retention_ms,
            ..LogConfig::default()
        };
        OffsetsStore { dir: data_dir.join(GROUPS_DIR), partitions, config, flush, writers: RefCell::new(HashMap::new()), started: RefCell::new(HashSet::new()) }
    }

    fn partition_dir(&self, p: u32) -> PathBuf {
        self.dir.join(format!("offsets-{p}"))
    }

    /// Opens and reads back every existing partition in `owned`, oldest record first.
    pub async fn replay(&self, owned: &[u32], mut apply: impl FnMut(LogRecord)) -> Result<usize, String> {
        let mut count = 0;
        for &p in owned {
            let dir = self.partition_dir(p);
            if !dir.exists() {
                continue;
            }
            let log = PartitionLog::open(dir.clone(), self.config.clone(), now_ms()).await.map_err(|e| format!("opening {}: {e}", dir.display()))?;
            let mut offset = log.log_start_offset().0;
            while offset < log.high_watermark().0 {
                let Some(slice) = log.read(Offset(offset), REPLAY_READ_BYTES, true).await.map_err(|e| format!("reading {}: {e}", dir.display()))? else {
                    break;
                };
                // Startup only: a blocking read before the shard serves anything.
                let bytes = slice.read_blocking().map_err(|e| format!("reading {}: {e}", dir.display()))?;
                let mut pos = 0;
                while pos + BATCH_HEADER_BYTES <= bytes.len() {
                    let len = i32::from_be_bytes(bytes[pos + 8..pos + 12].try_into().expect("4 bytes")) as usize + 12;
                    let end = (pos + len).min(bytes.len());
                    let batch = &bytes[pos..end];
                    let records = decode_records(batch).map_err(|e| format!("{} at byte {pos}: {e}", dir.display()))?;
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
                            None => tracing::warn!("{}: skipping unreadable record at offset {}", dir.display(), r.offset),
                        }
                    }
                    pos = end;
                }
            }
            self.writers.borrow_mut().insert(p, PartitionWriter::new(dir, Some(log)));
        }
        Ok(count)
    }

    /// The open partition logs (for the shard's cleaner).
    pub fn logs(&self) -> Vec<Rc<PartitionLog>> {
        self.writers.borrow().values().filter_map(|w| w.log.borrow().clone()).collect()
    }

    /// The writer of `group`'s partition (created, with its task, on first use).
    pub fn writer(&self, group: &str, coordinator: &Rc<GroupCoordinator>) -> Rc<PartitionWriter> {
        let p = partition_of(group, self.partitions);
        let mut writers = self.writers.borrow_mut();
        let writer = writers.entry(p).or_insert_with(|| PartitionWriter::new(self.partition_dir(p), None)).clone();
        drop(writers);
        if self.started.borrow_mut().insert(p) {
            glommio::spawn_local(writer_loop(writer.clone(), Rc::downgrade(coordinator), self.config.clone(), self.flush)).detach();
        }
        writer
    }

    /// Queues `records`, all of one group, to be stored and then applied.
    pub fn submit(&self, coordinator: &Rc<GroupCoordinator>, records: Vec<LogRecord>) -> oneshot::Receiver<Result<(), String>> {
        let Some(first) = records.first() else {
            let (tx, rx) = oneshot::channel();
            let _ = tx.send(Ok(()));
            return rx;
        };
        self.writer(first.group(), coordinator).submit(records)
    }

    /// Stores `records`, all of one group, and applies them.
    pub async fn write(&self, coordinator: &Rc<GroupCoordinator>, records: Vec<LogRecord>) -> Result<(), String> {
        self.submit(coordinator, records).await.unwrap_or_else(|_| Err("the offsets log writer stopped".into()))
    }

    pub async fn close(&self) {
        let writers: Vec<Rc<PartitionWriter>> = self.writers.borrow().values().cloned().collect();
        for w in writers {
            w.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let offset = LogRecord::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 3,
            value: Some(Committed { offset: 42, leader_epoch: 7, metadata: "héllo".into(), commit_ms: 1 }),
        };
        let back = LogRecord::decode(&offset.encode_key(), offset.encode_value().as_deref()).unwrap();
        assert!(matches!(back, LogRecord::Offset { ref group, partition: 3, value: Some(ref c), .. } if group == "g" && c.offset == 42 && c.metadata == "héllo" && c.leader_epoch == 7));
        let tomb = LogRecord::Offset { group: "g".into(), topic: "t".into(), partition: 3, value: None };
        assert!(matches!(LogRecord::decode(&tomb.encode_key(), None), Some(LogRecord::Offset { value: None, .. })));

        let record = GroupRecord {
            protocol_type: Some("consumer".into()),
            protocol: Some("range".into()),
            generation: 5,
            leader: Some("m1".into()),
            members: vec![MemberRecord { member_id: "m1".into(), assignment: vec![1, 2, 3], ..Default::default() }],
        };
        let group = LogRecord::Group { group: "g".into(), value: Some(record.clone()) };
        match LogRecord::decode(&group.encode_key(), group.encode_value().as_deref()) {
            Some(LogRecord::Group { value: Some(v), .. }) => assert_eq!(v, record),
            other => panic!("{other:?}"),
        }
        assert!(LogRecord::decode(&[9, 9], None).is_none());
        assert!(LogRecord::decode(&offset.encode_key(), Some(&[0, 1, 2])).is_none());
    }

    #[test]
    fn partition_count_is_recorded_once() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_partition_count(dir.path(), 7).unwrap(), 7);
        assert_eq!(load_partition_count(dir.path(), 50).unwrap(), 7);
    }
}
