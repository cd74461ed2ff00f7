//! One producer: a writer thread that generates records on schedule, batches them per
//! partition (linger, batch size) and pipelines Produce requests to each partition's leader
//! (one connection per leader node), and per connection a reader thread that takes the
//! responses in order. A batch refused with NOT_LEADER_OR_FOLLOWER or LEADER_NOT_AVAILABLE is
//! sent again to the leader a Metadata refresh names, a bounded number of times.
//!
//! Fixed-rate producers avoid coordinated omission: record `i` is due at `start + i / rate`
//! whether or not the producer could send it then, and its publish latency runs from that due
//! time to its acknowledgement. Time spent waiting for a free in-flight slot or a batch to
//! fill therefore counts, as it would for an application calling `produce()` on schedule.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::records::Compression;
use strom_client::cluster::{self, Cluster};

use super::meter::{Clock, Meter, Window};
use super::records::{self, key_bytes, PendingBatch};
use super::workload::{Keys, Rate};
use crate::wire::{code_name, Conn};

/// What a producer needs to know; shared by all producers of a run.
pub struct ProducerPlan {
    /// The cluster as Metadata described it when the run started; each producer refreshes its
    /// own copy after leader errors.
    pub cluster: Arc<Cluster>,
    pub topic: String,
    pub partitions: i32,
    pub acks: i16,
    pub compression: Compression,
    pub message_bytes: usize,
    pub keys: Keys,
    pub linger_ns: u64,
    pub batch_bytes: usize,
    pub max_inflight: usize,
    /// This producer's share of the rate.
    pub rate: Rate,
    /// Records this producer may send at most.
    pub max_messages: u64,
    /// Generation stops at this time (the end of the measured window).
    pub end_ns: u64,
    pub window: Window,
    pub payload: Arc<Vec<u8>>,
}

/// How long the writer waits for outstanding responses after generation ends.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// One partition's batch in a request: its records' due times, and the encoded batch and
/// how often it was sent, for sending it again after a leader error.
struct Sent {
    partition: i32,
    due: Vec<u64>,
    batch: Bytes,
    /// Sends so far, this one included.
    attempt: u32,
    /// When it was first sent (run clock).
    first_sent_ns: u64,
}

/// A request on the wire: its correlation id and its batches.
struct InFlight {
    id: i32,
    parts: Vec<Sent>,
}

/// What a reader thread tells the writer.
enum Event {
    /// The link (index) received the answer to one request.
    Answered(usize),
    /// `node` refused a batch with a leader error: refresh Metadata and send it again.
    Retry { node: i32, error: i16, sent: Sent },
    /// The link's connection failed (`error`); `parts` were on it, unanswered. In a cluster
    /// of several brokers they are sent again to the leaders a Metadata refresh names.
    Lost {
        link: usize,
        error: String,
        parts: Vec<Sent>,
    },
}

pub struct Producer {
    writer: JoinHandle<Result<(), String>>,
    stop: Arc<AtomicBool>,
    pub meter: Arc<Meter>,
}

impl Producer {
    /// Connects to the leader of every partition of the topic and starts the writer.
    pub fn start(index: u32, plan: Arc<ProducerPlan>, clock: Clock) -> Result<Producer, String> {
        let all: Vec<i32> = (0..plan.partitions).collect();
        let groups = plan.cluster.meta.by_leader(&plan.topic, &all)?;
        let mut conns = Vec::with_capacity(groups.len());
        for &node in groups.keys() {
            conns.push((node, plan.cluster.connect(node, DRAIN_TIMEOUT)?));
        }
        let meter = Arc::new(Meter::new());
        let m = meter.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let writer = std::thread::Builder::new()
            .name(format!("producer-{index}"))
            .spawn(move || {
                let result = write_loop(index, conns, &groups, &plan, clock, &m, &s);
                if let Err(e) = &result {
                    m.with(|c| c.last_error = Some(e.clone()));
                }
                result
            })
            .map_err(|e| format!("starting a producer thread: {e}"))?;
        Ok(Producer {
            writer,
            stop,
            meter,
        })
    }

    /// Ends generation early; what is queued is still sent.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    pub fn is_finished(&self) -> bool {
        self.writer.is_finished()
    }

    /// Waits for the producer to send everything and get every answer.
    pub fn join(self) -> Result<(), String> {
        self.writer
            .join()
            .map_err(|_| "a producer thread panicked".to_string())?
    }
}

