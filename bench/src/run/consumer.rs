//! One consumer: fetches its partitions in a loop, each from its leader (one connection per
//! leader node, each with a Fetch in flight), and measures end-to-end latency from each
//! record's due time (carried in its value) to its arrival. In a group it joins with the range
//! assignor, heartbeats, rejoins on rebalance and commits its positions over its own connection
//! to the coordinator. A partition refused with NOT_LEADER_OR_FOLLOWER or LEADER_NOT_AVAILABLE
//! is fetched again from the leader a Metadata refresh names, a bounded number of times.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::meter::{Clock, Meter, Window};
use super::records;
use crate::wire::{code_name, Conn};
use strom_client::cluster::{self, Cluster, Router};
use strom_client::member::{GroupTimeouts, Heartbeat, Member};

pub struct ConsumerPlan {
    /// The `--brokers` list, for the group member's bootstrap.
    pub brokers: String,
    /// The cluster as Metadata described it when the run started; each consumer refreshes its
    /// own copy after leader errors.
    pub cluster: Arc<Cluster>,
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

/// A connection to one leader node, with at most one Fetch in flight.
struct Fetcher {
    /// The address it was opened to (a refresh that moves the node closes it).
    addr: String,
    conn: Conn,
    inflight: Option<Pending>,
}

/// A Fetch request in flight.
struct Pending {
    id: i32,
    sent: Instant,
    /// The positions it asked for.
    asked: Vec<(i32, i64)>,
}

/// A partition refused with a leader error: not fetched again until the next Metadata refresh.
struct Held {
    /// Why, for the error message once retrying ends.
    why: String,
    /// When the first of these refusals in a row came.
    since: Instant,
    /// Refusals in a row.
    times: u32,
    /// Set until the next refresh.
    paused: bool,
}

/// The consumer's connections: one per leader of its partitions, each with a Fetch in flight,
/// so that a long poll at one leader does not hold up the others.
struct Fetchers {
    cluster: Cluster,
    /// Whether a failed connection is worked around (Metadata lists several brokers, so
    /// another can take over a partition) rather than ending the run.
    resilient: bool,
    io_timeout: Duration,
    by_node: BTreeMap<i32, Fetcher>,
    held: BTreeMap<i32, Held>,
    refresh_at: Option<Instant>,
    /// The last note printed, so that a cause that persists is noted once.
    last_note: String,
}

/// The answer of one node's Fetch: the positions it asked for, and (partition, error, records).
struct Answer {
    node: i32,
    asked: Vec<(i32, i64)>,
    sets: Vec<(i32, i16, Bytes)>,
}

impl Fetchers {
    fn new(cluster: Cluster, io_timeout: Duration) -> Fetchers {
        Fetchers {
            resilient: cluster.meta.brokers.len() > 1,
            cluster,
            io_timeout,
            by_node: BTreeMap::new(),
            held: BTreeMap::new(),
            refresh_at: None,
            last_note: String::new(),
        }
    }

    /// Takes over connections another client opened (node, address, connection).
    fn adopt(&mut self, conns: Vec<(i32, String, Conn)>) -> Result<(), String> {
        for (node, addr, conn) in conns {
            if let std::collections::btree_map::Entry::Vacant(e) = self.by_node.entry(node) {
                conn.set_timeout(self.io_timeout)?;
                e.insert(Fetcher {
                    addr,
                    conn,
                    inflight: None,
                });
            }
        }
        Ok(())
    }

    fn fetcher(&mut self, node: i32) -> Result<&mut Fetcher, String> {
        if !self.by_node.contains_key(&node) {
            let addr = self.cluster.address(node)?;
            let conn = self.cluster.connect(node, self.io_timeout)?;
            self.by_node.insert(
                node,
                Fetcher {
                    addr,
                    conn,
                    inflight: None,
                },
            );
        }
        self.by_node
            .get_mut(&node)
            .ok_or_else(|| format!("no connection to node {node}"))
    }

