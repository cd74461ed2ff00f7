//! Model-based op fuzzing of `PartitionLog` against an in-memory reference.
//!
//! A seeded RNG picks operations (append, read, timestamp lookup, flush, clean and unclean
//! reopen, tail damage followed by reopen) and every result is compared with a plain `Vec` of
//! the batches that were acknowledged. Small segments force many rolls. Reproduce a failure with
//! `STROM_OPFUZZ_SEED=<seed> STROM_OPFUZZ_OPS=<n>`.

use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strom_storage::testing::{active_log, build_batch_with_timestamps};
use strom_storage::{validate_batch, LeaderEpoch, LogConfig, Offset, PartitionLog, StorageError};

/// Operations per seed by default.
const OPS_DEFAULT: usize = 2000;
/// Seeds run by default.
const SEEDS_DEFAULT: [u64; 3] = [1, 2, 3];
/// Wall-clock budget for the whole test.
const TIME_BUDGET: Duration = Duration::from_secs(20);

/// One acknowledged batch as the reference sees it.
#[derive(Clone, Debug)]
struct RefBatch {
    base: i64,
    last: i64,
    /// The batch bytes with the base offset and epoch the log assigned.
    bytes: Vec<u8>,
    /// Record timestamps in offset order.
    timestamps: Vec<i64>,
    /// Index of the segment it went to.
    segment: usize,
}

/// The reference: acknowledged batches plus the segment sizes the roll rule produces.
struct Model {
    batches: Vec<RefBatch>,
    segment_sizes: Vec<u64>,
    segment_bytes: u64,
}

impl Model {
    fn log_end(&self) -> i64 {
        self.batches.last().map_or(0, |b| b.last + 1)
    }

    fn append(&mut self, bytes: Vec<u8>, timestamps: Vec<i64>) {
        let len = bytes.len() as u64;
        let active = *self.segment_sizes.last().expect("one segment");
        if active > 0 && active + len > self.segment_bytes {
            self.segment_sizes.push(0);
        }
        let segment = self.segment_sizes.len() - 1;
        self.segment_sizes[segment] += len;
        let base = self.log_end();
        let last = base + timestamps.len() as i64 - 1;
        self.batches.push(RefBatch {
            base,
            last,
            bytes,
            timestamps,
            segment,
        });
    }

    fn pop(&mut self) {
        let batch = self.batches.pop().expect("a batch");
        self.segment_sizes[batch.segment] -= batch.bytes.len() as u64;
    }

    /// Expected (first offset, bytes) of a read.
    fn read(&self, offset: i64, max_bytes: u32, min_one: bool) -> Option<(i64, Vec<u8>)> {
        let start = self
            .batches
            .iter()
            .position(|b| b.base <= offset && offset <= b.last)?;
        let segment = self.batches[start].segment;
        let mut out = Vec::new();
        for batch in self.batches[start..]
            .iter()
            .take_while(|b| b.segment == segment)
        {
            if out.len() + batch.bytes.len() > max_bytes as usize {
                break;
            }
            out.extend_from_slice(&batch.bytes);
        }
        if out.is_empty() {
            if !min_one {
                return None;
            }
            out = self.batches[start].bytes.clone();
        }
        Some((self.batches[start].base, out))
    }

    /// Expected answer of offset_for_timestamp (all batches are uncompressed CreateTime).
    fn offset_for_timestamp(&self, target: i64) -> Option<(Offset, i64)> {
        let batch = self
            .batches
            .iter()
            .find(|b| b.timestamps.iter().any(|&ts| ts >= target))?;
        let (i, ts) = batch
            .timestamps
            .iter()
            .enumerate()
            .find(|(_, &ts)| ts >= target)?;
        Some((Offset(batch.base + i as i64), *ts))
    }
}

/// A record owned by the generator: key, value, timestamp.
type OwnedRecord = (Option<Vec<u8>>, Option<Vec<u8>>, i64);

fn random_batch(rng: &mut StdRng) -> (Vec<u8>, Vec<i64>) {
    let records = if rng.gen_bool(0.1) {
        rng.gen_range(1..60)
    } else {
        rng.gen_range(1..8)
    };
    let big = rng.gen_bool(0.05);
    let mut owned: Vec<OwnedRecord> = Vec::new();
    for _ in 0..records {
        let key = rng
            .gen_bool(0.5)
            .then(|| (0..rng.gen_range(0..16)).map(|_| rng.gen()).collect());
        let value_len = if big {
            rng.gen_range(500..3000)
        } else {
            rng.gen_range(0..200)
        };
        let value = rng
            .gen_bool(0.95)
            .then(|| (0..value_len).map(|_| rng.gen()).collect());
        owned.push((key, value, rng.gen_range(0..10_000)));
    }
    let records: Vec<_> = owned
        .iter()
        .map(|(k, v, ts)| (k.as_deref(), v.as_deref(), *ts))
        .collect();
    let timestamps = owned.iter().map(|r| r.2).collect();
    (build_batch_with_timestamps(&records), timestamps)
}