/// Picks keys and partitions: murmur2 of the key, or a sticky partition for null keys that
/// moves on after every batch, like the Java and librdkafka producers.
struct Partitioner {
    keys: Keys,
    partitions: i32,
    next_key: u64,
    rng: u64,
    sticky: i32,
    key_buf: Vec<u8>,
}

impl Partitioner {
    fn new(keys: Keys, partitions: i32, seed: u32) -> Partitioner {
        Partitioner {
            keys,
            partitions,
            next_key: u64::from(seed),
            rng: 0x9e37_79b9_7f4a_7c15 ^ (u64::from(seed) + 1),
            sticky: (seed as i32) % partitions,
            key_buf: Vec::new(),
        }
    }

    fn next(&mut self) -> (Option<u32>, i32) {
        let key = match self.keys {
            Keys::None => return (None, self.sticky),
            Keys::RoundRobin(n) => {
                self.next_key += 1;
                (self.next_key % u64::from(n)) as u32
            }
            Keys::Random(n) => {
                self.rng ^= self.rng << 13;
                self.rng ^= self.rng >> 7;
                self.rng ^= self.rng << 17;
                (self.rng % u64::from(n)) as u32
            }
        };
        key_bytes(key, &mut self.key_buf);
        (
            Some(key),
            records::partition_for_key(&self.key_buf, self.partitions),
        )
    }

    fn batch_sent(&mut self, partition: i32) {
        if partition == self.sticky {
            self.sticky = (self.sticky + 1) % self.partitions;
        }
    }
}

/// Records waiting to be sent: one open batch per partition, and closed (full) batches in the
/// order they filled. A request carries at most one batch per partition, as Kafka requires.
struct Accumulator<'a> {
    plan: &'a ProducerPlan,
    open: Vec<PendingBatch>,
    full: VecDeque<(i32, PendingBatch)>,
    partitioner: Partitioner,
    /// Records in open and full batches.
    records: usize,
}

