//! `strom-bench group`: consumer group latencies over the classic protocol.
//!
//! 1. Join to first record: a fresh consumer in a new group finds the coordinator, joins, leads
//!    a range assignment, syncs, looks up committed offsets (none: it starts at the earliest)
//!    and fetches until a record arrives. Timed from the first JoinGroup to that record.
//! 2. Rebalance after a clean leave: members A and B share a group; B leaves; A learns of the
//!    rebalance from its next heartbeat, rejoins and syncs. Timed from B's LeaveGroup to A
//!    holding every partition.

use strom_client::member;
mod report;

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kafka_protocol::records::Compression;

use crate::run::{self, records::PendingBatch};
use crate::wire;
use member::{GroupTimeouts, Heartbeat, Member};
use report::Report;
use strom_client::cluster::{connect_any, parse_bootstrap, Cluster, Router};

/// Records produced to each partition before measuring, so a consumer always finds data.
const SETUP_RECORDS_PER_PARTITION: usize = 100;
const SETUP_RECORD_BYTES: usize = 100;
/// Fetch wait while looking for the first record.
const FETCH_MAX_WAIT_MS: i32 = 500;
const FETCH_PARTITION_MAX_BYTES: i32 = 1024 * 1024;
const FETCH_MAX_BYTES: i32 = 16 * FETCH_PARTITION_MAX_BYTES;
/// Session timeout floor (Kafka rejects less than group.min.session.timeout.ms, 6 s by default).
const MIN_SESSION_TIMEOUT_MS: u64 = 10_000;

/// Flags of the `group` subcommand.
pub struct GroupArgs {
    pub brokers: String,
    pub topic: String,
    pub partitions: i32,
    pub rounds: u32,
    pub heartbeat: Duration,
    pub timeout: Duration,
    pub json: bool,
}

impl GroupArgs {
    fn timeouts(&self) -> GroupTimeouts {
        let session = (self.heartbeat.as_millis() as u64 * 3).max(MIN_SESSION_TIMEOUT_MS);
        GroupTimeouts {
            session_ms: session.min(i32::MAX as u64) as i32,
            rebalance_ms: self.timeout.as_millis().min(i32::MAX as u128) as i32,
        }
    }
}

/// Fails with what was being waited for once `deadline` has passed.
pub(crate) fn deadline_check(deadline: Instant, doing: &str) -> Result<(), String> {
    member::deadline_check(deadline, doing).map_err(|e| format!("{e} (raise --timeout-s?)"))
}

/// Runs both scenarios and prints the report.
pub fn run(args: &GroupArgs) -> Result<(), String> {
    if args.partitions < 1 || args.rounds < 1 || args.heartbeat.is_zero() || args.timeout.is_zero()
    {
        return Err(
            "--partitions, --rounds, --heartbeat-ms and --timeout-s must be at least 1".into(),
        );
    }
    let (partitions, mut router) =
        setup_topic(args).map_err(|e| format!("setup of topic {}: {e}", args.topic))?;
    let mut report = Report::new(&args.topic, partitions, args.rounds, args.heartbeat)?;
    for round in 0..args.rounds {
        let s = first_record_round(args, partitions, round, &mut router)
            .map_err(|e| round_error("join-to-first-record", round, args, &e))?;
        report
            .join_to_first_record
            .record(s.join_sync + s.offsets_fetch);
        report.join_sync.record(s.join_sync);
        report.offsets_fetch.record(s.offsets_fetch);
    }
    for round in 0..args.rounds {
        let s = rebalance_round(args, partitions, round)
            .map_err(|e| round_error("rebalance", round, args, &e))?;
        report.rebalance.record(s.total);
        report.rebalance_notice.record(s.notice);
        report
            .rebalance_rejoin
            .record(s.total.saturating_sub(s.notice));
    }
    report.print(args.json);
    Ok(())
}

