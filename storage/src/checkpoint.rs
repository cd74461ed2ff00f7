//! Small checksummed files of a partition directory: `log-start-offset`, `cleaner-offset`,
//! `clean-swap`, `clean-shutdown` and `recovery-point`.
//!
//! Each is a fixed-size big-endian payload followed by the CRC-32C of the payload, replaced
//! atomically (tmp + fdatasync + rename + directory fsync).

use std::path::Path;

use crate::error::StorageError;
use crate::file_io::{io_err, read_at, remove_file, sync_dir, write_atomic};

/// File holding the log start offset.
pub(crate) const LOG_START_OFFSET_FILE: &str = "log-start-offset";
/// File holding the cleaner's first dirty offset (compacted logs).
pub(crate) const CLEANER_OFFSET_FILE: &str = "cleaner-offset";
/// File that commits a compaction swap: present from the moment the cleaned segment is durable
/// until the old segments it replaces are gone.
pub(crate) const CLEAN_SWAP_FILE: &str = "clean-swap";
/// File written by a clean close.
pub(crate) const CLEAN_SHUTDOWN_FILE: &str = "clean-shutdown";

/// File holding the recovery point: how much of the active segment is known durable.
pub(crate) const RECOVERY_POINT_FILE: &str = "recovery-point";

/// Payload bytes of `recovery-point`: offset i64, segment base i64, position u64, offset index
/// entries u32, time index entries u32.
const RECOVERY_POINT_PAYLOAD_BYTES: usize = 32;
/// Payload bytes of `log-start-offset`: offset i64.
const LOG_START_PAYLOAD_BYTES: usize = 8;
/// Payload bytes of `clean-swap`: replaced range [base, end) as two i64.
const SWAP_PAYLOAD_BYTES: usize = 16;
/// Payload bytes of `clean-shutdown`: log end offset i64, active base i64, active size u64.
const CLEAN_PAYLOAD_BYTES: usize = 24;
/// Trailing CRC-32C.
const CRC_BYTES: usize = 4;

/// What a clean close recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CleanShutdown {
    /// Log end offset at close.
    pub log_end_offset: i64,
    /// Base offset of the active segment at close.
    pub active_base: i64,
    /// Size in bytes of the active segment's `.log` at close.
    pub active_size: u64,
}

/// Kafka's recovery point: everything below `offset` is durable, namely the first `position`
/// bytes of the segment based at `segment_base` (and all segments before it) and the first
/// `offset_entries` / `time_entries` entries of its index files. An unclean open trusts that
/// much and validates everything after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecoveryPoint {
    /// Offset after the last durable batch.
    pub offset: i64,
    /// Base offset of the segment `position` is in.
    pub segment_base: i64,
    /// Durable bytes of that segment's `.log`.
    pub position: u64,
    /// Durable entries of its `.index`.
    pub offset_entries: u32,
    /// Durable entries of its `.timeindex`.
    pub time_entries: u32,
}

fn seal(payload: &[u8]) -> Vec<u8> {
    let mut out = payload.to_vec();
    out.extend_from_slice(&crc32c::crc32c(payload).to_be_bytes());
    out
}

/// Reads a checksummed file; Ok(None) if missing, or if its length or CRC is wrong (logged).
async fn read_sealed(path: &Path, payload_bytes: usize) -> Result<Option<Vec<u8>>, StorageError> {
    let file = match glommio::io::BufferedFile::open(path).await {
        Ok(file) => file,
        Err(e) => {
            let err = io_err("open", path, e);
            if let StorageError::Io { source, .. } = &err {
                if source.kind() == std::io::ErrorKind::NotFound {
                    return Ok(None);
                }
            }
            return Err(err);
        }
    };
    let data = read_at(&file, path, 0, payload_bytes + CRC_BYTES + 1).await;
    let _ = file.close().await;
    let data = data?;
    if data.len() != payload_bytes + CRC_BYTES {
        tracing::warn!(path = %path.display(), len = data.len(), "ignoring checkpoint file of wrong length");
        return Ok(None);
    }
    let (payload, crc) = data.split_at(payload_bytes);
    let stored = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32c::crc32c(payload) != stored {
        tracing::warn!(path = %path.display(), "ignoring checkpoint file with bad crc");
        return Ok(None);
    }
    Ok(Some(payload.to_vec()))
}

fn be_i64(bytes: &[u8]) -> i64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[..8]);
    i64::from_be_bytes(raw)
}

/// Reads `recovery-point`, if present and intact.
pub(crate) async fn read_recovery_point(dir: &Path) -> Result<Option<RecoveryPoint>, StorageError> {
    let payload = read_sealed(&dir.join(RECOVERY_POINT_FILE), RECOVERY_POINT_PAYLOAD_BYTES).await?;
    Ok(payload.map(|p| RecoveryPoint {
        offset: be_i64(&p[0..8]),
        segment_base: be_i64(&p[8..16]),
        position: be_i64(&p[16..24]) as u64,
        offset_entries: u32::from_be_bytes([p[24], p[25], p[26], p[27]]),
        time_entries: u32::from_be_bytes([p[28], p[29], p[30], p[31]]),
    }))
}