impl<'a> Accumulator<'a> {
    fn new(plan: &'a ProducerPlan, index: u32) -> Accumulator<'a> {
        Accumulator {
            plan,
            open: (0..plan.partitions)
                .map(|_| PendingBatch::default())
                .collect(),
            full: VecDeque::new(),
            partitioner: Partitioner::new(plan.keys, plan.partitions, index),
            records: 0,
        }
    }

    /// Adds one record due at `due`; returns the bytes it takes.
    fn push(&mut self, due: u64) -> usize {
        let (key, p) = self.partitioner.next();
        // Value, key ("key-" + digits) and about 8 bytes of record framing.
        let bytes = self.plan.message_bytes + key.map_or(0, |_| 12) + 8;
        let open = &mut self.open[p as usize];
        if !open.is_empty() && open.bytes + bytes > self.plan.batch_bytes {
            self.full.push_back((p, std::mem::take(open)));
            self.partitioner.batch_sent(p);
        }
        self.open[p as usize].push(due, key, bytes);
        self.records += 1;
        bytes
    }

    /// When the next batch of a partition for which `sendable` holds is due to be sent: 0
    /// for a full one, else the oldest open batch's linger deadline (u64::MAX: none).
    fn next_linger_deadline(&self, sendable: impl Fn(i32) -> bool) -> u64 {
        if self.full.iter().any(|(p, _)| sendable(*p)) {
            return 0;
        }
        self.open
            .iter()
            .enumerate()
            .filter(|(p, b)| !b.is_empty() && sendable(*p as i32))
            .map(|(_, b)| b.due_ns[0] + self.plan.linger_ns)
            .min()
            .unwrap_or(u64::MAX)
    }

    /// The encoded batches of the next request, among the partitions for which `sendable`
    /// holds: full batches first, then open ones that lingered long enough (all of them with
    /// `flush_all`).
    fn take_ready(
        &mut self,
        now: u64,
        flush_all: bool,
        clock: Clock,
        sendable: impl Fn(i32) -> bool,
    ) -> Result<Vec<Sent>, String> {
        let mut taken: Vec<(i32, PendingBatch)> = Vec::new();
        let mut i = 0;
        while i < self.full.len() {
            let p = self.full[i].0;
            if !sendable(p) || taken.iter().any(|(q, _)| *q == p) {
                i += 1;
            } else if let Some(b) = self.full.remove(i) {
                taken.push(b);
            }
        }
        for (p, open) in self.open.iter_mut().enumerate() {
            let p = p as i32;
            let ready = !open.is_empty()
                && sendable(p)
                && (flush_all
                    || open.bytes >= self.plan.batch_bytes
                    || open.due_ns[0] + self.plan.linger_ns <= now);
            if ready && !taken.iter().any(|(q, _)| *q == p) {
                taken.push((p, std::mem::take(open)));
                self.partitioner.batch_sent(p);
            }
        }
        let mut out = Vec::with_capacity(taken.len());
        for (p, b) in taken {
            self.records -= b.due_ns.len();
            let batch = records::encode(
                &b,
                self.plan.message_bytes,
                &self.plan.payload,
                clock.unix_base_ns,
                clock.unix_ms(now),
                self.plan.compression,
            )?;
            out.push(Sent {
                partition: p,
                due: b.due_ns,
                batch,
                attempt: 1,
                first_sent_ns: now,
            });
        }
        Ok(out)
    }
}

/// One connection of a producer, to one leader node.
struct Link {
    node: i32,
    conn: Conn,
    /// Requests on the wire, for the reader (None with acks=0, or once the writer is done).
    info_tx: Option<mpsc::Sender<InFlight>>,
    reader: Option<JoinHandle<Result<(), String>>>,
    inflight: usize,
    /// Why the connection failed; a failed link is not used again.
    failed: Option<String>,
}

/// The writer thread's state: its links, which link serves each partition, and the batches
/// waiting for a Metadata refresh before they are sent again.
struct Writer<'a> {
    index: u32,
    plan: &'a ProducerPlan,
    clock: Clock,
    meter: &'a Arc<Meter>,
    cluster: Cluster,
    /// Whether a failed connection is worked around (Metadata lists several brokers, so
    /// another can take over a partition) rather than ending the run.
    resilient: bool,
    links: Vec<Link>,
    /// Partition to index in `links`.
    route: Vec<usize>,
    /// The links `route` uses, each once.
    routed: Vec<usize>,
    events_tx: mpsc::Sender<Event>,
    /// Batches to send again after a Metadata refresh: (why, batch).
    retries: Vec<(String, Sent)>,
    /// When the pending Metadata refresh is due (run clock), if one is.
    refresh_at: Option<u64>,
    /// Since when (run clock) some partition has been routed to a failed link.
    stranded_since: Option<u64>,
    /// The last note printed, so that a cause that persists is noted once.
    last_note: String,
}

fn write_loop(
    index: u32,
    conns: Vec<(i32, Conn)>,
    groups: &BTreeMap<i32, Vec<i32>>,
    plan: &ProducerPlan,
    clock: Clock,
    meter: &Arc<Meter>,
    stop: &AtomicBool,
) -> Result<(), String> {
    let (events_tx, events_rx) = mpsc::channel::<Event>();
    let mut w = Writer {
        index,
        plan,
        clock,
        meter,
        cluster: plan.cluster.as_ref().clone(),
        resilient: plan.cluster.meta.brokers.len() > 1,
        links: Vec::new(),
        route: vec![0; plan.partitions as usize],
        routed: Vec::new(),
        events_tx,
        retries: Vec::new(),
        refresh_at: None,
        stranded_since: None,
        last_note: String::new(),
    };
    let result = w
        .start(conns, groups)
        .and_then(|()| w.run(stop, &events_rx));
    let read = w.finish();
    result.clone()?;
    read?;
    result
}

