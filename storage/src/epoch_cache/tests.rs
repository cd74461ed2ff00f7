//! Unit tests of the leader-epoch cache: Kafka's rules by example, the checkpoint format, and a
//! seeded model test against a log kept as a plain list of records.

use rand::{Rng, SeedableRng};

use super::*;

fn e(n: i32) -> LeaderEpoch {
    LeaderEpoch(n)
}

fn o(n: i64) -> Offset {
    Offset(n)
}

fn cache(entries: &[(i32, i64)]) -> EpochCache {
    let mut c = EpochCache::new();
    for &(epoch, start) in entries {
        assert!(c.assign(e(epoch), o(start)));
    }
    c
}

#[test]
fn assign_records_each_new_epoch_once() {
    let mut c = EpochCache::new();
    assert!(c.assign(e(0), o(0)));
    assert!(
        !c.assign(e(0), o(5)),
        "a later batch of the same epoch changes nothing"
    );
    assert!(c.assign(e(2), o(10)));
    assert!(!c.assign(e(-1), o(11)) && !c.assign(e(3), o(-1)));
    assert_eq!(c.entries(), vec![(e(0), o(0)), (e(2), o(10))]);
    assert_eq!(c.latest_epoch(), Some(e(2)));
}

#[test]
fn an_entry_that_does_not_follow_replaces_what_it_contradicts() {
    // An older epoch after a newer one: the newer entries came from a leader that lost.
    let mut c = cache(&[(0, 0), (2, 10), (4, 20)]);
    assert!(c.assign(e(3), o(15)));
    assert_eq!(
        c.entries(),
        vec![(e(0), o(0)), (e(2), o(10)), (e(3), o(15))]
    );
    // A newer epoch at an offset not after the last entry's start.
    assert!(c.assign(e(5), o(10)));
    assert_eq!(c.entries(), vec![(e(0), o(0)), (e(5), o(10))]);
    // The same epoch at an earlier offset moves it.
    assert!(c.assign(e(5), o(7)));
    assert_eq!(c.entries(), vec![(e(0), o(0)), (e(5), o(7))]);
}

#[test]
fn end_offsets_follow_kafka() {
    let c = cache(&[(1, 0), (3, 10), (6, 25)]);
    let leo = o(40);
    assert_eq!(
        c.end_offset_for(e(6), leo),
        (e(6), o(40)),
        "the latest epoch ends at the log end"
    );
    assert_eq!(c.end_offset_for(e(3), leo), (e(3), o(25)));
    assert_eq!(
        c.end_offset_for(e(4), leo),
        (e(3), o(25)),
        "an unknown epoch in between"
    );
    assert_eq!(c.end_offset_for(e(1), leo), (e(1), o(10)));
    assert_eq!(
        c.end_offset_for(e(0), leo),
        (e(0), o(0)),
        "older than every known epoch"
    );
    assert_eq!(
        c.end_offset_for(e(7), leo),
        UNDEFINED,
        "newer than every known epoch"
    );
    assert_eq!(c.end_offset_for(e(-1), leo), UNDEFINED);
    assert_eq!(EpochCache::new().end_offset_for(e(0), leo), UNDEFINED);
}

#[test]
fn truncation_at_either_end() {
    let mut c = cache(&[(1, 0), (3, 10), (6, 25)]);
    assert!(!c.truncate_from_end(o(30)));
    assert!(c.truncate_from_end(o(25)));
    assert_eq!(c.entries(), vec![(e(1), o(0)), (e(3), o(10))]);
    assert!(c.truncate_from_start(o(12)));
    assert_eq!(
        c.entries(),
        vec![(e(3), o(12))],
        "the epoch covering the new start moves to it"
    );
    assert!(!c.truncate_from_start(o(12)));
    assert!(!c.truncate_from_start(o(5)));
    assert!(c.truncate_from_end(o(12)));
    assert!(c.entries().is_empty());
}