    /// Notes that `partition` was refused (`why`); fails once that has gone on for
    /// `ROUTE_ATTEMPTS` refusals or `ROUTE_TIMEOUT`.
    fn hold(&mut self, partition: i32, why: String) -> Result<(), String> {
        let now = Instant::now();
        let h = self.held.entry(partition).or_insert(Held {
            why: String::new(),
            since: now,
            times: 0,
            paused: false,
        });
        h.why = why;
        h.times += 1;
        h.paused = true;
        if h.times > cluster::ROUTE_ATTEMPTS || h.since.elapsed() > cluster::ROUTE_TIMEOUT {
            return Err(format!(
                "{}; still so after {} Metadata refreshes in {:.1} s",
                h.why,
                h.times - 1,
                h.since.elapsed().as_secs_f64()
            ));
        }
        if self.refresh_at.is_none() {
            self.refresh_at = Some(now + cluster::ROUTE_BACKOFF);
            if self.last_note != h.why {
                eprintln!("strom-bench: {}; refreshing Metadata", h.why);
                self.last_note.clone_from(&h.why);
            }
        }
        Ok(())
    }

    /// Refreshes Metadata if a refresh is due; held partitions are then fetched again, from
    /// the leader it names.
    fn refresh_if_due(&mut self) -> Result<(), String> {
        if self.refresh_at.is_none_or(|t| Instant::now() < t) {
            return Ok(());
        }
        self.refresh_at = None;
        self.cluster.refresh()?;
        let cluster = &self.cluster;
        self.by_node
            .retain(|node, f| cluster.address(*node).is_ok_and(|a| a == f.addr));
        for h in self.held.values_mut() {
            h.paused = false;
        }
        Ok(())
    }

    /// Sends a Fetch for `positions` to every leader that has none in flight.
    fn send(
        &mut self,
        topic: &str,
        positions: &[(i32, i64)],
        plan: &ConsumerPlan,
    ) -> Result<(), String> {
        let mut groups: BTreeMap<i32, Vec<(i32, i64)>> = BTreeMap::new();
        for &(p, offset) in positions {
            if self.held.get(&p).is_some_and(|h| h.paused) {
                continue;
            }
            match self.cluster.meta.leader(topic, p) {
                Ok(node) => groups.entry(node).or_default().push((p, offset)),
                Err(e) => self.hold(p, format!("fetch {e}"))?,
            }
        }
        for (node, asked) in groups {
            let sent = self.fetcher(node).and_then(|f| {
                if f.inflight.is_none() {
                    let id = f.conn.send_fetch(
                        topic,
                        &asked,
                        plan.fetch_max_wait_ms,
                        plan.fetch_partition_max_bytes,
                        plan.fetch_max_bytes,
                    )?;
                    f.inflight = Some(Pending {
                        id,
                        sent: Instant::now(),
                        asked: asked.clone(),
                    });
                }
                Ok(())
            });
            match sent {
                Ok(()) => {}
                Err(e) if !self.resilient => return Err(e),
                Err(e) => self.lost(
                    node,
                    &asked,
                    &format!("fetch {topic} from node {node}: {e}"),
                )?,
            }
        }
        Ok(())
    }

    /// Closes the connection to `node`, which failed, and holds the partitions it was asked
    /// for until a Metadata refresh names their leaders.
    fn lost(&mut self, node: i32, asked: &[(i32, i64)], why: &str) -> Result<(), String> {
        self.by_node.remove(&node);
        for &(p, _) in asked {
            self.hold(p, why.to_string())?;
        }
        Ok(())
    }

