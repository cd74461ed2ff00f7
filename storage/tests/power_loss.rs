//! Durability on the disk seam (`SimDisk`, which keeps what was written apart from what was
//! fdatasynced):
//! - `flush` (what acks=all waits for) returns only after the fdatasync that covers the batch;
//! - a model-based test: random appends, flushes, recovery points, reads, clean restarts,
//!   failed fdatasyncs and power losses at random points (dropping, keeping a prefix of, or
//!   scrambling the unsynced writes of the `.log`, the index files, the producer snapshots and
//!   the checkpoint files). After each power loss every flushed batch is served, and everything
//!   served is exactly a prefix of what was appended: never a corrupt or foreign batch;
//!   Follower truncations (`truncate_to`) are among the operations: what they cut never comes
//!   back, and what they keep is durable;
//! - a failed fdatasync fails every waiting flush and makes the log refuse writes;
//! - a hole in the middle of the unsynced part of a segment (later batches and index entries
//!   survived it) is cut at the hole; damage to durable bytes that the recovery scan reads is
//!   reported, not cut.
//!
//! Reproduce a failure of the model test with `STROM_POWERLOSS_SEED=<seed>`.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strom_storage::testing::{
    build_batch_with, run_local, segment_logs, BatchOptions, PowerLoss, SimDisk,
};
use strom_storage::{
    assign_offset_and_epoch, LeaderEpoch, LogConfig, Offset, PartitionLog, StorageError,
};

/// Operations per seed of the model test.
const OPS_PER_SEED: usize = 250;
/// Seeds the model test runs at least (more while its time budget lasts).
const SEEDS_MIN: u64 = 12;
/// Wall-clock budget of the model test.
const TIME_BUDGET: Duration = Duration::from_secs(10);

fn config(reads_durable_only: bool) -> LogConfig {
    LogConfig {
        segment_bytes: 6 * 1024,
        index_interval_bytes: 256,
        reads_durable_only,
        ..LogConfig::default()
    }
}

/// A batch of `records` records whose values carry `tag`; idempotent if `producer` is
/// (id, first sequence).
fn batch(tag: u64, records: usize, value_bytes: usize, producer: Option<(i64, i32)>) -> Vec<u8> {
    let values: Vec<Vec<u8>> = (0..records)
        .map(|i| {
            let mut v = format!("{tag}-{i}-").into_bytes();
            v.resize(value_bytes.max(v.len()), b'x');
            v
        })
        .collect();
    let records: Vec<_> = values
        .iter()
        .enumerate()
        .map(|(i, v)| (None, Some(v.as_slice()), 1_000 + tag as i64 + i as i64))
        .collect();
    let mut options = BatchOptions::default();
    if let Some((id, seq)) = producer {
        options.producer_id = id;
        options.producer_epoch = 0;
        options.base_sequence = seq;
    }
    build_batch_with(&options, &records)
}

/// The batch as the log stores it at `base`.
fn stamped(bytes: &[u8], base: i64) -> Vec<u8> {
    let mut out = bytes.to_vec();
    assign_offset_and_epoch(&mut out, base, 0);
    out
}

fn last_offset_delta(bytes: &[u8]) -> i64 {
    i64::from(i32::from_be_bytes([
        bytes[23], bytes[24], bytes[25], bytes[26],
    ]))
}

/// (base offset, bytes) of the batches in a `.log` image.
fn parse_batches(image: &[u8]) -> Vec<(i64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + 12 <= image.len() {
        let base = i64::from_be_bytes(image[at..at + 8].try_into().expect("8 bytes"));
        let len = u32::from_be_bytes(image[at + 8..at + 12].try_into().expect("4 bytes")) as usize;
        if len == 0 || at + 12 + len > image.len() {
            break;
        }
        out.push((base, image[at..at + 12 + len].to_vec()));
        at += 12 + len;
    }
    out
}

/// Every batch in the durable images of the partition's segments.
fn durable_batches(sim: &SimDisk, dir: &Path) -> Vec<(i64, Vec<u8>)> {
    segment_logs(dir)
        .iter()
        .flat_map(|log| parse_batches(&sim.durable_bytes(log).unwrap_or_default()))
        .collect()
}

