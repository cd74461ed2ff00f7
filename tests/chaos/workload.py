"""The clients of a chaos run and the history they write.

- Producers (confluent-kafka, acks=all): producer 0 idempotent, producer 1 not. Each writes
  unique values `p<producer>-<seq>` with the key `p<producer>-k<seq % KEYS>` to the partition
  of its key, at a bounded rate and up to a bounded count, and records every delivery report:
  `ack` (partition, offset) or `nack` (error). A producer that hits a fatal error is replaced
  by a new one with the next producer number.
- Readers: one assigned consumer per partition from the beginning (`r<partition>`) and one
  member of a consumer group (`g0`), recording every record they get in order (`poll`). A
  reader's `session` changes only when it is (re)positioned: a new group assignment, or an
  offset reset (auto.offset.reset=error, so that a reset is seen rather than hidden).
- The final read: every partition from the beginning to its high watermark, after the last
  fault is healed and the producers have stopped (`final`).

The history is a JSON-lines file; `t` is seconds since the run started (monotonic), the same
clock as the fault log. Every loop is bounded in count and in time.
"""

import json
import logging
import re
import threading
import time
import traceback
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition

TOPIC = "chaos"
PARTITIONS = 3
KEYS = 6  # keys per producer; key j lives on partition j % PARTITIONS
RATE_PER_PRODUCER = 250  # messages per second
MAX_OUTSTANDING = 5000  # unacknowledged messages per producer before it waits
MESSAGE_TIMEOUT_MS = 30000  # longer than any fault keeps a partition unavailable
MAX_PRODUCER_REPLACEMENTS = 5  # per producer role: fatal errors beyond this end the role
MAX_READER_RESETS = 20
CONSUME_BATCH = 500
FINAL_CHUNK = 2000  # records per `final` line
GROUP = "chaos-group"

VALUE_RE = re.compile(r"^p(\d+)-(\d+)$")


def value_of(producer: int, seq: int) -> str:
    return f"p{producer}-{seq}"


def key_of(producer: int, seq: int) -> str:
    return f"p{producer}-k{seq % KEYS}"


def partition_of(seq: int) -> int:
    return (seq % KEYS) % PARTITIONS


