//! Durable metadata files in `<data>/__strom_meta/`: the topics snapshot (`topics.snapshot`) and
//! the topics being deleted (`deleting`) here, the producer id block (`producer-ids`) in
//! [`super::producer_ids`].
//!
//! Every file has the layout: magic (8 bytes), format version (u32 BE), payload length (u64 BE),
//! CRC-32C of the payload (u32 BE), payload. The snapshot's magic is `STRMMETA` and its payload
//! an rkyv archive of `MetadataSnapshot`. Files are written to a temporary file,
//! fdatasync'ed, renamed over the old one, then the directory is fsync'ed, so a crash leaves
//! either the old or the new content, never a mix.

use std::path::{Path, PathBuf};

use super::model::MetadataSnapshot;

const MAGIC: &[u8; 8] = b"STRMMETA";
const FORMAT_VERSION: u32 = 1;
const HEADER_BYTES: usize = 8 + 4 + 8 + 4;
pub const META_DIR: &str = "__strom_meta";
const FILE: &str = "topics.snapshot";
/// Topics whose deletion is decided but whose partition directories may still exist. Written
/// before the snapshot that drops them, so that at startup a partition directory the snapshot
/// does not list is removed only if its topic is named here; any other unlisted directory means
/// metadata was lost, and the broker refuses to start rather than delete data.
const DELETING_FILE: &str = "deleting";
const DELETING_MAGIC: &[u8; 8] = b"STRMDELS";
const DELETING_FORMAT_VERSION: u32 = 1;

/// Why a metadata file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetaStoreError {
    /// A file system operation failed.
    #[error("metadata {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A metadata file does not pass its checks (magic, version, length, CRC).
    #[error("metadata file {path} is corrupt: {why}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Which check failed.
        why: String,
    },
}

pub fn meta_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(META_DIR)
}

/// Frames a payload: `magic`, format `version` (u32 BE), payload length (u64 BE), CRC-32C of
/// the payload (u32 BE), payload. Shared by every file in the metadata directory.
pub(crate) fn frame(magic: &[u8; 8], version: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(magic);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Checks a file written by [`frame`] and returns its payload.
pub(crate) fn unframe<'a>(
    path: &Path,
    magic: &[u8; 8],
    expected_version: u32,
    bytes: &'a [u8],
) -> Result<&'a [u8], MetaStoreError> {
    let corrupt = |why: String| MetaStoreError::Corrupt {
        path: path.to_path_buf(),
        why,
    };
    if bytes.len() < HEADER_BYTES || &bytes[..8] != magic {
        return Err(corrupt("bad magic or short header".into()));
    }
    let version = u32::from_be_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != expected_version {
        return Err(corrupt(format!("unknown format version {version}")));
    }
    let len = u64::from_be_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let crc = u32::from_be_bytes(bytes[20..24].try_into().expect("4 bytes"));
    let payload = usize::try_from(len)
        .ok()
        .and_then(|len| bytes.get(HEADER_BYTES..HEADER_BYTES.checked_add(len)?))
        .ok_or_else(|| corrupt("truncated".into()))?;
    if crc32c::crc32c(payload) != crc {
        return Err(corrupt("checksum mismatch".into()));
    }
    Ok(payload)
}

fn encode(snap: &MetadataSnapshot) -> Vec<u8> {
    // The snapshot holds only strings, maps and integers: serialization cannot fail.
    let payload =
        rkyv::to_bytes::<rkyv::rancor::Error>(snap).expect("metadata snapshot serializes");
    frame(MAGIC, FORMAT_VERSION, &payload)
}

fn decode(path: &Path, bytes: &[u8]) -> Result<MetadataSnapshot, MetaStoreError> {
    let payload = unframe(path, MAGIC, FORMAT_VERSION, bytes)?;
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    rkyv::from_bytes::<MetadataSnapshot, rkyv::rancor::Error>(&aligned).map_err(|e| {
        MetaStoreError::Corrupt {
            path: path.to_path_buf(),
            why: e.to_string(),
        }
    })
}

/// Reads `<data>/__strom_meta/<file>` at startup (before the shards run, so plain blocking I/O
/// is fine), creating the directory if needed. `None` if the file does not exist.
pub(crate) fn read_meta_file(
    data_dir: &Path,
    file: &str,
) -> Result<Option<(PathBuf, Vec<u8>)>, MetaStoreError> {
    let dir = meta_dir(data_dir);
    let path = dir.join(file);
    crate::data_dir::create_dir_durable(&dir).map_err(|source| MetaStoreError::Io {
        op: "create",
        path: dir.clone(),
        source,
    })?;
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some((path, bytes))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(MetaStoreError::Io {
            op: "read",
            path,
            source,
        }),
    }
}