fn round_error(scenario: &str, round: u32, args: &GroupArgs, e: &str) -> String {
    let (n, of, secs) = (round + 1, args.rounds, args.timeout.as_secs());
    format!("{scenario} round {n} of {of} (deadline {secs} s per round, --timeout-s): {e}")
}

/// Creates the topic (or reuses it, at its real partition count) and writes records to every
/// partition. Returns the partition count, and a router with a connection to each partition's
/// leader (for the rounds' ListOffsets and Fetch requests).
fn setup_topic(args: &GroupArgs) -> Result<(i32, Router), String> {
    let deadline = Instant::now() + args.timeout;
    let bootstrap = parse_bootstrap(&args.brokers).map_err(|e| format!("--brokers: {e}"))?;
    let (mut conn, _) = connect_any(&bootstrap, args.timeout, run::CLIENT_ID)?;
    conn.set_timeout(args.timeout)?;
    conn.create_topic(&args.topic, args.partitions, &[])?;
    let partitions = run::wait_for_leaders(&mut conn, &args.topic, deadline)?;
    if partitions != args.partitions {
        eprintln!(
            "strom-bench: topic {} already exists with {partitions} partitions (not {}); using {partitions}",
            args.topic, args.partitions
        );
    }
    let mut records = PendingBatch::default();
    for i in 0..SETUP_RECORDS_PER_PARTITION {
        records.push(i as u64, None, SETUP_RECORD_BYTES);
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let payload = run::records::payload(SETUP_RECORD_BYTES);
    let batch = run::records::encode(
        &records,
        SETUP_RECORD_BYTES,
        &payload,
        0,
        now_ms,
        Compression::None,
    )?;
    let topics = [args.topic.clone()];
    let cluster = Cluster::discover(&bootstrap, &topics, run::CONNECT_TIMEOUT, run::CLIENT_ID)?;
    let mut router = Router::new(cluster, args.timeout);
    for p in 0..partitions {
        deadline_check(deadline, "producing the setup records")?;
        let error = router.produce_one(&args.topic, p, &batch, 1)?;
        if error != 0 {
            return Err(format!(
                "producing setup records to {}/{p}: {}",
                args.topic,
                wire::code_name(error)
            ));
        }
    }
    let all: Vec<i32> = (0..partitions).collect();
    router.connect_leaders(&args.topic, &all)?;
    Ok((partitions, router))
}

/// A group id no earlier run or round used.
fn unique_group(kind: &str, round: u32) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("strom-bench-{kind}-{}-{nanos}-{round}", std::process::id())
}

/// One join-to-first-record measurement, split at the end of SyncGroup.
struct FirstRecord {
    join_sync: Duration,
    offsets_fetch: Duration,
}

fn first_record_round(
    args: &GroupArgs,
    partitions: i32,
    round: u32,
    router: &mut Router,
) -> Result<FirstRecord, String> {
    let deadline = Instant::now() + args.timeout;
    let group = unique_group("join", round);
    let mut m = Member::connect(
        &args.brokers,
        &group,
        &args.topic,
        partitions,
        args.timeouts(),
        deadline,
    )?;
    let t0 = Instant::now();
    m.join_and_sync(deadline)?;
    let synced = Instant::now();
    if m.assigned().is_empty() {
        return Err(format!(
            "the only member of group {group} was assigned no partitions"
        ));
    }
    let positions = start_positions(&mut m, router, &args.topic)?;
    wait_first_record(router, &args.topic, &positions, deadline)?;
    let first = Instant::now();
    m.leave()?;
    Ok(FirstRecord {
        join_sync: synced - t0,
        offsets_fetch: first - synced,
    })
}