#[test]
fn flush_returns_only_after_the_fdatasync_that_covers_the_batch() {
    run_local(|| async {
        let tmp = tempfile::tempdir().expect("tempdir");
        let sim = SimDisk::install(tmp.path());
        let dir = tmp.path().join("t-0");
        let log = PartitionLog::open(dir.clone(), config(true), 0)
            .await
            .expect("open");

        // One batch: written, not durable, not readable; after flush all three.
        let first = batch(0, 3, 20, None);
        let info = log.append(&first, LeaderEpoch(0), 0).await.expect("append");
        assert!(
            durable_batches(&sim, &dir).is_empty(),
            "durable before any fdatasync"
        );
        assert_eq!(
            log.high_watermark(),
            Offset(0),
            "readable before it is durable"
        );
        assert_eq!(log.durable_end_offset(), Offset(0));
        let watch = log.listen_durable();
        log.flush().await.expect("flush");
        assert!(
            futures_lite::future::poll_once(watch).await.is_some(),
            "the durable end moved without waking its watchers"
        );
        assert_eq!(durable_batches(&sim, &dir), vec![(0, stamped(&first, 0))]);
        assert_eq!(log.high_watermark(), Offset(info.last_offset.0 + 1));
        assert_eq!(log.durable_end_offset(), log.high_watermark());

        // Concurrent producers sharing fdatasyncs (and rolls): when a flush returns, its own
        // batch is in the durable image.
        let mut tasks = Vec::new();
        for t in 1..=24u64 {
            let (log, dir, sim) = (Rc::clone(&log), dir.clone(), Rc::clone(&sim));
            tasks.push(glommio::spawn_local(async move {
                let bytes = batch(t, 1 + (t as usize % 4), 300, None);
                let info = log.append(&bytes, LeaderEpoch(0), 0).await.expect("append");
                log.flush().await.expect("flush");
                let want = (info.base_offset.0, stamped(&bytes, info.base_offset.0));
                assert!(
                    durable_batches(&sim, &dir).contains(&want),
                    "flush of the batch at {} returned before it was durable",
                    info.base_offset
                );
            }));
        }
        for task in tasks {
            task.await;
        }
        assert!(log.segment_count() > 1, "the test should cover rolls");
        log.close().await.expect("close");
        SimDisk::uninstall();
    });
}

/// One appended batch as the reference sees it.
#[derive(Clone, Debug)]
struct Appended {
    base: i64,
    last: i64,
    /// The bytes handed to append (for retries).
    original: Vec<u8>,
    /// The bytes the log stores.
    stored: Vec<u8>,
    producer: Option<(i64, i32)>,
}

/// The reference: every batch appended (in offset order) and how many of them were flushed.
#[derive(Default)]
struct Model {
    appended: Vec<Appended>,
    acked: usize,
}

impl Model {
    fn log_end(&self) -> i64 {
        self.appended.last().map_or(0, |b| b.last + 1)
    }

    fn next_sequence(&self, producer: i64) -> i32 {
        self.appended
            .iter()
            .rev()
            .find_map(|b| b.producer.filter(|p| p.0 == producer))
            .map_or(0, |(_, seq)| seq + 1)
    }
}

/// Reads the whole log back and checks it against the model: a prefix of what was appended,
/// holding at least every acknowledged batch. Then the model keeps only what survived.
async fn check_after_restart(log: &PartitionLog, model: &mut Model, context: &str) {
    let end = log.log_end_offset().0;
    assert_eq!(
        log.high_watermark().0,
        end,
        "{context}: high watermark after open"
    );
    assert_eq!(
        log.durable_end_offset().0,
        end,
        "{context}: durable end after open"
    );
    let mut offset = log.log_start_offset().0;
    let mut survived = 0usize;
    while offset < end {
        let slice = log
            .read(Offset(offset), 1, true)
            .await
            .unwrap_or_else(|e| panic!("{context}: read {offset}: {e}"))
            .unwrap_or_else(|| panic!("{context}: nothing at {offset} below {end}"));
        let bytes = slice.read_blocking().expect("pread");
        let expected = model
            .appended
            .get(survived)
            .unwrap_or_else(|| panic!("{context}: a batch at {offset} that was never appended"));
        assert_eq!(slice.first_offset.0, expected.base, "{context}: batch base");
        assert!(
            bytes == expected.stored,
            "{context}: the batch at {offset} differs from the appended one"
        );
        offset = expected.last + 1;
        survived += 1;
    }
    assert!(
        survived >= model.acked,
        "{context}: {} acknowledged batches, {survived} survived (lost: first at offset {})",
        model.acked,
        model.appended[survived].base
    );
    model.appended.truncate(survived);
    // Recovery made what it kept durable.
    model.acked = survived;
}

