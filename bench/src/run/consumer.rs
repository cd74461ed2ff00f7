//! One consumer connection: fetches its partitions in a loop and measures end-to-end latency
//! from each record's due time (carried in its value) to its arrival. In a group it joins with
//! the range assignor, heartbeats, rejoins on rebalance and commits its positions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::meter::{Clock, Meter, Window};
use super::records;
use crate::wire::{code_name, Conn};
use strom_client::member::{GroupTimeouts, Heartbeat, Member};

pub struct ConsumerPlan {
    pub brokers: String,
    pub topic: String,
    pub partitions: i32,
    pub consumers: u32,
    pub group: Option<String>,
    pub from_earliest: bool,
    pub fetch_max_wait_ms: i32,
    pub fetch_partition_max_bytes: i32,
    pub fetch_max_bytes: i32,
    /// Measure end-to-end latency (records carry this run's due times).
    pub e2e: bool,
    /// Set when the producers start: the run's clock and measured window. Consumers fetch
    /// only from then on.
    pub go: Arc<OnceLock<(Clock, Window)>>,
}

const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
const COMMIT_INTERVAL: Duration = Duration::from_secs(5);
const GROUP_TIMEOUTS: GroupTimeouts = GroupTimeouts {
    session_ms: 10_000,
    rebalance_ms: 30_000,
};

/// Shared with the main loop: when to stop, and how far the consumers are.
pub struct ConsumerControl {
    pub stop: AtomicBool,
    /// The next offset to read of every partition, as its consumer last reported it (-1: not
    /// positioned yet).
    pub positions: Mutex<Vec<i64>>,
}

impl ConsumerControl {
    pub fn new(partitions: i32) -> ConsumerControl {
        ConsumerControl {
            stop: AtomicBool::new(false),
            positions: Mutex::new(vec![-1; partitions as usize]),
        }
    }

    fn report(&self, positions: &[(i32, i64)]) {
        let mut all = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        for &(p, o) in positions {
            if let Some(slot) = all.get_mut(p as usize) {
                *slot = o;
            }
        }
    }

    /// Whether every partition has been read up to `ends` (one end offset per partition).
    pub fn reached(&self, ends: &[i64]) -> bool {
        let all = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        all.iter().zip(ends).all(|(pos, end)| *pos >= *end)
    }
}

pub struct Consumer {
    thread: JoinHandle<Result<(), String>>,
    pub meter: Arc<Meter>,
}

impl Consumer {
    /// Starts the consumer; `ready` gets one message once it holds its partitions and start
    /// positions (or an error).
    pub fn start(
        index: u32,
        plan: Arc<ConsumerPlan>,
        control: Arc<ConsumerControl>,
        ready: mpsc::Sender<Result<(), String>>,
    ) -> Result<Consumer, String> {
        let meter = Arc::new(Meter::new());
        let m = meter.clone();
        let thread = std::thread::Builder::new()
            .name(format!("consumer-{index}"))
            .spawn(move || {
                let result = consume(index, &plan, &control, &m, &ready);
                if let Err(e) = &result {
                    m.with(|c| c.last_error = Some(e.clone()));
                    let _ = ready.send(Err(e.clone()));
                }
                result
            })
            .map_err(|e| format!("starting a consumer thread: {e}"))?;
        Ok(Consumer { thread, meter })
    }

    pub fn join(self) -> Result<(), String> {
        self.thread
            .join()
            .map_err(|_| "a consumer thread panicked".to_string())?
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }
}

/// The connection, plain or as a group member.
enum Session {
    Plain(Conn),
    Group(Box<Member>),
}

impl Session {
    fn conn(&mut self) -> &mut Conn {
        match self {
            Session::Plain(c) => c,
            Session::Group(m) => m.conn(),
        }
    }
}