/// Where a consumer starts on its assigned partitions: the committed offset (from the
/// coordinator), or the earliest one (from the partition's leader) where the group has none.
fn start_positions(
    m: &mut Member,
    router: &mut Router,
    topic: &str,
) -> Result<Vec<(i32, i64)>, String> {
    let assigned = m.assigned().to_vec();
    let group = m.group().to_string();
    let committed = m.conn().offset_fetch(&group, topic, &assigned)?;
    let missing: Vec<i32> = committed
        .iter()
        .filter(|&&(_, o)| o < 0)
        .map(|&(p, _)| p)
        .collect();
    if missing.is_empty() {
        return Ok(committed);
    }
    let earliest = router.list_offsets(topic, &missing, -2)?;
    Ok(committed
        .into_iter()
        .filter(|&(_, o)| o >= 0)
        .chain(earliest)
        .collect())
}

/// Fetches `positions` from their leaders (one leader after the other) until a record comes.
fn wait_first_record(
    router: &mut Router,
    topic: &str,
    positions: &[(i32, i64)],
    deadline: Instant,
) -> Result<(), String> {
    let partitions: Vec<i32> = positions.iter().map(|&(p, _)| p).collect();
    let groups = router.cluster.meta.by_leader(topic, &partitions)?;
    loop {
        for (&node, parts) in &groups {
            deadline_check(deadline, &format!("fetching the first record of {topic}"))?;
            let asked: Vec<(i32, i64)> = positions
                .iter()
                .filter(|(p, _)| parts.contains(p))
                .copied()
                .collect();
            for (partition, error, set) in router.conn(node)?.fetch_sets(
                topic,
                &asked,
                FETCH_MAX_WAIT_MS,
                FETCH_PARTITION_MAX_BYTES,
                FETCH_MAX_BYTES,
            )? {
                if error != 0 {
                    return Err(format!(
                        "Fetch {topic}/{partition} from node {node}: {}",
                        wire::code_name(error)
                    ));
                }
                if run::records::walk(&set, |_| {})?.records > 0 {
                    return Ok(());
                }
            }
        }
    }
}

/// One rebalance measurement: `notice` is when A's heartbeat reported the rebalance, `total`
/// when A held the full assignment, both from B's LeaveGroup.
struct Rebalance {
    notice: Duration,
    total: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    A,
    B,
}

enum Event {
    Assigned {
        who: Who,
        generation: i32,
        partitions: usize,
        at: Instant,
    },
    RebalanceNoticed {
        who: Who,
        at: Instant,
    },
    /// `at`: just before LeaveGroup was sent.
    Left {
        who: Who,
        at: Instant,
    },
    Failed {
        who: Who,
        error: String,
    },
}

/// Asks a member thread to leave the group and stop.
struct Leave;

fn rebalance_round(args: &GroupArgs, partitions: i32, round: u32) -> Result<Rebalance, String> {
    let deadline = Instant::now() + args.timeout;
    let group = unique_group("rebalance", round);
    let connect = || {
        Member::connect(
            &args.brokers,
            &group,
            &args.topic,
            partitions,
            args.timeouts(),
            deadline,
        )
    };
    let (a, b) = (connect()?, connect()?);
    let (events_tx, events) = mpsc::channel();
    let (a_tx, a_rx) = mpsc::channel();
    let (b_tx, b_rx) = mpsc::channel();
    let heartbeat = args.heartbeat;
    std::thread::scope(|s| {
        let a_events = events_tx.clone();
        s.spawn(move || run_member(Who::A, a, &a_rx, &a_events, heartbeat, deadline));
        let b_events = events_tx.clone();
        s.spawn(move || run_member(Who::B, b, &b_rx, &b_events, heartbeat, deadline));
        let result = drive_rebalance(
            &events,
            &b_tx,
            partitions as usize,
            leave_phase(round, heartbeat),
            deadline,
        );
        let _ = a_tx.send(Leave);
        let _ = b_tx.send(Leave);
        result
    })
}

/// Delay between the group becoming stable and B leaving, spread evenly over A's heartbeat
/// cycle across rounds (golden-ratio sequence), so the rounds sample every heartbeat phase.
fn leave_phase(round: u32, heartbeat: Duration) -> Duration {
    const GOLDEN: f64 = 0.618_033_988_749_895;
    heartbeat.mul_f64((f64::from(round) * GOLDEN).fract())
}