/// Retrying the last surviving batch of each idempotent producer is recognized as a duplicate:
/// the producer state (snapshots plus replay) survived with the log.
async fn check_producers(log: &PartitionLog, model: &Model, context: &str) {
    for producer in [7_001i64, 7_002] {
        let Some(last) = model
            .appended
            .iter()
            .rev()
            .find(|b| b.producer.is_some_and(|p| p.0 == producer))
        else {
            continue;
        };
        let info = log
            .append(&last.original, LeaderEpoch(0), 0)
            .await
            .unwrap_or_else(|e| panic!("{context}: retry of producer {producer}: {e}"));
        assert!(
            info.duplicate,
            "{context}: retry of producer {producer} appended again"
        );
        assert_eq!(info.base_offset.0, last.base, "{context}: retry offsets");
    }
}

/// What one seed of the model test did.
#[derive(Default, Debug)]
struct SeedStats {
    power_losses: u64,
    batches_acked_at_loss: u64,
    batches_lost_unacked: u64,
    writes_damaged: u64,
    failed_syncs: u64,
    truncations: u64,
}

async fn run_seed(seed: u64, root: &Path) -> SeedStats {
    let mut stats = SeedStats::default();
    let mut rng = StdRng::seed_from_u64(seed);
    let dir: PathBuf = root.join(format!("s{seed}-0"));
    let durable_reads = rng.gen_bool(0.5);
    let config = config(durable_reads);
    let sim = SimDisk::install(root);
    let mut log = PartitionLog::open(dir.clone(), config.clone(), 0)
        .await
        .expect("open");
    let mut model = Model::default();
    let mut tag = seed * 1_000_000;
    let mut power_losses = 0;
    for op in 0..OPS_PER_SEED {
        let context = format!("seed {seed} op {op}");
        match rng.gen_range(0..106) {
            0..=44 => {
                tag += 1;
                let producer = match rng.gen_range(0..3) {
                    0 => Some(7_001),
                    1 => Some(7_002),
                    _ => None,
                }
                .map(|id| (id, model.next_sequence(id)));
                let records = rng.gen_range(1..6);
                let bytes = batch(tag, records, rng.gen_range(10..400), producer);
                let info = log
                    .append(&bytes, LeaderEpoch(0), 0)
                    .await
                    .unwrap_or_else(|e| panic!("{context}: append: {e}"));
                assert!(!info.duplicate, "{context}: a new batch counted as a retry");
                assert_eq!(
                    info.base_offset.0,
                    model.log_end(),
                    "{context}: base offset"
                );
                model.appended.push(Appended {
                    base: info.base_offset.0,
                    last: info.base_offset.0 + last_offset_delta(&bytes),
                    stored: stamped(&bytes, info.base_offset.0),
                    original: bytes,
                    producer: producer.map(|(id, first)| (id, first + records as i32 - 1)),
                });
            }
            45..=59 => {
                log.flush()
                    .await
                    .unwrap_or_else(|e| panic!("{context}: flush: {e}"));
                model.acked = model.appended.len();
            }
            60..=64 => {
                log.write_recovery_point()
                    .await
                    .unwrap_or_else(|e| panic!("{context}: recovery point: {e}"));
                model.acked = model.appended.len();
            }
            65..=74 => {
                let hw = log.high_watermark().0;
                if durable_reads {
                    assert!(
                        hw <= log.durable_end_offset().0,
                        "{context}: readable before durable"
                    );
                } else {
                    assert_eq!(hw, model.log_end(), "{context}: high watermark");
                }
                let readable: Vec<&Appended> =
                    model.appended.iter().filter(|b| b.last < hw).collect();
                if let Some(b) = readable.get(rng.gen_range(0..readable.len().max(1))) {
                    let at = rng.gen_range(b.base..=b.last);
                    let slice = log
                        .read(Offset(at), 1, true)
                        .await
                        .unwrap_or_else(|e| panic!("{context}: read {at}: {e}"))
                        .unwrap_or_else(|| panic!("{context}: nothing at {at}"));
                    assert_eq!(slice.first_offset.0, b.base, "{context}: read {at}");
                    assert!(
                        slice.read_blocking().expect("pread") == b.stored,
                        "{context}: bytes at {at}"
                    );
                }
                assert!(log.read(Offset(hw), 1, true).await.expect("read").is_none());
            }
            75..=79 => {
                log.close()
                    .await
                    .unwrap_or_else(|e| panic!("{context}: close: {e}"));
                model.acked = model.appended.len();
                log = PartitionLog::open(dir.clone(), config.clone(), 0)
                    .await
                    .expect("reopen");
                check_after_restart(&log, &mut model, &context).await;
            }
            80..=94 => {
                let mode = [
                    PowerLoss::DropUnsynced,
                    PowerLoss::KeepPrefix,
                    PowerLoss::Scramble,
                ][rng.gen_range(0..3)];
                drop(log);
                let report = sim.power_loss(mode, rng.gen());
                power_losses += 1;
                stats.power_losses += 1;
                stats.writes_damaged += report.writes_damaged as u64;
                stats.batches_acked_at_loss += model.acked as u64;
                let before = model.appended.len();
                log = PartitionLog::open(dir.clone(), config.clone(), 0)
                    .await
                    .unwrap_or_else(|e| panic!("{context}: open after {mode:?}: {e}"));
                let context = format!("{context} after {mode:?}");
                check_after_restart(&log, &mut model, &context).await;
                stats.batches_lost_unacked += (before - model.appended.len()) as u64;
                check_producers(&log, &model, &context).await;
            }
            100..=105 => {
                // A follower's truncation: the batch holding the offset goes whole, and what
                // is kept is durable when it returns.
                let (start, end) = (log.log_start_offset().0, model.log_end());
                if end == start {
                    continue;
                }
                let at = rng.gen_range(start..end);
                let new_end = log
                    .truncate_to(Offset(at), 0)
                    .await
                    .unwrap_or_else(|e| panic!("{context}: truncate_to({at}): {e}"));
                let kept = model.appended.iter().take_while(|b| b.last < at).count();
                model.appended.truncate(kept);
                model.acked = kept;
                assert_eq!(new_end.0, model.log_end(), "{context}: truncate_to({at})");
                assert_eq!(log.durable_end_offset(), new_end, "{context}: durable end");
                stats.truncations += 1;
            }
            _ => {
                if model.acked == model.appended.len() {
                    continue;
                }
                // A failed fdatasync: every waiting flush fails, later appends are refused,
                // and after a restart nothing unacknowledged is trusted.
                sim.fail_next_sync(".log", libc::EIO);
                stats.failed_syncs += 1;
                let waiters: Vec<_> = (0..3)
                    .map(|_| {
                        let log = Rc::clone(&log);
                        glommio::spawn_local(async move { log.flush().await })
                    })
                    .collect();
                for waiter in waiters {
                    assert!(
                        waiter.await.is_err(),
                        "{context}: a flush succeeded over a failed fdatasync"
                    );
                }
                assert!(log.sync_failed(), "{context}: sync_failed");
                let refused = log.append(&batch(0, 1, 1, None), LeaderEpoch(0), 0).await;
                assert!(
                    matches!(refused, Err(StorageError::SyncFailed { .. })),
                    "{context}: append after a failed fdatasync: {refused:?}"
                );
                drop(log);
                sim.power_loss(PowerLoss::DropUnsynced, rng.gen());
                log = PartitionLog::open(dir.clone(), config.clone(), 0)
                    .await
                    .expect("reopen");
                check_after_restart(&log, &mut model, &format!("{context} after failed sync"))
                    .await;
            }
        }
    }
    drop(log);
    sim.power_loss(PowerLoss::Scramble, seed);
    let log = PartitionLog::open(dir.clone(), config.clone(), 0)
        .await
        .expect("final open");
    check_after_restart(&log, &mut model, &format!("seed {seed} final")).await;
    check_producers(&log, &model, &format!("seed {seed} final")).await;
    log.close().await.expect("close");
    assert!(power_losses > 0 || OPS_PER_SEED < 50);
    SimDisk::uninstall();
    stats
}