impl Writer<'_> {
    fn start(
        &mut self,
        conns: Vec<(i32, Conn)>,
        groups: &BTreeMap<i32, Vec<i32>>,
    ) -> Result<(), String> {
        for (node, conn) in conns {
            let l = self.add_link(node, conn)?;
            for &p in groups.get(&node).into_iter().flatten() {
                self.route[p as usize] = l;
            }
        }
        self.update_routed();
        Ok(())
    }

    /// A link to `node` over `conn`, with its reader thread (unless acks=0).
    fn add_link(&mut self, node: i32, conn: Conn) -> Result<usize, String> {
        let l = self.links.len();
        let (info_tx, reader) = if self.plan.acks != 0 {
            let (info_tx, info_rx) = mpsc::channel::<InFlight>();
            let reader = Reader {
                link: l,
                node,
                conn: conn.try_clone()?,
                events: self.events_tx.clone(),
                clock: self.clock,
                meter: self.meter.clone(),
                window: self.plan.window,
                message_bytes: self.plan.message_bytes as u64,
                resilient: self.resilient,
            };
            let reader = std::thread::Builder::new()
                .name(format!("producer-{}-acks", self.index))
                .spawn(move || reader.run(info_rx))
                .map_err(|e| format!("starting a producer reader thread: {e}"))?;
            (Some(info_tx), Some(reader))
        } else {
            (None, None)
        };
        self.links.push(Link {
            node,
            conn,
            info_tx,
            reader,
            inflight: 0,
            failed: None,
        });
        Ok(l)
    }

    /// The working link to `node`, connecting to it if there is none.
    fn link_to(&mut self, node: i32) -> Result<usize, String> {
        if let Some(l) = self
            .links
            .iter()
            .position(|l| l.node == node && l.failed.is_none())
        {
            return Ok(l);
        }
        let conn = self.cluster.connect(node, DRAIN_TIMEOUT)?;
        self.add_link(node, conn)
    }

    fn update_routed(&mut self) {
        self.routed.clear();
        for &l in &self.route {
            if !self.routed.contains(&l) {
                self.routed.push(l);
            }
        }
    }

    fn free(&self, l: usize) -> bool {
        self.links[l].failed.is_none() && self.links[l].inflight < self.plan.max_inflight
    }

    fn inflight(&self) -> usize {
        self.links.iter().map(|l| l.inflight).sum()
    }

    /// Schedules a Metadata refresh (unless one is); notes why on stderr, once per cause.
    fn schedule_refresh(&mut self, why: &str) {
        if self.refresh_at.is_none() {
            let now = self.clock.now_ns();
            self.refresh_at = Some(now + cluster::ROUTE_BACKOFF.as_nanos() as u64);
            if self.last_note != why {
                eprintln!(
                    "strom-bench: producer {}: {why}; refreshing Metadata",
                    self.index
                );
                self.last_note = why.to_string();
            }
        }
    }

    /// Writes one request with `parts` on link `l`.
    fn send(&mut self, l: usize, parts: Vec<Sent>) -> Result<(), String> {
        let plan = self.plan;
        let link = &mut self.links[l];
        let batches = parts
            .iter()
            .map(|s| (s.partition, s.batch.clone()))
            .collect();
        let id = match link
            .conn
            .send_produce_parts(&plan.topic, batches, plan.acks)
        {
            Ok(id) => id,
            Err(e) if !self.resilient => return Err(e),
            Err(e) => {
                let e = format!("node {}: {e}", link.node);
                self.link_failed(l, &e);
                for sent in parts {
                    self.retry(e.clone(), sent);
                }
                return Ok(());
            }
        };
        let Some(info_tx) = &link.info_tx else {
            // acks=0: done once written.
            let now = self.clock.now_ns();
            self.meter.with(|c| {
                for s in &parts {
                    for &d in &s.due {
                        c.record(d, now, None, plan.message_bytes as u64, &plan.window);
                    }
                }
            });
            return Ok(());
        };
        info_tx
            .send(InFlight { id, parts })
            .map_err(|_| reader_error(self.meter))?;
        link.inflight += 1;
        Ok(())
    }

    /// Takes link `l` out of use after its connection failed.
    fn link_failed(&mut self, l: usize, error: &str) {
        let link = &mut self.links[l];
        if link.failed.is_some() {
            return;
        }
        link.failed = Some(error.to_string());
        // The reader hands back what was in flight, then ends once the queue is closed.
        link.info_tx = None;
        link.inflight = 0;
        self.schedule_refresh(error);
    }

    /// Queues `sent` to be sent again after a Metadata refresh, or counts its records as
    /// errors once it was sent `ROUTE_ATTEMPTS` times or first sent `ROUTE_TIMEOUT` ago.
    fn retry(&mut self, why: String, sent: Sent) {
        let waited = Duration::from_nanos(self.clock.now_ns().saturating_sub(sent.first_sent_ns));
        if sent.attempt >= cluster::ROUTE_ATTEMPTS || waited >= cluster::ROUTE_TIMEOUT {
            let what = format!(
                "partition {}: {why}, after {} sends in {:.1} s",
                sent.partition,
                sent.attempt,
                waited.as_secs_f64()
            );
            self.meter.with(|c| c.error(sent.due.len() as u64, what));
            return;
        }
        self.schedule_refresh(&format!("{}/{}: {why}", self.plan.topic, sent.partition));
        self.retries.push((why, sent));
    }

    fn on_event(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Answered(l) => {
                self.links[l].inflight = self.links[l].inflight.saturating_sub(1);
            }
            Event::Retry { node, error, sent } => {
                let why = format!("{} from node {node}", code_name(error));
                self.retry(why, sent);
            }
            Event::Lost { link, error, parts } => {
                if !self.resilient {
                    return Err(error);
                }
                self.link_failed(link, &error);
                for sent in parts {
                    self.retry(error.clone(), sent);
                }
            }
        }
        Ok(())
    }

    /// Refreshes Metadata, routes every partition to the leader it names (a partition without
    /// one, or whose leader cannot be reached, keeps its link) and sends the queued batches
    /// again. Fails once a partition has had no working link for `ROUTE_TIMEOUT`.
    fn refresh(&mut self) -> Result<(), String> {
        self.refresh_at = None;
        self.cluster.refresh()?;
        let mut unreachable = BTreeMap::new();
        for p in 0..self.plan.partitions {
            let node = match self.cluster.meta.leader(&self.plan.topic, p) {
                Ok(node) => node,
                Err(e) => {
                    unreachable.insert(p, e);
                    continue;
                }
            };
            match self.link_to(node) {
                Ok(l) => self.route[p as usize] = l,
                Err(e) if self.resilient => {
                    unreachable.insert(p, e);
                }
                Err(e) => return Err(e),
            }
        }
        self.update_routed();
        let now = self.clock.now_ns();
        let stranded: Vec<i32> = (0..self.plan.partitions)
            .filter(|&p| self.links[self.route[p as usize]].failed.is_some())
            .collect();
        if stranded.is_empty() {
            self.stranded_since = None;
        } else {
            let since = *self.stranded_since.get_or_insert(now);
            let first = stranded[0];
            let why = unreachable
                .remove(&first)
                .or_else(|| self.links[self.route[first as usize]].failed.clone())
                .unwrap_or_default();
            let waited = Duration::from_nanos(now - since);
            if waited >= cluster::ROUTE_TIMEOUT {
                return Err(format!(
                    "{} partitions {stranded:?}: no reachable leader for {:.1} s (last: {why})",
                    self.plan.topic,
                    waited.as_secs_f64()
                ));
            }
            self.schedule_refresh(&format!(
                "{} partitions {stranded:?}: {why}",
                self.plan.topic
            ));
        }
        let mut waiting = Vec::new();
        for (why, mut sent) in std::mem::take(&mut self.retries) {
            let l = self.route[sent.partition as usize];
            if self.links[l].failed.is_some() {
                waiting.push((why, sent));
                continue;
            }
            sent.attempt += 1;
            self.send(l, vec![sent])?;
        }
        self.retries.extend(waiting);
        Ok(())
    }

    fn run(&mut self, stop: &AtomicBool, events: &mpsc::Receiver<Event>) -> Result<(), String> {
        let plan = self.plan;
        let clock = self.clock;
        let per_message_ns = match plan.rate {
            Rate::Max => 0.0,
            Rate::Messages(r) => 1e9 / r,
        };
        let mut acc = Accumulator::new(plan, self.index);
        let mut generated = 0u64;
        loop {
            while let Ok(event) = events.try_recv() {
                self.on_event(event)?;
            }
            let now = clock.now_ns();
            if self.refresh_at.is_some_and(|t| t <= now) {
                self.refresh()?;
            }
            let generating =
                now < plan.end_ns && generated < plan.max_messages && !stop.load(Ordering::Relaxed);
            // Generate what is due: on schedule, or (max rate) a batch's worth when every
            // leader's connection has a free slot.
            if generating {
                match plan.rate {
                    Rate::Messages(_) => loop {
                        let due = (generated as f64 * per_message_ns) as u64;
                        if due > now || due >= plan.end_ns || generated >= plan.max_messages {
                            break;
                        }
                        acc.push(due);
                        generated += 1;
                    },
                    Rate::Max => {
                        if acc.records == 0 && self.routed.iter().all(|&l| self.free(l)) {
                            let mut bytes = 0;
                            while bytes < plan.batch_bytes && generated < plan.max_messages {
                                bytes += acc.push(now);
                                generated += 1;
                            }
                        }
                    }
                }
            }
            // Send, on every leader's connection with a free slot, the batches that are full,
            // lingered long enough, or final.
            if acc.records > 0 {
                let flush_all = !generating || plan.rate == Rate::Max;
                let mut sent = false;
                for i in 0..self.routed.len() {
                    let l = self.routed[i];
                    if !self.free(l) {
                        continue;
                    }
                    let route = &self.route;
                    let parts =
                        acc.take_ready(now, flush_all, clock, |p| route[p as usize] == l)?;
                    if !parts.is_empty() {
                        self.send(l, parts)?;
                        sent = true;
                    }
                }
                if sent {
                    continue;
                }
            }
            if !generating && acc.records == 0 && self.retries.is_empty() && self.inflight() == 0 {
                return Ok(());
            }
            // Wait for the next due record, the oldest sendable batch's linger, a Metadata
            // refresh, or an answer (which frees a slot).
            let mut wake = u64::MAX;
            if self.routed.iter().any(|&l| self.free(l)) {
                if generating {
                    if let Rate::Messages(_) = plan.rate {
                        wake = (generated as f64 * per_message_ns) as u64;
                    }
                }
                let links = &self.links;
                let route = &self.route;
                wake = wake.min(acc.next_linger_deadline(|p| {
                    let link = &links[route[p as usize]];
                    link.failed.is_none() && link.inflight < plan.max_inflight
                }));
            }
            if let Some(t) = self.refresh_at {
                wake = wake.min(t);
            }
            let now = clock.now_ns();
            if wake <= now {
                continue;
            }
            let timeout = if wake == u64::MAX {
                if plan.acks == 0 {
                    Duration::from_micros(100)
                } else {
                    DRAIN_TIMEOUT
                }
            } else {
                Duration::from_nanos(wake - now)
            };
            if plan.acks == 0 {
                std::thread::sleep(timeout.min(Duration::from_millis(1)));
                continue;
            }
            match events.recv_timeout(timeout) {
                Ok(event) => self.on_event(event)?,
                Err(RecvTimeoutError::Timeout)
                    if timeout == DRAIN_TIMEOUT && self.inflight() > 0 =>
                {
                    return Err(format!(
                        "no Produce response within {} s",
                        DRAIN_TIMEOUT.as_secs()
                    ))
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err(reader_error(self.meter)),
            }
        }
    }

    /// Closes the request queues and waits for the readers: the first error of any.
    fn finish(&mut self) -> Result<(), String> {
        for link in &mut self.links {
            link.info_tx = None;
        }
        let mut result = Ok(());
        for link in &mut self.links {
            if let Some(r) = link.reader.take() {
                let read = r
                    .join()
                    .map_err(|_| "a producer reader thread panicked".to_string())
                    .and_then(|read| read);
                if result.is_ok() {
                    result = read;
                }
            }
        }
        result
    }
}