def parse_value(value: Optional[str]) -> Optional[Tuple[int, int]]:
    """(producer, seq) of a value this workload writes, else None."""
    m = VALUE_RE.match(value or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def _text(b: Optional[bytes]) -> Optional[str]:
    if b is None:
        return None
    try:
        return b.decode()
    except UnicodeDecodeError:
        return "0x" + b.hex()


class History:
    """A thread-safe JSON-lines writer; `now()` is the run's clock."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.t0 = time.monotonic()
        self._f = open(self.path, "w")
        self._lock = threading.Lock()

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 4)

    def write(self, event: dict):
        event.setdefault("t", self.now())
        line = json.dumps(event, separators=(",", ":"))
        with self._lock:
            self._f.write(line + "\n")

    def close(self):
        with self._lock:
            self._f.close()


def client_conf(bootstrap: str, logger: logging.Logger) -> dict:
    # No broker.address.family=v4: librdkafka then resolves with AI_ADDRCONFIG, which finds no
    # IPv4 address in a namespace that has only `lo`.
    return {"bootstrap.servers": bootstrap, "logger": logger}


class ProducerWorker(threading.Thread):
    """One producer role (idempotent or not) in its own thread; delivery callbacks run in it."""

    def __init__(self, workload: "Workload", idempotent: bool):
        super().__init__(daemon=True, name=f"chaos-producer-{'idem' if idempotent else 'plain'}")
        self.w = workload
        self.idempotent = idempotent
        self.producer_id = -1
        self.sent = 0
        self.acked = 0
        self.nacked = 0
        self.fatal: Optional[str] = None
        self.error: Optional[BaseException] = None
        self.error_at = ""
        self.first_ack = threading.Event()

    def conf(self) -> dict:
        conf = {**client_conf(self.w.bootstrap, self.w.logger), "acks": "all", "linger.ms": 5,
                "enable.idempotence": self.idempotent, "message.timeout.ms": MESSAGE_TIMEOUT_MS,
                "client.id": f"chaos-p{self.producer_id}", "error_cb": self.on_error}
        return conf

    def on_error(self, err: KafkaError):
        if err.fatal():
            self.fatal = f"{err.name()}: {err.str()}"
        self.w.history.write({"type": "producer-error", "producer": self.producer_id, "error": err.name(),
                              "message": err.str(), "fatal": err.fatal()})

    def on_delivery(self, err: Optional[KafkaError], msg):
        value = _text(msg.value())
        if err is None:
            self.acked += 1
            self.w.history.write({"type": "ack", "producer": self.producer_id, "value": value,
                                  "partition": msg.partition(), "offset": msg.offset()})
            self.first_ack.set()
        else:
            self.nacked += 1
            self.w.history.write({"type": "nack", "producer": self.producer_id, "value": value,
                                  "partition": msg.partition(), "error": err.name(), "code": err.code(),
                                  "retriable": err.retriable()})

    def call(self, method, *args, **kw):
        """A Producer method; a fatal error it raises (poll, produce, flush and purge do, once
        the producer is in a fatal state) ends this producer instance instead of the thread."""
        try:
            return method(*args, **kw)
        except KafkaException as e:
            if not e.args[0].fatal():
                raise
            self.fatal = self.fatal or f"{e.args[0].name()}: {e.args[0].str()}"
            return None

    def run(self):
        try:
            for _ in range(MAX_PRODUCER_REPLACEMENTS + 1):
                self.produce_until_done()
                if self.fatal is None or self.w.stopping.is_set():
                    return
        except BaseException as e:  # noqa: BLE001 - reported by the run
            self.error = e
            self.error_at = traceback.format_exc(limit=-2)

    def produce_until_done(self):
        """One producer instance: paced, bounded production until the workload stops, the cap
        is reached or a fatal error; then its outstanding messages are flushed or purged."""
        self.producer_id = self.w.new_producer_id()
        self.fatal = None
        self.sent = 0
        self.w.history.write({"type": "producer", "producer": self.producer_id, "idempotent": self.idempotent})
        p = Producer(self.conf())
        started = time.monotonic()
        try:
            while (not self.w.stopping.is_set() and self.fatal is None and self.sent < self.w.max_messages
                   and time.monotonic() < self.w.deadline):
                allowed = int((time.monotonic() - started) * self.w.rate) + 1
                if self.sent >= allowed or len(p) >= MAX_OUTSTANDING:
                    self.call(p.poll, 0.005)
                    continue
                seq = self.sent
                try:
                    self.call(p.produce, TOPIC, value=value_of(self.producer_id, seq).encode(),
                              key=key_of(self.producer_id, seq).encode(), partition=partition_of(seq),
                              on_delivery=self.on_delivery)
                except BufferError:
                    self.call(p.poll, 0.01)
                    continue
                if self.fatal is None:
                    self.sent += 1
                    self.call(p.poll, 0)
            left = self.call(p.flush, self.w.flush_s if self.fatal is None else 1.0)
            if left:
                # Purged messages are reported as nacks (_PURGE_QUEUE / _PURGE_INFLIGHT): their
                # outcome is unknown, as for any error.
                self.call(p.purge)
                self.call(p.flush, 2.0)
        finally:
            self.w.history.write({"type": "producer-end", "producer": self.producer_id, "sent": self.sent,
                                  "unresolved": len(p), "fatal": self.fatal})


class Reader(threading.Thread):
    """A consumer recording what it reads; assigned to one partition, or a group member."""

    def __init__(self, workload: "Workload", name: str, partition: Optional[int]):
        super().__init__(daemon=True, name=f"chaos-reader-{name}")
        self.w = workload
        self.reader = name
        self.partition = partition  # None: the group member
        self.session = 0
        self.resets = 0
        self.positions: Dict[int, int] = {}
        self.records = 0
        self.error: Optional[BaseException] = None
        self.error_at = ""
        self.stop = threading.Event()

    def conf(self) -> dict:
        conf = {**client_conf(self.w.bootstrap, self.w.logger), "check.crcs": True, "enable.partition.eof": False,
                "client.id": f"chaos-{self.reader}"}
        if self.partition is None:
            conf.update({"group.id": GROUP, "auto.offset.reset": "earliest", "enable.auto.commit": True,
                         "session.timeout.ms": 10000})
        else:
            conf.update({"group.id": f"chaos-{self.reader}", "auto.offset.reset": "error",
                         "enable.auto.commit": False})
        return conf

    def new_session(self, why: str, partitions: List[int]):
        self.session += 1
        for p in partitions:
            self.positions.pop(p, None)
        self.w.history.write({"type": "session", "reader": self.reader, "session": self.session, "why": why,
                              "partitions": partitions})

    def run(self):
        try:
            self.consume()
        except BaseException as e:  # noqa: BLE001 - reported by the run
            self.error = e
            self.error_at = traceback.format_exc(limit=-2)

    def consume(self):
        c = Consumer(self.conf())
        try:
            if self.partition is None:
                c.subscribe([TOPIC], on_assign=lambda _, parts: self.new_session(
                    "assign", sorted(tp.partition for tp in parts)))
            else:
                c.assign([TopicPartition(TOPIC, self.partition, OFFSET_BEGINNING)])
                self.new_session("assign", [self.partition])
            while not self.stop.is_set() and time.monotonic() < self.w.deadline:
                batches: Dict[int, list] = {}
                for m in c.consume(CONSUME_BATCH, 0.2):
                    err = m.error()
                    if err is not None:
                        self.w.history.write({"type": "reader-error", "reader": self.reader,
                                              "partition": m.partition(), "error": err.name(),
                                              "message": err.str()})
                        if (err.code() in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE)
                                and self.partition is not None and self.resets < MAX_READER_RESETS):
                            self.resets += 1
                            c.assign([TopicPartition(TOPIC, self.partition, OFFSET_BEGINNING)])
                            self.new_session("offset-reset", [self.partition])
                        continue
                    p = m.partition()
                    batches.setdefault(p, []).append([m.offset(), _text(m.key()), _text(m.value())])
                    self.positions[p] = m.offset() + 1
                for p, recs in batches.items():
                    self.records += len(recs)
                    self.w.history.write({"type": "poll", "reader": self.reader, "session": self.session,
                                          "partition": p, "records": recs})
        finally:
            c.close()


class Workload:
    def __init__(self, history: History, bootstrap: str, logger: logging.Logger, rate: int = RATE_PER_PRODUCER,
                 max_messages: int = 10**6, max_seconds: float = 3600.0, flush_s: float = 40.0):
        self.history = history
        self.bootstrap = bootstrap
        self.logger = logger
        self.rate = rate
        self.max_messages = max_messages
        self.deadline = time.monotonic() + max_seconds
        self.flush_s = flush_s
        self.stopping = threading.Event()
        self._ids = 0
        self._ids_lock = threading.Lock()
        self.producers = [ProducerWorker(self, idempotent=True), ProducerWorker(self, idempotent=False)]
        self.readers = [Reader(self, f"r{p}", p) for p in range(PARTITIONS)] + [Reader(self, "g0", None)]

    def new_producer_id(self) -> int:
        with self._ids_lock:
            self._ids += 1
            return self._ids - 1

    def start(self):
        for t in self.producers + self.readers:
            t.start()

    def wait_first_acks(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for p in self.producers:
            if not p.first_ack.wait(max(0.0, deadline - time.monotonic())):
                return False
        return True

    def stop_producers(self, timeout: float):
        self.stopping.set()
        for p in self.producers:
            p.join(timeout)

    def drain_readers(self, timeout: float) -> bool:
        """Waits until the assigned readers reached the high watermarks (they then have seen all
        they can see), then stops every reader."""
        marks = watermarks(self.bootstrap, self.logger, timeout=min(timeout, 30.0))
        deadline = time.monotonic() + timeout
        done = False
        while marks and time.monotonic() < deadline:
            if all(r.positions.get(r.partition, 0) >= marks[r.partition][1]
                   for r in self.readers if r.partition is not None):
                done = True
                break
            time.sleep(0.1)
        for r in self.readers:
            r.stop.set()
        for r in self.readers:
            r.join(30)
        return done

    def errors(self) -> List[str]:
        out = []
        for t in self.producers + self.readers:
            if t.error is not None:
                out.append(f"{t.name}: {type(t.error).__name__}: {t.error}\n{t.error_at}")
            if t.is_alive():
                out.append(f"{t.name}: still running")
        return out


def watermarks(bootstrap: str, logger: logging.Logger, timeout: float) -> Dict[int, Tuple[int, int]]:
    """{partition: (low, high)}, retried until every leader answers or `timeout`; {} if not."""
    c = Consumer({**client_conf(bootstrap, logger), "group.id": "chaos-watermarks"})
    deadline = time.monotonic() + timeout
    marks: Dict[int, Tuple[int, int]] = {}
    try:
        while len(marks) < PARTITIONS and time.monotonic() < deadline:
            for p in range(PARTITIONS):
                if p in marks:
                    continue
                try:
                    marks[p] = c.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=5)
                except KafkaException:
                    time.sleep(0.2)
    finally:
        c.close()
    return marks if len(marks) == PARTITIONS else {}


def final_read(history: History, bootstrap: str, logger: logging.Logger, timeout: float) -> dict:
    """Reads every partition from the beginning to its high watermark into the history
    (`final` lines, then one `final-end`); returns the `final-end` event."""
    marks = watermarks(bootstrap, logger, timeout=min(timeout, 60.0))
    errors: List[str] = []
    positions: Dict[int, int] = {}
    if not marks:
        errors.append("the high watermarks could not be read")
    else:
        c = Consumer({**client_conf(bootstrap, logger), "group.id": "chaos-final", "enable.auto.commit": False,
                      "auto.offset.reset": "error", "check.crcs": True, "enable.partition.eof": False})
        try:
            c.assign([TopicPartition(TOPIC, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
            positions = {p: marks[p][0] for p in range(PARTITIONS)}
            pending: Dict[int, list] = {p: [] for p in range(PARTITIONS)}
            deadline = time.monotonic() + timeout
            while any(positions[p] < marks[p][1] for p in range(PARTITIONS)) and len(errors) < 100:
                if time.monotonic() > deadline:
                    errors.append(f"the final read did not reach the high watermarks {marks} within "
                                  f"{timeout:.0f} s (positions {positions})")
                    break
                for m in c.consume(CONSUME_BATCH, 0.5):
                    if m.error() is not None:
                        errors.append(f"partition {m.partition()}: {m.error().name()}: {m.error().str()}")
                        continue
                    p = m.partition()
                    pending[p].append([m.offset(), _text(m.key()), _text(m.value())])
                    positions[p] = max(positions[p], m.offset() + 1)
                    if len(pending[p]) >= FINAL_CHUNK:
                        history.write({"type": "final", "partition": p, "records": pending[p]})
                        pending[p] = []
            for p, recs in pending.items():
                if recs:
                    history.write({"type": "final", "partition": p, "records": recs})
        finally:
            c.close()
    end = {"type": "final-end", "marks": {str(p): list(m) for p, m in marks.items()},
           "positions": {str(p): o for p, o in positions.items()},
           "complete": bool(marks) and not errors, "errors": errors[:20]}
    history.write(end)
    return end


def client_logger(path: Path) -> logging.Logger:
    """librdkafka's logs of every client go to one file of the run, not to stderr."""
    logger = logging.getLogger(f"chaos.clients.{path}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger.addHandler(handler)
    return logger