fn stamped(batch: &[u8], base: i64, epoch: i32) -> Vec<u8> {
    let mut out = batch.to_vec();
    out[0..8].copy_from_slice(&base.to_be_bytes());
    out[12..16].copy_from_slice(&epoch.to_be_bytes());
    out
}

/// A temp dir on tmpfs when there is one: rolls fdatasync three files and the directory, and
/// this test is about the log's logic, not the disk's sync latency.
fn fuzz_tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().expect("tempdir")
}

fn check_invariants(log: &PartitionLog, model: &Model, context: &str) {
    assert_eq!(
        log.log_end_offset(),
        Offset(model.log_end()),
        "{context}: log end offset"
    );
    assert_eq!(
        log.high_watermark(),
        log.log_end_offset(),
        "{context}: high watermark"
    );
    let bytes: u64 = model.segment_sizes.iter().sum();
    assert_eq!(log.size_bytes(), bytes, "{context}: size");
    assert_eq!(
        log.segment_count(),
        model.segment_sizes.len(),
        "{context}: segments"
    );
}

async fn run_seed(seed: u64, ops: usize, deadline: Instant) -> usize {
    let mut rng = StdRng::seed_from_u64(seed);
    let tmp = fuzz_tempdir();
    let dir = tmp.path().join("fuzz-0");
    let config = LogConfig {
        segment_bytes: rng.gen_range(600..6000),
        index_interval_bytes: rng.gen_range(1..1500),
        segment_ms: u64::MAX,
        ..LogConfig::default()
    };
    let mut model = Model {
        batches: Vec::new(),
        segment_sizes: vec![0],
        segment_bytes: config.segment_bytes,
    };
    let mut log = PartitionLog::open(dir.clone(), config.clone(), 0)
        .await
        .expect("open");
    let mut done = 0;
    let trace = std::env::var_os("STROM_OPFUZZ_TRACE").is_some();
    for op in 0..ops {
        if Instant::now() > deadline {
            break;
        }
        let context = format!("seed {seed} op {op}");
        let roll: u32 = rng.gen_range(0..1000);
        if trace {
            eprintln!("{context}: roll {roll}");
        }
        match roll {
            0..=499 => {
                let (batch, timestamps) = random_batch(&mut rng);
                assert!(validate_batch(&batch).is_ok());
                let epoch = rng.gen_range(0..5);
                let info = log
                    .append(&batch, LeaderEpoch(epoch), 0)
                    .await
                    .expect(&context);
                assert_eq!(
                    info.base_offset,
                    Offset(model.log_end()),
                    "{context}: base offset"
                );
                assert_eq!(
                    info.last_offset.0,
                    model.log_end() + timestamps.len() as i64 - 1,
                    "{context}"
                );
                model.append(stamped(&batch, info.base_offset.0, epoch), timestamps);
            }
            500..=549 => {
                // Concurrent appends (and a flush) queue in order; offsets stay contiguous.
                let tasks: Vec<_> = (0..rng.gen_range(2..6))
                    .map(|_| {
                        let (batch, timestamps) = random_batch(&mut rng);
                        let epoch = rng.gen_range(0..5);
                        let log = Rc::clone(&log);
                        glommio::spawn_local(async move {
                            let info = log.append(&batch, LeaderEpoch(epoch), 0).await;
                            (info, batch, timestamps, epoch)
                        })
                    })
                    .collect();
                let flusher = Rc::clone(&log);
                let flush = glommio::spawn_local(async move { flusher.flush().await });
                let mut results = Vec::new();
                for task in tasks {
                    let (info, batch, timestamps, epoch) = task.await;
                    results.push((info.expect(&context), batch, timestamps, epoch));
                }
                flush.await.expect(&context);
                results.sort_by_key(|(info, ..)| info.base_offset);
                for (info, batch, timestamps, epoch) in results {
                    assert_eq!(
                        info.base_offset,
                        Offset(model.log_end()),
                        "{context}: concurrent base offset"
                    );
                    model.append(stamped(&batch, info.base_offset.0, epoch), timestamps);
                }
            }
            550..=849 => {
                let end = model.log_end();
                let offset = rng.gen_range(0..=end + 1);
                let max_bytes = rng.gen_range(0..8000);
                let min_one = rng.gen_bool(0.7);
                let got = log.read(Offset(offset), max_bytes, min_one).await;
                if offset > end {
                    assert!(
                        matches!(got, Err(StorageError::OffsetOutOfRange { .. })),
                        "{context}: {got:?}"
                    );
                    continue;
                }
                let got = got.expect(&context).map(|slice| {
                    let bytes = slice.read_blocking().expect("pread");
                    (slice.first_offset.0, bytes)
                });
                let expected = model.read(offset, max_bytes, min_one);
                assert_eq!(
                    got.is_some(),
                    expected.is_some(),
                    "{context}: read {offset} {max_bytes} {min_one}"
                );
                if let (Some(got), Some(expected)) = (got, expected) {
                    assert_eq!(got.0, expected.0, "{context}: first offset");
                    assert!(
                        got.1 == expected.1,
                        "{context}: bytes of read {offset} {max_bytes} {min_one}"
                    );
                }
            }
            850..=899 => {
                let target = rng.gen_range(-10..10_100);
                let got = log.offset_for_timestamp(target).await.expect(&context);
                assert_eq!(
                    got,
                    model.offset_for_timestamp(target),
                    "{context}: timestamp {target}"
                );
            }
            900..=959 => log.flush().await.expect(&context),
            960..=969 => {
                log.close().await.expect(&context);
                log = PartitionLog::open(dir.clone(), config.clone(), 0)
                    .await
                    .expect(&context);
            }
            970..=979 => {
                drop(log);
                log = PartitionLog::open(dir.clone(), config.clone(), 0)
                    .await
                    .expect(&context);
            }
            980..=989 => {
                if rng.gen_bool(0.5) {
                    log.close().await.expect(&context);
                } else {
                    drop(log);
                }
                let path = active_log(&dir);
                let mut data = std::fs::read(&path).expect("read");
                data.extend((0..rng.gen_range(1..2000)).map(|_| rng.gen::<u8>()));
                std::fs::write(&path, data).expect("write");
                log = PartitionLog::open(dir.clone(), config.clone(), 0)
                    .await
                    .expect(&context);
            }
            _ => {
                // Only bytes that are not durable can be torn: damaging fdatasynced bytes is a
                // disk fault, which recovery reports instead of cutting (see power_loss.rs).
                let last_durable = model
                    .batches
                    .last()
                    .is_some_and(|b| b.base < log.durable_end_offset().0);
                let active_has_data =
                    model.segment_sizes.last().is_some_and(|&s| s > 0) && !last_durable;
                drop(log);
                if active_has_data {
                    let path = active_log(&dir);
                    let mut data = std::fs::read(&path).expect("read");
                    let last = model.batches.last().expect("a batch").bytes.len();
                    if rng.gen_bool(0.5) {
                        // Torn tail: cut inside the last batch.
                        data.truncate(data.len() - rng.gen_range(1..last));
                    } else {
                        // Bit flip in the part of the last batch that is validated.
                        let at = data.len() - last + rng.gen_range(16..last);
                        data[at] ^= 1 << rng.gen_range(0..8);
                    }
                    std::fs::write(&path, data).expect("write");
                    model.pop();
                }
                log = PartitionLog::open(dir.clone(), config.clone(), 0)
                    .await
                    .expect(&context);
            }
        }
        check_invariants(&log, &model, &context);
        done += 1;
    }

    // Finally every acknowledged batch is there, in order, from a fresh open.
    drop(log);
    let log = PartitionLog::open(dir.clone(), config.clone(), 0)
        .await
        .expect("final open");
    check_invariants(&log, &model, "final");
    for batch in &model.batches {
        let slice = log
            .read(Offset(batch.base), 1, true)
            .await
            .expect("read")
            .expect("data");
        assert_eq!(
            slice.read_blocking().expect("pread"),
            batch.bytes,
            "seed {seed}: batch {}",
            batch.base
        );
    }
    log.close().await.expect("close");
    done
}

#[test]
fn opfuzz_partition_log_against_reference() {
    let seeds: Vec<u64> = match std::env::var("STROM_OPFUZZ_SEED") {
        Ok(seed) => vec![seed.parse().expect("STROM_OPFUZZ_SEED is a number")],
        Err(_) => SEEDS_DEFAULT.to_vec(),
    };
    let ops: usize = std::env::var("STROM_OPFUZZ_OPS")
        .ok()
        .map(|n| n.parse().expect("STROM_OPFUZZ_OPS is a number"))
        .unwrap_or(OPS_DEFAULT);
    let started = Instant::now();
    let deadline = started + TIME_BUDGET;
    let total = strom_storage::testing::run_local(move || async move {
        let mut total = 0;
        for seed in seeds {
            total += run_seed(seed, ops, deadline).await;
        }
        total
    });
    eprintln!("opfuzz: {total} ops in {:?}", started.elapsed());
    assert!(
        total >= 1000,
        "too few ops ran within the time budget: {total}"
    );
}