fn reader_error(meter: &Meter) -> String {
    meter
        .with(|c| c.last_error.clone())
        .unwrap_or_else(|| "the response reader stopped".to_string())
}

/// The reader thread of one link: takes the answers in order, records latency for the accepted
/// batches and errors for the refused ones, and hands batches refused with a leader error (or
/// left unanswered by a failed connection) back to the writer.
struct Reader {
    link: usize,
    node: i32,
    conn: Conn,
    events: mpsc::Sender<Event>,
    clock: Clock,
    meter: Arc<Meter>,
    window: Window,
    message_bytes: u64,
    resilient: bool,
}

impl Reader {
    fn run(mut self, info_rx: mpsc::Receiver<InFlight>) -> Result<(), String> {
        let (link, node, window, message_bytes) =
            (self.link, self.node, self.window, self.message_bytes);
        while let Ok(req) = info_rx.recv() {
            let errors = match self.conn.recv_produce_errors(req.id) {
                Ok(e) => e,
                Err(e) if !self.resilient => {
                    self.meter.with(|c| c.last_error = Some(e.clone()));
                    let _ = self.events.send(Event::Lost {
                        link,
                        error: e.clone(),
                        parts: Vec::new(),
                    });
                    return Err(e);
                }
                Err(e) => {
                    // What is in flight goes back to the writer, which closes the queue.
                    let e = format!("node {node}: {e}");
                    let mut parts = req.parts;
                    loop {
                        let _ = self.events.send(Event::Lost {
                            link,
                            error: e.clone(),
                            parts,
                        });
                        match info_rx.recv() {
                            Ok(req) => parts = req.parts,
                            Err(_) => return Ok(()),
                        }
                    }
                }
            };
            let now = self.clock.now_ns();
            let mut retry = Vec::new();
            self.meter.with(|c| {
                for sent in req.parts {
                    let error = errors
                        .iter()
                        .find(|(p, _)| *p == sent.partition)
                        .map_or(-1, |&(_, e)| e);
                    if cluster::is_leader_error(error) {
                        retry.push((error, sent));
                        continue;
                    }
                    if error != 0 {
                        let what = if error < 0 {
                            "no answer".to_string()
                        } else {
                            code_name(error)
                        };
                        c.error(
                            sent.due.len() as u64,
                            format!("partition {}: {what}", sent.partition),
                        );
                        continue;
                    }
                    for &d in &sent.due {
                        c.record(d, now, Some(now.saturating_sub(d)), message_bytes, &window);
                    }
                }
            });
            for (error, sent) in retry {
                let _ = self.events.send(Event::Retry { node, error, sent });
            }
            if self.events.send(Event::Answered(link)).is_err() {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strom_client::cluster::{BrokerMeta, Metadata, PartitionMeta, TopicMeta};

    /// A plan for `topic` with three partitions led by nodes 0, 1 and 0.
    fn plan() -> ProducerPlan {
        let meta = Metadata {
            brokers: (0..2)
                .map(|n| BrokerMeta {
                    node_id: n,
                    host: format!("127.0.1.{}", n + 1),
                    port: 9092,
                })
                .collect(),
            topics: vec![TopicMeta {
                name: "t".into(),
                error: 0,
                partitions: [0, 1, 0]
                    .iter()
                    .enumerate()
                    .map(|(p, &leader)| PartitionMeta {
                        partition: p as i32,
                        error: 0,
                        leader,
                    })
                    .collect(),
            }],
        };
        let bootstrap = vec!["127.0.1.1:9092".to_string()];
        let cluster = Cluster::from_metadata(
            &bootstrap,
            &["t".to_string()],
            &bootstrap[0],
            meta,
            Duration::from_secs(1),
            "test",
        );
        ProducerPlan {
            cluster: Arc::new(cluster),
            topic: "t".into(),
            partitions: 3,
            acks: 1,
            compression: Compression::None,
            message_bytes: 10,
            keys: Keys::RoundRobin(30),
            linger_ns: 1_000,
            batch_bytes: 1 << 20,
            max_inflight: 5,
            rate: Rate::Max,
            max_messages: 100,
            end_ns: u64::MAX,
            window: Window {
                from_ns: 0,
                to_ns: u64::MAX,
            },
            payload: Arc::new(records::payload(10)),
        }
    }

    #[test]
    fn batches_are_taken_per_leader() {
        let plan = plan();
        let groups = plan.cluster.meta.by_leader("t", &[0, 1, 2]).unwrap();
        assert_eq!(
            groups.into_iter().collect::<Vec<_>>(),
            vec![(0, vec![0, 2]), (1, vec![1])]
        );
        let leader = |p: i32| plan.cluster.meta.leader("t", p).unwrap();
        let mut acc = Accumulator::new(&plan, 0);
        for due in 0..30 {
            acc.push(due);
        }
        let clock = Clock::new();
        // Node 1's connection takes only partition 1; node 0's the others.
        let to_1 = acc.take_ready(0, true, clock, |p| leader(p) == 1).unwrap();
        assert_eq!(to_1.len(), 1);
        assert_eq!(to_1[0].partition, 1);
        assert!(!to_1[0].due.is_empty() && to_1[0].attempt == 1);
        assert_eq!(acc.next_linger_deadline(|p| leader(p) == 1), u64::MAX);
        assert_eq!(acc.next_linger_deadline(|p| leader(p) == 0), 1_000);
        let to_0 = acc.take_ready(0, true, clock, |p| leader(p) == 0).unwrap();
        let mut parts: Vec<i32> = to_0.iter().map(|s| s.partition).collect();
        parts.sort_unstable();
        assert_eq!(parts, vec![0, 2]);
        let records: usize = to_1.iter().chain(&to_0).map(|s| s.due.len()).sum();
        assert_eq!(records, 30);
        assert_eq!(acc.records, 0);
    }
}