#[test]
fn power_loss_at_random_points_keeps_every_flushed_batch() {
    let seeds: Option<u64> = std::env::var("STROM_POWERLOSS_SEED")
        .ok()
        .map(|s| s.parse().expect("STROM_POWERLOSS_SEED is a number"));
    let started = Instant::now();
    let (ran, total) = run_local(move || async move {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut ran = 0u64;
        let mut total = SeedStats::default();
        let seeds: Box<dyn Iterator<Item = u64>> = match seeds {
            Some(seed) => Box::new(std::iter::once(seed)),
            None => Box::new(0..),
        };
        for seed in seeds {
            if seed >= SEEDS_MIN && started.elapsed() > TIME_BUDGET {
                break;
            }
            let stats = run_seed(seed, tmp.path()).await;
            total.power_losses += stats.power_losses;
            total.batches_acked_at_loss += stats.batches_acked_at_loss;
            total.batches_lost_unacked += stats.batches_lost_unacked;
            total.writes_damaged += stats.writes_damaged;
            total.failed_syncs += stats.failed_syncs;
            total.truncations += stats.truncations;
            ran += 1;
        }
        (ran, total)
    });
    eprintln!(
        "power loss model: {ran} seeds x {OPS_PER_SEED} ops in {:?}: {total:?}",
        started.elapsed()
    );
    assert!(total.power_losses >= ran, "too few power losses: {total:?}");
    assert!(
        total.batches_lost_unacked > 0 && total.writes_damaged > 0,
        "no power loss ever lost or damaged an unsynced batch: {total:?}"
    );
}