#[test]
fn the_checkpoint_round_trips_and_refuses_damage() {
    let c = cache(&[(1, 0), (3, 10), (6, 25)]);
    assert_eq!(c.encode(), b"0\n3\n1 0\n3 10\n6 25\n");
    assert_eq!(EpochCache::decode(&c.encode()), Ok(c));
    assert_eq!(EpochCache::decode(b"0\n0\n"), Ok(EpochCache::new()));
    for bad in [
        &b""[..],
        b"1\n0\n",
        b"0\n",
        b"0\n2\n1 0\n",
        b"0\n1\n1 0\n2 5\n",
        b"0\n2\n3 10\n1 20\n",
        b"0\n2\n1 10\n3 10\n",
        b"0\n1\n1\n",
        b"0\n1\n1 x\n",
        b"0\n1\n-1 0\n",
        b"0\n1\n1 0 9\n",
        b"0\n999999999\n",
        b"\xff\xfe",
    ] {
        assert!(
            EpochCache::decode(bad).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

/// What the cache must say, computed from the log's records alone: the first offset of each
/// epoch among the records the log holds.
fn entries_of(records: &[(i64, i32)]) -> Vec<(LeaderEpoch, Offset)> {
    let mut out: Vec<(LeaderEpoch, Offset)> = Vec::new();
    for &(offset, epoch) in records {
        if out.last().is_none_or(|&(last, _)| last.0 != epoch) {
            out.push((e(epoch), o(offset)));
        }
    }
    out
}

/// OffsetForLeaderEpoch computed by scanning the records: the latest epoch ends at the log end;
/// otherwise the answer is the first record of a higher epoch, with the largest epoch at or
/// below the one asked for among the records before it (or the one asked for, if none).
fn end_offset_of(records: &[(i64, i32)], epoch: i32, leo: i64) -> (LeaderEpoch, Offset) {
    let latest = records.iter().map(|&(_, ep)| ep).max();
    if epoch < 0 || latest.is_none() {
        return UNDEFINED;
    }
    if latest == Some(epoch) {
        return (e(epoch), o(leo));
    }
    let Some(i) = records.iter().position(|&(_, ep)| ep > epoch) else {
        return UNDEFINED;
    };
    let floor = records[..i]
        .iter()
        .map(|&(_, ep)| ep)
        .max()
        .unwrap_or(epoch);
    (e(floor), o(records[i].0))
}

/// Appends batches, truncates the log at the end (a follower cutting a divergent suffix) and at
/// the start (retention), keeping the cache up to date the way the log does, and checks after
/// every step that the cache's entries and its OffsetForLeaderEpoch answers match the records.
#[test]
fn the_cache_matches_the_log_it_describes() {
    let seeds: u64 = std::env::var("STROM_EPOCH_CACHE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let mut checks = 0u64;
    for seed in 0..seeds {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut cache = EpochCache::new();
        // (offset, epoch) of every record the log holds, and the log's bounds.
        let mut records: Vec<(i64, i32)> = Vec::new();
        let (mut start, mut leo) = (0i64, 0i64);
        let mut epoch = 0i32;
        for step in 0..300 {
            match rng.gen_range(0..10) {
                0..=5 => {
                    if rng.gen_bool(0.2) {
                        epoch += rng.gen_range(1..3);
                    }
                    let n = rng.gen_range(1..5);
                    cache.assign(e(epoch), o(leo));
                    records.extend((leo..leo + n).map(|off| (off, epoch)));
                    leo += n;
                }
                6..=7 => {
                    let to = rng.gen_range(start..=leo);
                    cache.truncate_from_end(o(to));
                    records.retain(|&(off, _)| off < to);
                    leo = to;
                    // The next leader's batches carry an epoch at least the last one kept.
                    let kept = records.last().map_or(0, |&(_, ep)| ep);
                    epoch = rng.gen_range(kept..=epoch.max(kept) + 1);
                }
                _ => {
                    let to = rng.gen_range(start..=leo);
                    cache.truncate_from_start(o(to));
                    records.retain(|&(off, _)| off >= to);
                    start = to;
                }
            }
            // An empty log may keep the epoch it ended with (as Kafka's does); the records say
            // nothing then.
            if records.is_empty() {
                continue;
            }
            let want = entries_of(&records);
            assert_eq!(cache.entries(), want, "seed {seed} step {step}");
            for asked in -1..=epoch + 2 {
                assert_eq!(
                    cache.end_offset_for(e(asked), o(leo)),
                    end_offset_of(&records, asked, leo),
                    "seed {seed} step {step}: epoch {asked}, entries {:?}",
                    cache.entries()
                );
                checks += 1;
            }
            assert_eq!(EpochCache::decode(&cache.encode()).as_ref(), Ok(&cache));
        }
    }
    assert!(checks > 10_000, "only {checks} answers checked");
}