    fn recv(&mut self, node: i32) -> Result<Option<Answer>, String> {
        let Some(f) = self.by_node.get_mut(&node) else {
            return Ok(None);
        };
        let Some(Pending { id, asked, .. }) = f.inflight.take() else {
            return Ok(None);
        };
        match f.conn.recv_fetch(id) {
            Ok(sets) => Ok(Some(Answer { node, asked, sets })),
            Err(e) if !self.resilient => Err(e),
            Err(e) => {
                self.lost(node, &asked, &format!("fetch from node {node}: {e}"))?;
                Ok(None)
            }
        }
    }

    /// Waits for the answers of the Fetch requests in flight: with one, until it comes (the
    /// socket timeout bounds it); with several, until at least one comes or about a fetch
    /// wait has passed. Returns the answers that came.
    fn wait(&mut self, fetch_max_wait: Duration) -> Result<Vec<Answer>, String> {
        let waiting: Vec<i32> = self
            .by_node
            .iter()
            .filter(|(_, f)| f.inflight.is_some())
            .map(|(n, _)| *n)
            .collect();
        let until_refresh = self
            .refresh_at
            .map(|t| t.saturating_duration_since(Instant::now()));
        if waiting.is_empty() {
            // Everything is held until the next refresh.
            let pause = until_refresh.unwrap_or(IDLE_PAUSE).min(IDLE_PAUSE);
            std::thread::sleep(pause.max(Duration::from_millis(1)));
            return Ok(Vec::new());
        }
        if waiting.len() == 1 && until_refresh.is_none() {
            return Ok(self.recv(waiting[0])?.into_iter().collect());
        }
        let timeout = (fetch_max_wait + POLL_MARGIN).min(until_refresh.unwrap_or(Duration::MAX));
        let mut fds: Vec<libc::pollfd> = waiting
            .iter()
            .map(|n| libc::pollfd {
                fd: self.by_node[n].conn.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is an initialized array of `fds.len()` pollfd structs, which poll only
        // reads and writes the `revents` of, and it outlives the call.
        let ready = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                timeout.as_millis().min(i32::MAX as u128) as i32,
            )
        };
        if ready < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(Vec::new());
            }
            return Err(format!("waiting for Fetch responses: {e}"));
        }
        let mut answers = Vec::new();
        for (fd, node) in fds.iter().zip(&waiting) {
            if fd.revents != 0 {
                answers.extend(self.recv(*node)?);
            } else if let Some(pending) = &self.by_node[node].inflight {
                if pending.sent.elapsed() > self.io_timeout {
                    return Err(format!(
                        "no Fetch response from node {node} within {} ms",
                        self.io_timeout.as_millis()
                    ));
                }
            }
        }
        Ok(answers)
    }
}

/// Longest pause while every partition waits for a Metadata refresh.
const IDLE_PAUSE: Duration = Duration::from_millis(50);
/// Beyond the fetch wait, how long to wait for one of several leaders' answers before
/// looking at the stop flag and the group again.
const POLL_MARGIN: Duration = Duration::from_millis(100);