#[test]
fn a_failed_fdatasync_fails_waiters_and_refuses_writes() {
    run_local(|| async {
        let tmp = tempfile::tempdir().expect("tempdir");
        let sim = SimDisk::install(tmp.path());
        let dir = tmp.path().join("t-0");
        let log = PartitionLog::open(dir.clone(), config(true), 0)
            .await
            .expect("open");
        let kept = batch(1, 2, 10, None);
        log.append(&kept, LeaderEpoch(0), 0).await.expect("append");
        log.flush().await.expect("flush");
        let failures_before = strom_storage::metrics::sync_failures();

        sim.fail_next_sync(".log", libc::EIO);
        let waiters: Vec<_> = (0..4u64)
            .map(|i| {
                let log = Rc::clone(&log);
                glommio::spawn_local(async move {
                    log.append(&batch(10 + i, 1, 10, None), LeaderEpoch(0), 0)
                        .await?;
                    log.flush().await
                })
            })
            .collect();
        for waiter in waiters {
            let result = waiter.await;
            assert!(
                result.is_err(),
                "a producer was answered with success: {result:?}"
            );
        }
        assert!(log.sync_failed());
        assert_eq!(strom_storage::metrics::sync_failures(), failures_before + 1);
        assert!(matches!(
            log.append(&batch(20, 1, 10, None), LeaderEpoch(0), 0).await,
            Err(StorageError::SyncFailed { .. })
        ));
        assert!(matches!(
            log.flush().await,
            Err(StorageError::SyncFailed { .. })
        ));
        // Nothing after the failed sync became readable or durable.
        assert_eq!(log.high_watermark(), Offset(2));
        assert_eq!(log.durable_end_offset(), Offset(2));
        assert!(
            log.close().await.is_err(),
            "a clean close over a failed sync"
        );
        drop(log);

        // A restart (no power loss: the page cache still holds the batches whose sync failed)
        // does not find them: the log was cut back to its durable end.
        let log = PartitionLog::open(dir.clone(), config(true), 0)
            .await
            .expect("reopen");
        assert_eq!(
            log.log_end_offset(),
            Offset(2),
            "a batch whose fdatasync failed came back"
        );
        drop(log);
        // Nor does a power loss; the log reopens with what was durable and takes writes.
        sim.power_loss(PowerLoss::KeepPrefix, 3);
        let log = PartitionLog::open(dir.clone(), config(true), 0)
            .await
            .expect("reopen");
        assert_eq!(log.log_end_offset(), Offset(2));
        let info = log
            .append(&batch(30, 1, 10, None), LeaderEpoch(0), 0)
            .await
            .expect("append");
        assert_eq!(info.base_offset, Offset(2));
        log.flush().await.expect("flush");
        log.close().await.expect("close");
        SimDisk::uninstall();
    });
}