/// Reads the snapshot at startup. A missing file means a new, empty cluster.
pub fn load(data_dir: &Path) -> Result<MetadataSnapshot, MetaStoreError> {
    match read_meta_file(data_dir, FILE)? {
        Some((path, bytes)) => decode(&path, &bytes),
        None => Ok(MetadataSnapshot::default()),
    }
}

/// Reads the names of the topics being deleted at startup (empty if the file does not exist).
pub fn load_deleting(data_dir: &Path) -> Result<Vec<String>, MetaStoreError> {
    let Some((path, bytes)) = read_meta_file(data_dir, DELETING_FILE)? else {
        return Ok(Vec::new());
    };
    let payload = unframe(&path, DELETING_MAGIC, DELETING_FORMAT_VERSION, &bytes)?;
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    rkyv::from_bytes::<Vec<String>, rkyv::rancor::Error>(&aligned).map_err(|e| {
        MetaStoreError::Corrupt {
            path,
            why: e.to_string(),
        }
    })
}

fn encode_deleting(topics: &[String]) -> Vec<u8> {
    // A list of strings: serialization cannot fail.
    let payload =
        rkyv::to_bytes::<rkyv::rancor::Error>(&topics.to_vec()).expect("topic names serialize");
    frame(DELETING_MAGIC, DELETING_FORMAT_VERSION, &payload)
}

/// Durably records the topics being deleted (controller shard, through io_uring).
pub async fn save_deleting(data_dir: &Path, topics: &[String]) -> Result<(), MetaStoreError> {
    write_meta_file(data_dir, DELETING_FILE, encode_deleting(topics)).await
}

/// Durably records the topics being deleted at startup, before the shards run.
pub fn save_deleting_blocking(data_dir: &Path, topics: &[String]) -> Result<(), MetaStoreError> {
    let dir = meta_dir(data_dir);
    crate::data_dir::replace_file_durable(&dir, DELETING_FILE, &encode_deleting(topics)).map_err(
        |source| MetaStoreError::Io {
            op: "replace",
            path: dir.join(DELETING_FILE),
            source,
        },
    )
}

/// Durably replaces the snapshot. Runs on the controller shard, through io_uring.
pub async fn save(data_dir: &Path, snap: &MetadataSnapshot) -> Result<(), MetaStoreError> {
    write_meta_file(data_dir, FILE, encode(snap)).await
}

/// Durably replaces `<data>/__strom_meta/<file>` with `bytes`: written to `<file>.tmp`,
/// fdatasync'ed, renamed over the old file, then the directory is fsync'ed. A crash leaves
/// either the old or the new content, never a mix.
pub(crate) async fn write_meta_file(
    data_dir: &Path,
    file: &str,
    bytes: Vec<u8>,
) -> Result<(), MetaStoreError> {
    let dir = meta_dir(data_dir);
    strom_storage::write_atomic(&dir, file, &bytes)
        .await
        .map_err(|e| MetaStoreError::Io {
            op: "replace",
            path: dir.join(file),
            source: std::io::Error::other(e),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::model::TopicRecord;

    #[test]
    fn snapshot_round_trips_and_detects_corruption() {
        let mut snap = MetadataSnapshot {
            version: 7,
            topics: vec![],
        };
        snap.topics.push(TopicRecord {
            name: "orders".into(),
            id: [9; 16],
            partition_shards: vec![0, 1, 0],
            partition_epochs: vec![0, 0, 3],
            overrides: [("retention.ms".to_string(), "1000".to_string())]
                .into_iter()
                .collect(),
        });
        let p = Path::new("x");
        let mut bytes = encode(&snap);
        assert_eq!(decode(p, &bytes).unwrap(), snap);
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        assert!(matches!(
            decode(p, &bytes),
            Err(MetaStoreError::Corrupt { .. })
        ));
        assert!(decode(p, &bytes[..10]).is_err());
    }

    #[test]
    fn save_then_load() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_path_buf();
        std::fs::create_dir_all(meta_dir(&data)).unwrap();
        let snap = MetadataSnapshot {
            version: 3,
            topics: vec![],
        };
        let d2 = data.clone();
        let s2 = snap.clone();
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move { save(&d2, &s2).await.unwrap() })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(load(&data).unwrap(), snap);
    }

    #[test]
    fn deleting_list_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_path_buf();
        assert!(load_deleting(&data).unwrap().is_empty());
        let topics = vec!["orders".to_string(), "a.b-c".to_string()];
        save_deleting_blocking(&data, &topics).unwrap();
        assert_eq!(load_deleting(&data).unwrap(), topics);
        let (d2, t2) = (data.clone(), vec!["x".to_string()]);
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move { save_deleting(&d2, &t2).await.unwrap() })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(load_deleting(&data).unwrap(), vec!["x".to_string()]);
        let path = meta_dir(&data).join(DELETING_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        assert!(matches!(
            load_deleting(&data),
            Err(MetaStoreError::Corrupt { .. })
        ));
    }
}