fn consume(
    index: u32,
    plan: &ConsumerPlan,
    control: &ConsumerControl,
    meter: &Meter,
    ready: &mpsc::Sender<Result<(), String>>,
) -> Result<(), String> {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    let mut member = match &plan.group {
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
            Some(Box::new(m))
        }
        None => None,
    };
    let fetch_max_wait = Duration::from_millis(plan.fetch_max_wait_ms.max(0) as u64);
    let io_timeout = fetch_max_wait + Duration::from_secs(30);
    if let Some(m) = &mut member {
        m.conn().set_timeout(io_timeout)?;
    }
    let cluster = plan.cluster.as_ref().clone();
    let mut router = Router::new(cluster.clone(), io_timeout);
    let mut fetchers = Fetchers::new(cluster, io_timeout);
    let mut positions = start_positions(member.as_deref_mut(), &mut router, plan, index)?;
    // The connections that asked for the start offsets fetch from then on.
    fetchers.adopt(router.take_conns())?;
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
        if let Some(m) = &mut member {
            if last_heartbeat.elapsed() >= HEARTBEAT_INTERVAL {
                last_heartbeat = Instant::now();
                if m.heartbeat()? == Heartbeat::Rejoin {
                    commit(m, plan, &positions)?;
                    m.join_and_sync(Instant::now() + SETUP_TIMEOUT)?;
                    positions = start_positions(Some(&mut **m), &mut router, plan, index)?;
                    fetchers.adopt(router.take_conns())?;
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
        fetchers.refresh_if_due()?;
        fetchers.send(&plan.topic, &positions, plan)?;
        let answers = fetchers.wait(fetch_max_wait)?;
        let arrived_ns = clock.now_ns();
        let arrived_unix = clock.unix_base_ns + arrived_ns;
        for Answer { node, asked, sets } in answers {
            for (partition, error, set) in sets {
                let Some(pos) = positions.iter_mut().find(|(p, _)| *p == partition) else {
                    continue;
                };
                // An answer to positions that have moved since (a rejoin) is stale.
                if !asked.contains(&(partition, pos.1)) {
                    continue;
                }
                if cluster::is_leader_error(error) {
                    fetchers.hold(
                        partition,
                        format!(
                            "fetch {}/{partition}: {} from node {node}, its leader in Metadata",
                            plan.topic,
                            code_name(error)
                        ),
                    )?;
                    continue;
                }
                if error != 0 {
                    meter.with(|c| {
                        c.error(
                            0,
                            format!("fetch {}/{partition}: {}", plan.topic, code_name(error)),
                        );
                    });
                    continue;
                }
                fetchers.held.remove(&partition);
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
        }
        control.report(&positions);
    }
    if let Some(m) = &mut member {
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

/// This consumer's partitions and where it starts in each: the committed offset in a group
/// (asked of the coordinator), otherwise the earliest or latest offset (asked of each
/// partition's leader).
fn start_positions(
    member: Option<&mut Member>,
    router: &mut Router,
    plan: &ConsumerPlan,
    index: u32,
) -> Result<Vec<(i32, i64)>, String> {
    let (partitions, committed) = match member {
        Some(m) => {
            let assigned = m.assigned().to_vec();
            let group = m.group().to_string();
            let committed = if assigned.is_empty() {
                Vec::new()
            } else {
                m.conn().offset_fetch(&group, &plan.topic, &assigned)?
            };
            (assigned, committed)
        }
        None => {
            let mine: Vec<i32> = (0..plan.partitions)
                .filter(|p| *p as u32 % plan.consumers == index)
                .collect();
            (mine, Vec::new())
        }
    };
    if partitions.is_empty() {
        return Ok(Vec::new());
    }
    let reset = router.list_offsets(
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

#[cfg(test)]
mod tests {
    use super::*;
    use strom_client::cluster::{BrokerMeta, Metadata};

    #[test]
    fn a_partition_refused_again_and_again_ends_in_an_error_naming_it() {
        let meta = Metadata {
            brokers: vec![BrokerMeta {
                node_id: 0,
                host: "127.0.0.1".into(),
                port: 9092,
            }],
            topics: Vec::new(),
        };
        let bootstrap = vec!["127.0.0.1:9092".to_string()];
        let cluster = Cluster::from_metadata(
            &bootstrap,
            &[],
            &bootstrap[0],
            meta,
            Duration::from_secs(1),
            "test",
        );
        let mut f = Fetchers::new(cluster, Duration::from_secs(1));
        let why = "fetch t/3: NotLeaderOrFollower (6) from node 0, its leader in Metadata";
        for _ in 0..cluster::ROUTE_ATTEMPTS {
            f.hold(3, why.to_string()).unwrap();
            assert!(f.held[&3].paused && f.refresh_at.is_some());
        }
        let e = f.hold(3, why.to_string()).unwrap_err();
        assert!(
            e.starts_with(why) && e.contains("Metadata refreshes"),
            "{e}"
        );
    }
}