/// Waits for A and B to be stable in one generation, has B leave and waits for A to hold all
/// partitions in a later generation.
fn drive_rebalance(
    events: &Receiver<Event>,
    b: &Sender<Leave>,
    partitions: usize,
    phase: Duration,
    deadline: Instant,
) -> Result<Rebalance, String> {
    let mut latest = [(-1, 0usize); 2];
    let stable_generation = loop {
        let event = next_event(events, deadline, "both members to be stable")?;
        if let Event::Assigned {
            who,
            generation,
            partitions: n,
            ..
        } = event
        {
            latest[who as usize] = (generation, n);
            let [(ga, na), (gb, nb)] = latest;
            if ga == gb && ga >= 0 && na + nb == partitions {
                break ga;
            }
        }
    };
    std::thread::sleep(phase);
    b.send(Leave)
        .map_err(|_| "member B stopped before it was asked to leave".to_string())?;
    let (mut left, mut noticed, mut full) = (None, None, None);
    while left.is_none() || full.is_none() {
        match next_event(events, deadline, "A to hold every partition after B left")? {
            Event::Left { who: Who::B, at } => left = Some(at),
            Event::RebalanceNoticed { who: Who::A, at } => noticed = noticed.or(Some(at)),
            Event::Assigned {
                who: Who::A,
                generation,
                partitions: n,
                at,
            } if generation > stable_generation && n == partitions => {
                full = Some(at);
            }
            _ => {}
        }
    }
    let (left, full) = (left.unwrap_or(deadline), full.unwrap_or(deadline));
    let noticed = noticed.unwrap_or(full);
    Ok(Rebalance {
        notice: noticed.saturating_duration_since(left),
        total: full.saturating_duration_since(left),
    })
}

/// The next event, turning a member failure or the deadline into an error.
fn next_event(
    events: &Receiver<Event>,
    deadline: Instant,
    waiting_for: &str,
) -> Result<Event, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    match events.recv_timeout(left) {
        Ok(Event::Failed { who, error }) => Err(format!("member {who:?}: {error}")),
        Ok(e) => Ok(e),
        Err(RecvTimeoutError::Timeout) => Err(format!(
            "deadline exceeded waiting for {waiting_for} (raise --timeout-s?)"
        )),
        Err(RecvTimeoutError::Disconnected) => {
            Err(format!("members stopped while waiting for {waiting_for}"))
        }
    }
}

/// A member's life on its own thread: join and sync, report the assignment, heartbeat every
/// `heartbeat` and rejoin when asked, until told to leave or the deadline passes.
fn run_member(
    who: Who,
    mut m: Member,
    cmds: &Receiver<Leave>,
    events: &Sender<Event>,
    heartbeat: Duration,
    deadline: Instant,
) {
    if let Err(error) = member_loop(who, &mut m, cmds, events, heartbeat, deadline) {
        let _ = events.send(Event::Failed { who, error });
    }
}

fn member_loop(
    who: Who,
    m: &mut Member,
    cmds: &Receiver<Leave>,
    events: &Sender<Event>,
    heartbeat: Duration,
    deadline: Instant,
) -> Result<(), String> {
    loop {
        m.join_and_sync(deadline)?;
        let at = Instant::now();
        let _ = events.send(Event::Assigned {
            who,
            generation: m.generation(),
            partitions: m.assigned().len(),
            at,
        });
        loop {
            match cmds.recv_timeout(heartbeat) {
                Ok(Leave) => {
                    let at = Instant::now();
                    m.leave()?;
                    let _ = events.send(Event::Left { who, at });
                    return Ok(());
                }
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
                Err(RecvTimeoutError::Timeout) => {}
            }
            deadline_check(deadline, &format!("member {who:?} heartbeating"))?;
            if m.heartbeat()? == Heartbeat::Rejoin {
                let _ = events.send(Event::RebalanceNoticed {
                    who,
                    at: Instant::now(),
                });
                break;
            }
        }
    }
}