fn consume(
    index: u32,
    plan: &ConsumerPlan,
    control: &ConsumerControl,
    meter: &Meter,
    ready: &mpsc::Sender<Result<(), String>>,
) -> Result<(), String> {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    let mut session = match &plan.group {
        Some(group) => {
            let mut m = Member::connect(
                &plan.brokers,
                group,
                &plan.topic,
                plan.partitions,
                GROUP_TIMEOUTS,
                deadline,
            )?;
            m.join_and_sync(deadline)?;
            Session::Group(Box::new(m))
        }
        None => Session::Plain(Conn::connect(&plan.brokers)?),
    };
    session.conn().set_timeout(
        Duration::from_millis(plan.fetch_max_wait_ms.max(0) as u64) + Duration::from_secs(30),
    )?;
    let mut positions = start_positions(&mut session, plan, index)?;
    control.report(&positions);
    let _ = ready.send(Ok(()));
    let (clock, window) = loop {
        if let Some(go) = plan.go.get() {
            break *go;
        }
        if control.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let mut last_heartbeat = Instant::now();
    let mut last_commit = Instant::now();
    // Due times of one partition's records in a fetch; reused across fetches.
    let mut stamps: Vec<u64> = Vec::new();
    while !control.stop.load(Ordering::Relaxed) {
        if let Session::Group(m) = &mut session {
            if last_heartbeat.elapsed() >= HEARTBEAT_INTERVAL {
                last_heartbeat = Instant::now();
                if m.heartbeat()? == Heartbeat::Rejoin {
                    commit(m, plan, &positions)?;
                    m.join_and_sync(Instant::now() + SETUP_TIMEOUT)?;
                    positions = start_positions(&mut session, plan, index)?;
                    control.report(&positions);
                    continue;
                }
            }
            if last_commit.elapsed() >= COMMIT_INTERVAL {
                last_commit = Instant::now();
                commit(m, plan, &positions)?;
            }
        }
        if positions.is_empty() {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let sets = session.conn().fetch_sets(
            &plan.topic,
            &positions,
            plan.fetch_max_wait_ms,
            plan.fetch_partition_max_bytes,
            plan.fetch_max_bytes,
        )?;
        let arrived_ns = clock.now_ns();
        let arrived_unix = clock.unix_base_ns + arrived_ns;
        for (partition, error, set) in sets {
            let Some(pos) = positions.iter_mut().find(|(p, _)| *p == partition) else {
                continue;
            };
            if error != 0 {
                meter.with(|c| {
                    c.error(
                        0,
                        format!("fetch {}/{partition}: {}", plan.topic, code_name(error)),
                    );
                });
                continue;
            }
            let set_bytes = set.len() as u64;
            stamps.clear();
            let walked = records::walk(&set, |ns| stamps.push(ns))?;
            if let Some(next) = walked.next_offset {
                pos.1 = next;
            }
            if walked.records == 0 {
                continue;
            }
            let per_record = set_bytes / walked.records;
            meter.with(|c| {
                if plan.e2e && !stamps.is_empty() {
                    for &unix in &stamps {
                        let due = unix.saturating_sub(clock.unix_base_ns);
                        c.record(
                            due,
                            arrived_ns,
                            Some(arrived_unix.saturating_sub(unix)),
                            per_record,
                            &window,
                        );
                    }
                } else {
                    // No due times to go by: count what arrives inside the window.
                    for _ in 0..walked.records {
                        c.record(arrived_ns, arrived_ns, None, per_record, &window);
                    }
                }
            });
        }
        control.report(&positions);
    }
    if let Session::Group(m) = &mut session {
        commit(m, plan, &positions)?;
        m.leave()?;
    }
    Ok(())
}

fn commit(m: &mut Member, plan: &ConsumerPlan, positions: &[(i32, i64)]) -> Result<(), String> {
    if positions.is_empty() {
        return Ok(());
    }
    let (group, generation, member) = (
        m.group().to_string(),
        m.generation(),
        m.member_id().to_string(),
    );
    m.conn()
        .offset_commit(&group, generation, &member, &plan.topic, positions)
}

/// This consumer's partitions and where it starts in each: the committed offset in a group,
/// otherwise the earliest or latest offset.
fn start_positions(
    session: &mut Session,
    plan: &ConsumerPlan,
    index: u32,
) -> Result<Vec<(i32, i64)>, String> {
    let (partitions, committed) = match session {
        Session::Group(m) => {
            let assigned = m.assigned().to_vec();
            let group = m.group().to_string();
            let committed = if assigned.is_empty() {
                Vec::new()
            } else {
                m.conn().offset_fetch(&group, &plan.topic, &assigned)?
            };
            (assigned, committed)
        }
        Session::Plain(_) => {
            let mine: Vec<i32> = (0..plan.partitions)
                .filter(|p| *p as u32 % plan.consumers == index)
                .collect();
            (mine, Vec::new())
        }
    };
    if partitions.is_empty() {
        return Ok(Vec::new());
    }
    let reset = session.conn().list_offsets(
        &plan.topic,
        &partitions,
        if plan.from_earliest { -2 } else { -1 },
    )?;
    Ok(reset
        .into_iter()
        .map(
            |(p, o)| match committed.iter().find(|(q, c)| *q == p && *c >= 0) {
                Some(&(_, c)) => (p, c),
                None => (p, o),
            },
        )
        .collect())
}
