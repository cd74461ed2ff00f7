//! Model-based test of compaction against a reference: a list of every record appended, from
//! which the newest record per key follows.
//!
//! A seeded RNG appends keyed records (with tombstones) over a small key set, advances the
//! clock, runs compaction passes, injects a crash at a random step of a pass, reopens (cleanly
//! or not) and deletes records from the head. After every operation the records the log serves
//! from its start are compared with what the reference says they must be: after a pass that
//! cleaned up to offset `end`, below `end` exactly the newest record of each key (tombstones
//! only while younger than `delete.retention.ms`), from `end` on every record; between passes,
//! what the last pass left plus what was appended since. Reproduce a failure with
//! `STROM_COMPACTION_SEED=<seed> STROM_COMPACTION_OPS=<n>`.

use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strom_storage::records::decode_records;
use strom_storage::testing::build_batch_with_timestamps;
use strom_storage::{
    CleanerFault, CleanerStep, CleanupPolicy, LeaderEpoch, LogConfig, Offset, PartitionLog,
    StorageError,
};

const OPS_DEFAULT: usize = 600;
const SEEDS_DEFAULT: [u64; 4] = [11, 12, 13, 14];
const TIME_BUDGET: Duration = Duration::from_secs(30);
const KEYS: u32 = 12;

/// (offset, key, value, timestamp)
type Row = (i64, Vec<u8>, Option<Vec<u8>>, i64);

struct Model {
    /// Every record ever appended.
    all: Vec<Row>,
    /// What the log must serve from its start.
    served: Vec<Row>,
    log_start: i64,
}

impl Model {
    /// Takes `got` as the new state after an interrupted pass, checking that it keeps every
    /// record it had to keep: it holds only records the model served, and each one it dropped
    /// has a newer record of its key or is a tombstone older than `horizon_ms`.
    fn accept_partial(&mut self, got: Vec<Row>, horizon_ms: i64) {
        let mut newest: HashMap<&[u8], i64> = HashMap::new();
        for (o, k, _, _) in &self.all {
            newest.insert(k, *o);
        }
        let mut kept = got.iter().peekable();
        for row in &self.served {
            if kept.peek() == Some(&row) {
                kept.next();
                continue;
            }
            let superseded = newest[&row.1[..]] > row.0;
            let expired = row.2.is_none() && row.3 < horizon_ms;
            assert!(superseded || expired, "an interrupted pass lost {row:?}");
        }
        assert!(kept.next().is_none(), "an interrupted pass added records");
        self.served = got;
    }

    fn after_pass(&mut self, end: i64, horizon_ms: i64) {
        let mut newest: HashMap<&[u8], i64> = HashMap::new();
        for (o, k, _, _) in self.all.iter().filter(|r| r.0 < end) {
            newest.insert(k, *o);
        }
        self.served = self
            .all
            .iter()
            .filter(|(o, k, v, ts)| {
                *o >= self.log_start
                    && (*o >= end || (newest[&k[..]] == *o && (v.is_some() || *ts >= horizon_ms)))
            })
            .cloned()
            .collect();
    }
}

async fn served(log: &PartitionLog) -> Vec<Row> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset().0;
    let start = offset;
    while let Some(slice) = log
        .read(Offset(offset), 64 << 10, true)
        .await
        .expect("read")
    {
        let bytes = slice.read_blocking().expect("pread");
        let mut pos = 0;
        while pos < bytes.len() {
            let len = i32::from_be_bytes(bytes[pos + 8..pos + 12].try_into().expect("4 bytes"))
                as usize
                + 12;
            let records = decode_records(&bytes[pos..pos + len]).expect("a served batch decodes");
            assert!(!records.is_empty(), "no empty batch is served");
            let last_delta =
                i32::from_be_bytes(bytes[pos + 23..pos + 27].try_into().expect("4 bytes"));
            let base = i64::from_be_bytes(bytes[pos..pos + 8].try_into().expect("8 bytes"));
            for r in records {
                if r.offset >= start {
                    out.push((
                        r.offset,
                        r.key.expect("keyed").to_vec(),
                        r.value.map(<[u8]>::to_vec),
                        r.timestamp,
                    ));
                }
            }
            offset = base + i64::from(last_delta) + 1;
            pos += len;
        }
    }
    out
}

