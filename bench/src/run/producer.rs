//! One producer connection: a writer thread that generates records on schedule, batches them
//! per partition (linger, batch size) and pipelines Produce requests, and a reader thread that
//! takes the responses in order.
//!
//! Fixed-rate producers avoid coordinated omission: record `i` is due at `start + i / rate`
//! whether or not the producer could send it then, and its publish latency runs from that due
//! time to its acknowledgement. Time spent waiting for a free in-flight slot or a batch to
//! fill therefore counts, as it would for an application calling `produce()` on schedule.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::records::Compression;

use super::meter::{Clock, Meter, Window};
use super::records::{self, key_bytes, PendingBatch};
use super::workload::{Keys, Rate};
use crate::wire::{code_name, Conn};

/// What a producer needs to know; shared by all producers of a run.
pub struct ProducerPlan {
    pub brokers: String,
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

/// A request on the wire: its correlation id and, per partition, the due times of its records.
struct InFlight {
    id: i32,
    parts: Vec<(i32, Vec<u64>)>,
}

pub struct Producer {
    writer: JoinHandle<Result<(), String>>,
    stop: Arc<AtomicBool>,
    pub meter: Arc<Meter>,
}

impl Producer {
    pub fn start(index: u32, plan: Arc<ProducerPlan>, clock: Clock) -> Result<Producer, String> {
        let conn = Conn::connect(&plan.brokers)?;
        conn.set_timeout(DRAIN_TIMEOUT)?;
        let meter = Arc::new(Meter::new());
        let m = meter.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let writer = std::thread::Builder::new()
            .name(format!("producer-{index}"))
            .spawn(move || {
                let result = write_loop(index, conn, &plan, clock, &m, &s);
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

    fn next_linger_deadline(&self) -> u64 {
        if !self.full.is_empty() {
            return 0;
        }
        self.open
            .iter()
            .filter(|b| !b.is_empty())
            .map(|b| b.due_ns[0] + self.plan.linger_ns)
            .min()
            .unwrap_or(u64::MAX)
    }

    /// The encoded batches of the next request, and the due times of their records: full
    /// batches first, then open ones that lingered long enough (all of them with `flush_all`).
    #[allow(
        clippy::type_complexity,
        reason = "a pair of plain vectors used by one caller; an alias would only hide them"
    )]
    fn take_ready(
        &mut self,
        now: u64,
        flush_all: bool,
        clock: Clock,
    ) -> Result<(Vec<(i32, Bytes)>, Vec<(i32, Vec<u64>)>), String> {
        let mut taken: Vec<(i32, PendingBatch)> = Vec::new();
        let mut i = 0;
        while i < self.full.len() {
            if taken.iter().any(|(p, _)| *p == self.full[i].0) {
                i += 1;
            } else if let Some(b) = self.full.remove(i) {
                taken.push(b);
            }
        }
        for (p, open) in self.open.iter_mut().enumerate() {
            let p = p as i32;
            let ready = !open.is_empty()
                && (flush_all
                    || open.bytes >= self.plan.batch_bytes
                    || open.due_ns[0] + self.plan.linger_ns <= now);
            if ready && !taken.iter().any(|(q, _)| *q == p) {
                taken.push((p, std::mem::take(open)));
                self.partitioner.batch_sent(p);
            }
        }
        let mut parts = Vec::with_capacity(taken.len());
        let mut dues = Vec::with_capacity(taken.len());
        for (p, b) in taken {
            self.records -= b.due_ns.len();
            let encoded = records::encode(
                &b,
                self.plan.message_bytes,
                &self.plan.payload,
                clock.unix_base_ns,
                clock.unix_ms(now),
                self.plan.compression,
            )?;
            parts.push((p, encoded));
            dues.push((p, b.due_ns));
        }
        Ok((parts, dues))
    }
}

fn write_loop(
    index: u32,
    mut conn: Conn,
    plan: &ProducerPlan,
    clock: Clock,
    meter: &Arc<Meter>,
    stop: &AtomicBool,
) -> Result<(), String> {
    let (info_tx, info_rx) = mpsc::channel::<InFlight>();
    let (ack_tx, ack_rx) = mpsc::channel::<()>();
    let reader = if plan.acks != 0 {
        let rconn = conn.try_clone()?;
        let m = meter.clone();
        let window = plan.window;
        let bytes = plan.message_bytes as u64;
        Some(
            std::thread::Builder::new()
                .name(format!("producer-{index}-acks"))
                .spawn(move || read_loop(rconn, info_rx, ack_tx, clock, &m, window, bytes))
                .map_err(|e| format!("starting a producer reader thread: {e}"))?,
        )
    } else {
        drop(info_rx);
        drop(ack_tx);
        None
    };

    let per_message_ns = match plan.rate {
        Rate::Max => 0.0,
        Rate::Messages(r) => 1e9 / r,
    };
    let mut acc = Accumulator::new(plan, index);
    let mut generated = 0u64;
    let mut inflight = 0usize;
    let result = loop {
        while ack_rx.try_recv().is_ok() {
            inflight -= 1;
        }
        let now = clock.now_ns();
        let generating =
            now < plan.end_ns && generated < plan.max_messages && !stop.load(Ordering::Relaxed);
        // Generate what is due: on schedule, or (max rate) a batch's worth when a slot is free.
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
                    if inflight < plan.max_inflight && acc.records == 0 {
                        let mut bytes = 0;
                        while bytes < plan.batch_bytes && generated < plan.max_messages {
                            bytes += acc.push(now);
                            generated += 1;
                        }
                    }
                }
            }
        }
        // Send the batches that are full, lingered long enough, or final.
        if inflight < plan.max_inflight && acc.records > 0 {
            let flush_all = !generating || plan.rate == Rate::Max;
            let (parts, dues) = acc.take_ready(now, flush_all, clock)?;
            if !parts.is_empty() {
                if let Err(e) = send(&mut conn, plan, parts, dues, &info_tx, clock, meter) {
                    break Err(e);
                }
                if plan.acks != 0 {
                    inflight += 1;
                }
                continue;
            }
        }
        if !generating && acc.records == 0 {
            break Ok(());
        }
        // Wait for the next due record, the oldest batch's linger, or a free slot.
        let mut wake = u64::MAX;
        if generating {
            if let Rate::Messages(_) = plan.rate {
                wake = (generated as f64 * per_message_ns) as u64;
            }
        }
        if inflight < plan.max_inflight {
            wake = wake.min(acc.next_linger_deadline());
        }
        let now = clock.now_ns();
        if wake <= now && inflight < plan.max_inflight {
            continue;
        }
        let timeout = if inflight >= plan.max_inflight || wake == u64::MAX {
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
        match ack_rx.recv_timeout(timeout) {
            Ok(()) => inflight -= 1,
            Err(RecvTimeoutError::Timeout) if inflight >= plan.max_inflight => {
                break Err(format!(
                    "no Produce response within {} s",
                    DRAIN_TIMEOUT.as_secs()
                ))
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break Err(reader_error(meter)),
        }
    };
    drop(info_tx);
    if let Some(r) = reader {
        let read = r
            .join()
            .map_err(|_| "a producer reader thread panicked".to_string())?;
        result.clone()?;
        read?;
    }
    result
}

fn reader_error(meter: &Meter) -> String {
    meter
        .with(|c| c.last_error.clone())
        .unwrap_or_else(|| "the response reader stopped".to_string())
}

fn send(
    conn: &mut Conn,
    plan: &ProducerPlan,
    parts: Vec<(i32, Bytes)>,
    dues: Vec<(i32, Vec<u64>)>,
    info_tx: &mpsc::Sender<InFlight>,
    clock: Clock,
    meter: &Meter,
) -> Result<(), String> {
    let id = conn.send_produce_parts(&plan.topic, parts, plan.acks)?;
    if plan.acks == 0 {
        let now = clock.now_ns();
        meter.with(|c| {
            for (_, due) in &dues {
                for &d in due {
                    c.record(d, now, None, plan.message_bytes as u64, &plan.window);
                }
            }
        });
        return Ok(());
    }
    info_tx
        .send(InFlight { id, parts: dues })
        .map_err(|_| reader_error(meter))
}

fn read_loop(
    mut conn: Conn,
    info_rx: mpsc::Receiver<InFlight>,
    ack_tx: mpsc::Sender<()>,
    clock: Clock,
    meter: &Meter,
    window: Window,
    message_bytes: u64,
) -> Result<(), String> {
    for req in info_rx {
        let errors = match conn.recv_produce_errors(req.id) {
            Ok(e) => e,
            Err(e) => {
                meter.with(|c| c.last_error = Some(e.clone()));
                return Err(e);
            }
        };
        let now = clock.now_ns();
        meter.with(|c| {
            for (partition, due) in &req.parts {
                let error = errors
                    .iter()
                    .find(|(p, _)| p == partition)
                    .map_or(-1, |&(_, e)| e);
                if error != 0 {
                    let what = if error < 0 {
                        "no answer".to_string()
                    } else {
                        code_name(error)
                    };
                    c.error(due.len() as u64, format!("partition {partition}: {what}"));
                    continue;
                }
                for &d in due {
                    c.record(d, now, Some(now.saturating_sub(d)), message_bytes, &window);
                }
            }
        });
        if ack_tx.send(()).is_err() {
            break;
        }
    }
    Ok(())
}