/// Atomically writes `recovery-point`. Everything it names must be fdatasynced already.
pub(crate) async fn write_recovery_point(
    dir: &Path,
    point: RecoveryPoint,
) -> Result<(), StorageError> {
    let mut payload = Vec::with_capacity(RECOVERY_POINT_PAYLOAD_BYTES);
    payload.extend_from_slice(&point.offset.to_be_bytes());
    payload.extend_from_slice(&point.segment_base.to_be_bytes());
    payload.extend_from_slice(&point.position.to_be_bytes());
    payload.extend_from_slice(&point.offset_entries.to_be_bytes());
    payload.extend_from_slice(&point.time_entries.to_be_bytes());
    write_atomic(dir, RECOVERY_POINT_FILE, &seal(&payload)).await
}

/// Reads `log-start-offset`, if present and intact.
pub(crate) async fn read_log_start(dir: &Path) -> Result<Option<i64>, StorageError> {
    let payload = read_sealed(&dir.join(LOG_START_OFFSET_FILE), LOG_START_PAYLOAD_BYTES).await?;
    Ok(payload.map(|p| be_i64(&p)))
}

/// Atomically writes `log-start-offset`.
pub(crate) async fn write_log_start(dir: &Path, offset: i64) -> Result<(), StorageError> {
    write_atomic(dir, LOG_START_OFFSET_FILE, &seal(&offset.to_be_bytes())).await
}

/// Reads `cleaner-offset`, if present and intact.
pub(crate) async fn read_cleaner_offset(dir: &Path) -> Result<Option<i64>, StorageError> {
    let payload = read_sealed(&dir.join(CLEANER_OFFSET_FILE), LOG_START_PAYLOAD_BYTES).await?;
    Ok(payload.map(|p| be_i64(&p)))
}

/// Atomically writes `cleaner-offset`.
pub(crate) async fn write_cleaner_offset(dir: &Path, offset: i64) -> Result<(), StorageError> {
    write_atomic(dir, CLEANER_OFFSET_FILE, &seal(&offset.to_be_bytes())).await
}

/// Reads `clean-swap`: the range [base, end) of segments a cleaned segment replaces.
pub(crate) async fn read_clean_swap(dir: &Path) -> Result<Option<(i64, i64)>, StorageError> {
    let payload = read_sealed(&dir.join(CLEAN_SWAP_FILE), SWAP_PAYLOAD_BYTES).await?;
    Ok(payload.map(|p| (be_i64(&p[0..8]), be_i64(&p[8..16]))))
}

/// Atomically writes `clean-swap` (the commit point of a compaction swap).
pub(crate) async fn write_clean_swap(dir: &Path, base: i64, end: i64) -> Result<(), StorageError> {
    let mut payload = Vec::with_capacity(SWAP_PAYLOAD_BYTES);
    payload.extend_from_slice(&base.to_be_bytes());
    payload.extend_from_slice(&end.to_be_bytes());
    write_atomic(dir, CLEAN_SWAP_FILE, &seal(&payload)).await
}

/// Removes `clean-swap` durably once the swap is complete.
pub(crate) async fn remove_clean_swap(dir: &Path) -> Result<(), StorageError> {
    remove_file(&dir.join(CLEAN_SWAP_FILE)).await?;
    sync_dir(dir).await
}

/// Reads `clean-shutdown`, if present and intact.
pub(crate) async fn read_clean_shutdown(dir: &Path) -> Result<Option<CleanShutdown>, StorageError> {
    let payload = read_sealed(&dir.join(CLEAN_SHUTDOWN_FILE), CLEAN_PAYLOAD_BYTES).await?;
    Ok(payload.map(|p| CleanShutdown {
        log_end_offset: be_i64(&p[0..8]),
        active_base: be_i64(&p[8..16]),
        active_size: be_i64(&p[16..24]) as u64,
    }))
}

/// Atomically writes `clean-shutdown`.
pub(crate) async fn write_clean_shutdown(
    dir: &Path,
    marker: CleanShutdown,
) -> Result<(), StorageError> {
    let mut payload = Vec::with_capacity(CLEAN_PAYLOAD_BYTES);
    payload.extend_from_slice(&marker.log_end_offset.to_be_bytes());
    payload.extend_from_slice(&marker.active_base.to_be_bytes());
    payload.extend_from_slice(&marker.active_size.to_be_bytes());
    write_atomic(dir, CLEAN_SHUTDOWN_FILE, &seal(&payload)).await
}

/// Removes `clean-shutdown` durably (so a crash later cannot trust a stale marker).
pub(crate) async fn remove_clean_shutdown(dir: &Path) -> Result<(), StorageError> {
    remove_file(&dir.join(CLEAN_SHUTDOWN_FILE)).await?;
    sync_dir(dir).await
}