/// Index entries every 256 bytes: one per batch of `append_many`.
fn config_index_per_batch() -> LogConfig {
    LogConfig {
        index_interval_bytes: 256,
        ..LogConfig::default()
    }
}

/// Appends `count` batches of about 300 bytes (two records each).
async fn append_many(log: &PartitionLog, from_tag: u64, count: u64) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for t in from_tag..from_tag + count {
        let bytes = batch(t, 2, 120, None);
        log.append(&bytes, LeaderEpoch(0), 0).await.expect("append");
        out.push(bytes);
    }
    out
}

/// A log in `dir` with `durable` batches behind a recovery point, then `unsynced` more, left
/// as a crash leaves it. Returns the two lists of batches and the `.log` file.
async fn log_with_recovery_point(
    dir: &Path,
    durable: u64,
    unsynced: u64,
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>, PathBuf) {
    let log = PartitionLog::open(dir.to_path_buf(), config_index_per_batch(), 0)
        .await
        .expect("open");
    let synced = append_many(&log, 0, durable).await;
    assert!(log.write_recovery_point().await.expect("recovery point"));
    let not_synced = append_many(&log, durable, unsynced).await;
    drop(log);
    let path = segment_logs(dir).pop().expect("segment");
    (synced, not_synced, path)
}

#[test]
fn a_hole_in_the_middle_of_unsynced_data_is_cut_there() {
    run_local(|| async {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("t-0");
        let config = config_index_per_batch();
        // 5 durable batches (recovery point), then 10 that were never synced.
        let (durable, unsynced, path) = log_with_recovery_point(&dir, 5, 10).await;
        let batch_len = unsynced[0].len() as u64;

        // Out-of-order writeback: batch 7 never reached the disk (zeros), 8.. and the index
        // entries pointing at them did.
        let mut data = std::fs::read(&path).expect("read");
        let hole_at = (5 + 2) * batch_len as usize;
        data[hole_at..hole_at + batch_len as usize].fill(0);
        std::fs::write(&path, &data).expect("write");

        let log = PartitionLog::open(dir.clone(), config.clone(), 0)
            .await
            .expect("reopen");
        assert_eq!(
            log.log_end_offset(),
            Offset(14),
            "the log must end at the hole"
        );
        assert_eq!(
            std::fs::metadata(&path).expect("stat").len(),
            hole_at as u64,
            "the bytes after the hole are cut"
        );
        for (i, bytes) in durable.iter().chain(&unsynced[..2]).enumerate() {
            let offset = 2 * i as i64;
            let slice = log
                .read(Offset(offset), 1, true)
                .await
                .expect("read")
                .expect("data");
            assert_eq!(
                slice.read_blocking().expect("pread"),
                stamped(bytes, offset)
            );
        }
        assert!(matches!(
            log.read(Offset(16), 1, true).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        // Appends continue at the hole.
        let info = log
            .append(&batch(99, 1, 10, None), LeaderEpoch(0), 0)
            .await
            .expect("append");
        assert_eq!(info.base_offset, Offset(14));
        log.close().await.expect("close");
    });
}

#[test]
fn damage_inside_the_durable_part_is_reported_not_cut() {
    run_local(|| async {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("t-0");
        let config = config_index_per_batch();
        let (durable, _, path) = log_with_recovery_point(&dir, 6, 0).await;
        let mut data = std::fs::read(&path).expect("read");
        // The last durable batch: where the scan of an unclean open starts.
        let at = 5 * durable[0].len() + 40;
        data[at] ^= 0x10;
        std::fs::write(&path, &data).expect("write");
        match PartitionLog::open(dir.clone(), config.clone(), 0).await {
            Err(StorageError::Corrupt {
                position, reason, ..
            }) => {
                assert_eq!(position, 5 * durable[0].len() as u64, "{reason}");
                assert!(reason.contains("durable"), "{reason}");
            }
            other => panic!("expected a corruption error, got {other:?}"),
        }
        // Nothing was cut.
        assert_eq!(std::fs::read(&path).expect("read"), data);
    });
}