async fn run_seed(seed: u64, ops: usize, deadline: Instant, root: &Path) -> usize {
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = root.join(format!("model-{seed}"));
    let config = LogConfig {
        segment_bytes: rng.gen_range(300..3000),
        index_interval_bytes: rng.gen_range(1..800),
        cleanup: CleanupPolicy {
            delete: false,
            compact: true,
        },
        min_cleanable_dirty_ratio: 0.0,
        delete_retention_ms: rng.gen_range(0..400),
        ..LogConfig::default()
    };
    let mut now = 1_000i64;
    let mut log: Rc<PartitionLog> = PartitionLog::open(dir.clone(), config.clone(), now)
        .await
        .expect("open");
    let mut model = Model {
        all: Vec::new(),
        served: Vec::new(),
        log_start: 0,
    };
    let mut passes = 0;
    let mut done = 0;
    for op in 0..ops {
        if Instant::now() > deadline {
            break;
        }
        done += 1;
        now += rng.gen_range(0..20);
        let kind = rng.gen_range(0..100);
        if std::env::var("STROM_COMPACTION_TRACE").is_ok() {
            eprintln!(
                "op {op} kind {kind} now {now} log_start {} end {}",
                model.log_start,
                log.log_end_offset()
            );
        }
        match kind {
            0..=69 => {
                let n = rng.gen_range(1..5);
                let keys: Vec<Vec<u8>> = (0..n)
                    .map(|_| format!("key-{}", rng.gen_range(0..KEYS)).into_bytes())
                    .collect();
                let values: Vec<Option<Vec<u8>>> = (0..n)
                    .map(|i| {
                        (rng.gen_range(0..100) >= 15).then(|| {
                            format!("v{op}-{i}-{}", "x".repeat(rng.gen_range(0..40))).into_bytes()
                        })
                    })
                    .collect();
                let records: Vec<strom_storage::testing::TestRecord<'_>> = keys
                    .iter()
                    .zip(&values)
                    .map(|(k, v)| (Some(&k[..]), v.as_deref(), now))
                    .collect();
                let info = log
                    .append(&build_batch_with_timestamps(&records), LeaderEpoch(0), now)
                    .await
                    .expect("append");
                for (i, (k, v)) in keys.into_iter().zip(values).enumerate() {
                    let row = (info.base_offset.0 + i as i64, k, v, now);
                    model.all.push(row.clone());
                    model.served.push(row);
                }
            }
            70..=84 => {
                if let Some(report) = log.clean(now).await.expect("clean") {
                    passes += 1;
                    model.after_pass(report.first_dirty, now - config.delete_retention_ms as i64);
                }
            }
            85..=89 => {
                // A crash at a random step of a pass, then an unclean reopen and a full pass.
                let step = CleanerStep::ALL[rng.gen_range(0..CleanerStep::ALL.len())];
                log.set_cleaner_fault(Some(CleanerFault::Fail(step)));
                match log.clean(now).await {
                    // The hook fires only in a group that changes; a pass may finish without.
                    Ok(Some(report)) => {
                        passes += 1;
                        model.after_pass(
                            report.first_dirty,
                            now - config.delete_retention_ms as i64,
                        );
                    }
                    Ok(None) | Err(StorageError::InjectedFault { .. }) => {}
                    Err(e) => panic!("seed {seed} op {op}: {e}"),
                }
                drop(log);
                log = PartitionLog::open(dir.clone(), config.clone(), now)
                    .await
                    .expect("reopen after crash");
                let again = log.clean(now).await.expect("clean after crash");
                if std::env::var("STROM_COMPACTION_TRACE").is_ok() {
                    eprintln!(
                        "  fault {step:?}, then {again:?}, dr {}",
                        config.delete_retention_ms
                    );
                }
                match again {
                    Some(report) => {
                        passes += 1;
                        model.after_pass(
                            report.first_dirty,
                            now - config.delete_retention_ms as i64,
                        );
                    }
                    // No pass due after the reopen (one that only dropped expired tombstones
                    // is not redone): the groups the interrupted pass swapped in stay. Each
                    // record they lost must have been removable.
                    None => model.accept_partial(
                        served(&log).await,
                        now - config.delete_retention_ms as i64,
                    ),
                }
            }
            90..=94 => {
                if rng.gen_bool(0.5) {
                    log.close().await.expect("close");
                }
                drop(log);
                log = PartitionLog::open(dir.clone(), config.clone(), now)
                    .await
                    .expect("reopen");
            }
            _ => {
                let hw = log.high_watermark().0;
                if hw > model.log_start && rng.gen_range(0..4) == 0 {
                    let before = rng.gen_range(model.log_start..=hw);
                    let start = log
                        .delete_records(Offset(before))
                        .await
                        .expect("delete records");
                    assert_eq!(start.0, before);
                    model.log_start = before;
                    model.served.retain(|r| r.0 >= before);
                }
            }
        }
        let got = served(&log).await;
        if got != model.served {
            let first = got.iter().zip(&model.served).position(|(a, b)| a != b);
            panic!(
                "seed {seed} op {op}: log serves {} records, the model {}; first difference at {first:?}: {:?} vs {:?}",
                got.len(),
                model.served.len(),
                first.and_then(|i| got.get(i)),
                first.and_then(|i| model.served.get(i)),
            );
        }
    }
    assert!(
        passes > 0 || done < 50,
        "seed {seed}: no compaction pass ran"
    );
    log.close().await.expect("close");
    done
}

#[test]
fn compaction_matches_the_newest_value_per_key_model() {
    let seeds: Vec<u64> = match std::env::var("STROM_COMPACTION_SEED") {
        Ok(s) => vec![s.parse().expect("seed")],
        Err(_) => SEEDS_DEFAULT.to_vec(),
    };
    let ops = std::env::var("STROM_COMPACTION_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(OPS_DEFAULT);
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_path_buf();
    let deadline = Instant::now() + TIME_BUDGET;
    let total = strom_storage::testing::run_local(move || async move {
        let mut total = 0;
        for seed in seeds {
            total += run_seed(seed, ops, deadline, &root).await;
        }
        total
    });
    assert!(total > 0);
    println!("compaction model: {total} operations");
}
