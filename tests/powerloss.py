"""Power-loss cycles against one data directory: produce with acks=all, SIGKILL the broker, cut
every file back to what a power loss could have left (from the broker's sync journal,
`test.fault.sync.journal`), restart, read everything back and check that no acknowledged record
was lost and nothing corrupt, foreign, duplicated or reordered is served.

A library (`run`, used by test_power_loss.py) and a command line:

    python tests/powerloss.py --cycles N [--seed S] [--bin PATH] [--workdir DIR] [--cores C]

The seed fixes every random choice of the harness (when to kill, how each file is damaged);
what the producers managed to send by then depends on timing, so a seed reproduces the kind of
run, not its bytes. Exit status 0 when every cycle passed, 1 on any violation, 2 on bad usage.
"""

import argparse
import os
import random
import re
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # noqa: E402 - conftest's Broker reports startup failures through pytest.fail

from conftest import Broker, port_has_listener  # noqa: E402

TOPIC = "powerloss"
PARTITIONS = 2
PRODUCERS = 2  # producer 0 is idempotent, producer 1 is not
SEGMENT_BYTES = 262144  # small, so that segments roll within a few cycles
KILL_AFTER_S = (0.3, 2.0)
RATE_PER_PRODUCER = 1500  # messages per second; keeps records flowing until the kill
MAX_PER_PRODUCER = 4000  # per cycle; bounds the log, which is read in full after every cycle
STARTUP_MESSAGES = 100  # sent before the first acknowledgement
MAX_OUTSTANDING = 1000  # unacknowledged messages per producer before it waits
PAGE = 4096
MODES = ("truncate", "zero", "partial", "hole")
SHOWN = 10  # violations of one kind listed in full; the rest are counted


def broker_settings(journal: Path) -> Dict[str, str]:
    return {
        "test.fault.sync.journal": str(journal),
        "log.segment.bytes": str(SEGMENT_BYTES),
        # The default, stated because the checks depend on it: acks=all is answered after the
        # fdatasync that covers the batch, and consumers see only fdatasynced records.
        "log.flush.on.ack": "true",
    }


def make_value(cycle: int, producer: int, seq: int) -> bytes:
    # Varying lengths, so that batches and file positions do not repeat with a period.
    pad = "x" * ((seq * 37 + cycle * 11 + producer * 5) % 300)
    return f"c{cycle}-p{producer}-{seq}-{pad}".encode()


def make_key(producer: int, seq: int) -> bytes:
    return f"k{producer}-{seq % 16}".encode()


def partition_of(seq: int) -> int:
    # Explicit, so that every producer writes every partition in every cycle.
    return seq % PARTITIONS


# ---------------------------------------------------------------------------------------------
# Power-loss emulation


def parse_journal(path: Path) -> Dict[Tuple[int, int], int]:
    """{(st_dev, st_ino): durable bytes} from the sync journal, in line order: `create` resets a
    file to 0 durable bytes, `trunc N` caps it at N, `sync N` makes its first N bytes durable.
    A sync never makes less durable than an earlier one did (two syncs of one file may finish
    out of order); only create and trunc take durability back."""
    durable: Dict[Tuple[int, int], int] = {}
    if not path.exists():
        return durable
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if len(parts) != 4:
                raise ValueError(f"{path}:{lineno}: malformed journal line {line!r}")
            dev, ino, op, n = int(parts[0]), int(parts[1]), parts[2], int(parts[3])
            key = (dev, ino)
            if op == "create":
                durable[key] = 0
            elif op == "trunc":
                durable[key] = min(durable.get(key, 0), n)
            elif op == "sync":
                durable[key] = max(durable.get(key, 0), n)
            else:
                raise ValueError(f"{path}:{lineno}: unknown journal operation {op!r}")
    return durable


@dataclass
class PowerLoss:
    files: int = 0  # files damaged
    bytes_cut: int = 0  # removed by truncation
    bytes_zeroed: int = 0  # overwritten with zeros
    modes: Dict[str, int] = field(default_factory=dict)
    details: List[str] = field(default_factory=list)

    def add(self, other: "PowerLoss"):
        self.files += other.files
        self.bytes_cut += other.bytes_cut
        self.bytes_zeroed += other.bytes_zeroed
        for k, v in other.modes.items():
            self.modes[k] = self.modes.get(k, 0) + v


def zero_range(path: str, start: int, end: int):
    with open(path, "r+b") as f:
        f.seek(start)
        left = end - start
        while left > 0:
            n = min(left, 1 << 20)
            f.write(b"\0" * n)
            left -= n


def apply_power_loss(data_dir: Path, durable: Dict[Tuple[int, int], int], rnd: random.Random) -> PowerLoss:
    """Damages every regular file under `data_dir` that is longer than its durable length, one
    seeded mode per file: `truncate` to the durable length, `zero` from it to the end (size kept,
    as when the size reached the disk but the data did not), `partial` truncation somewhere
    between, or a `hole`: one zeroed 4 KiB-aligned range after the durable length with the rest
    kept, as writeback in arbitrary page order leaves it."""
    out = PowerLoss()
    for root, dirs, files in os.walk(data_dir):
        dirs.sort()  # a deterministic order, so that the seed decides every file's mode
        for name in sorted(files):
            path = os.path.join(root, name)
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                continue
            keep = durable.get((st.st_dev, st.st_ino), 0)
            size = st.st_size
            if size <= keep:
                continue
            mode = rnd.choice(MODES)
            if mode == "hole":
                first_page = -(-keep // PAGE) * PAGE
                if first_page >= size:
                    mode = "zero"  # the tail lies in the durable length's own page
            if mode == "truncate":
                os.truncate(path, keep)
                out.bytes_cut += size - keep
                what = f"truncate {size}->{keep}"
            elif mode == "zero":
                zero_range(path, keep, size)
                out.bytes_zeroed += size - keep
                what = f"zero [{keep},{size})"
            elif mode == "partial":
                cut = rnd.randint(keep, size - 1)
                os.truncate(path, cut)
                out.bytes_cut += size - cut
                what = f"partial {size}->{cut} (durable {keep})"
            else:
                pages = (size - first_page + PAGE - 1) // PAGE
                start = first_page + PAGE * rnd.randrange(pages)
                end = min(size, start + PAGE * rnd.randint(1, 4))
                zero_range(path, start, end)
                out.bytes_zeroed += end - start
                what = f"hole [{start},{end}) of {size} (durable {keep})"
            out.files += 1
            out.modes[mode] = out.modes.get(mode, 0) + 1
            out.details.append(f"{os.path.relpath(path, data_dir)}: {what}")
    return out


# ---------------------------------------------------------------------------------------------
# Producers


class ProducerRun(threading.Thread):
    """One confluent-kafka producer for one cycle, in its own thread (its delivery callbacks run
    in the thread that polls it). Produces paced, bounded records until `killed` is set, then
    serves the delivery reports of responses the broker sent before it died, purges the rest and
    closes, so that nothing it sent can be delivered to the restarted broker."""

    def __init__(self, bootstrap: str, cycle: int, index: int, killed: threading.Event, rate: int,
                 max_messages: int):
        super().__init__(daemon=True, name=f"producer-{cycle}-{index}")
        self.bootstrap = bootstrap
        self.cycle = cycle
        self.index = index
        self.idempotent = index == 0
        self.killed = killed
        self.rate = rate
        self.max_messages = max_messages
        self.sent = 0
        self.acked: List[Tuple[int, int, bytes]] = []  # (partition, offset, value)
        self.errors: Dict[str, int] = {}
        self.error: Optional[BaseException] = None
        self.closed = False
        self.first_ack = threading.Event()

    def conf(self) -> dict:
        conf = {"bootstrap.servers": self.bootstrap, "broker.address.family": "v4", "acks": "all", "linger.ms": 2,
                "enable.idempotence": self.idempotent, "message.timeout.ms": 30000,
                "client.id": f"powerloss-c{self.cycle}-p{self.index}",
                # Connection errors after the kill are expected; only critical logs are shown.
                "log_level": 2}
        if not self.idempotent:
            # Without idempotence a retry can reorder or duplicate batches, which the order
            # check would report; without retries what gets written keeps its send order.
            conf["retries"] = 0
        return conf

    def on_delivery(self, err, msg):
        if err is None:
            self.acked.append((msg.partition(), msg.offset(), msg.value()))
            self.first_ack.set()
        else:
            name = err.name()
            self.errors[name] = self.errors.get(name, 0) + 1

    def run(self):
        from confluent_kafka import Producer
        try:
            p = Producer(self.conf())
        except BaseException as e:  # noqa: BLE001 - reported by the cycle
            self.error = e
            return
        try:
            deadline = time.monotonic() + KILL_AFTER_S[1] + 60  # the kill comes long before this
            acked_at = None
            while not self.killed.is_set() and time.monotonic() < deadline:
                # Paced from the first acknowledgement (the kill delay counts from there too), so
                # that the cap is not used up while the producer waits for its producer id.
                if acked_at is None and self.first_ack.is_set():
                    acked_at = time.monotonic()
                paced = STARTUP_MESSAGES + (0 if acked_at is None else int((time.monotonic() - acked_at) * self.rate))
                allowed = min(self.max_messages, paced)
                if self.sent >= allowed or len(p) >= MAX_OUTSTANDING:
                    p.poll(0.005)
                    continue
                seq = self.sent
                try:
                    p.produce(TOPIC, value=make_value(self.cycle, self.index, seq), key=make_key(self.index, seq),
                              partition=partition_of(seq), on_delivery=self.on_delivery)
                except BufferError:
                    p.poll(0.01)
                    continue
                self.sent += 1
                p.poll(0)
            # The broker is dead: serve acknowledgements it sent before, then drop the rest.
            p.flush(2)
            p.purge()
            p.flush(1)
        except BaseException as e:  # noqa: BLE001 - reported by the cycle
            self.error = e
        finally:
            p.close()
            self.closed = True


# ---------------------------------------------------------------------------------------------
# Reading back


def http_status(url: str, timeout: float = 5.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def wait_ready(broker: Broker, timeout: float = 60.0):
    """Until /v1/ready answers 200 (recovery of every shard done)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if not broker.running():
            raise RuntimeError(f"broker exited with {broker.proc.returncode} while recovering")
        try:
            last = http_status(broker.admin_url + "/v1/ready")
            if last == 200:
                return
        except OSError as e:
            last = repr(e)
        time.sleep(0.05)
    raise RuntimeError(f"broker not ready within {timeout}s (last /v1/ready: {last})")


def read_all(bootstrap: str, timeout: float) -> Tuple[Dict[int, List[Tuple[int, bytes, bytes]]], Dict[int, Tuple[int, int]], List[str]]:
    """Every record of every partition from the beginning to the high watermark:
    ({partition: [(offset, key, value)]}, {partition: (low, high)}, [errors])."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap, "broker.address.family": "v4", "group.id": "powerloss-verify", "enable.auto.commit": False,
                  "check.crcs": True, "auto.offset.reset": "error", "enable.partition.eof": False})
    records: Dict[int, List[Tuple[int, bytes, bytes]]] = {p: [] for p in range(PARTITIONS)}
    marks: Dict[int, Tuple[int, int]] = {}
    errors: List[str] = []
    try:
        for p in range(PARTITIONS):
            marks[p] = c.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=30)
        c.assign([TopicPartition(TOPIC, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        position = {p: marks[p][0] for p in range(PARTITIONS)}
        deadline = time.monotonic() + timeout
        while any(position[p] < marks[p][1] for p in range(PARTITIONS)):
            if time.monotonic() > deadline:
                errors.append(f"reading did not reach the high watermarks {marks} within {timeout:.0f}s "
                              f"(positions {position})")
                break
            for m in c.consume(num_messages=1000, timeout=0.5):
                if m.error():
                    errors.append(f"consumer error: {m.error()}")
                    if len(errors) > SHOWN:
                        return records, marks, errors
                    continue
                p = m.partition()
                records[p].append((m.offset(), m.key(), m.value()))
                position[p] = max(position[p], m.offset() + 1)
    finally:
        c.close()
    return records, marks, errors


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class Result:
    seed: int
    cycles: int = 0
    sent: int = 0
    acked: int = 0
    lost: int = 0
    read: int = 0  # records in the log at the last check
    duplicates_plain: int = 0  # duplicates of the non-idempotent producer's values (allowed)
    power_loss: PowerLoss = field(default_factory=PowerLoss)
    violations: List[str] = field(default_factory=list)

    def summary(self) -> str:
        pl = self.power_loss
        modes = ",".join(f"{k}={v}" for k, v in sorted(pl.modes.items())) or "-"
        return (f"power-loss: cycles={self.cycles} seed={self.seed} sent={self.sent} acked={self.acked} "
                f"lost={self.lost} read={self.read} dup_plain={self.duplicates_plain} files_cut={pl.files} "
                f"bytes_cut={pl.bytes_cut} bytes_zeroed={pl.bytes_zeroed} modes={modes} "
                f"violations={len(self.violations)} -> {'OK' if self.ok else 'FAILED'}")

    @property
    def ok(self) -> bool:
        return not self.violations and self.lost == 0


VALUE_RE = re.compile(rb"^c(\d+)-p(\d+)-(\d+)-x*$")

Ident = Tuple[int, int, int]  # (producer, cycle, seq) of a value


class Checker:
    """What every cycle's read must agree with, across all cycles. Values are kept as their
    (producer, cycle, seq), which make_value turns back into bytes."""

    def __init__(self):
        self.sent: Dict[Tuple[int, int], int] = {}  # (producer, cycle) -> values handed to produce()
        self.acked: Dict[Tuple[int, int], Ident] = {}  # (partition, offset) -> value
        self.history: Dict[Tuple[int, int], Ident] = {}  # (partition, offset) -> value read before

    def ident(self, value: Optional[bytes]) -> Optional[Ident]:
        """The value's identity if some producer sent exactly these bytes, else None."""
        m = VALUE_RE.match(value or b"")
        if not m:
            return None
        cycle, producer, seq = int(m.group(1)), int(m.group(2)), int(m.group(3))
        if seq >= self.sent.get((producer, cycle), 0) or value != make_value(cycle, producer, seq):
            return None
        return producer, cycle, seq

    def add_sent(self, producer: int, cycle: int, count: int):
        self.sent[(producer, cycle)] = count

    def add_acked(self, partition: int, offset: int, value: bytes) -> Optional[str]:
        ident = self.ident(value)
        if ident is None:
            return f"delivery report for {partition}/{offset} carries a value that was not sent: {value[:60]!r}"
        prev = self.acked.get((partition, offset))
        if prev is not None and prev != ident:
            return (f"offset {partition}/{offset} acknowledged twice: {name(prev)} and then {name(ident)} "
                    f"(the first acknowledged record was lost)")
        self.acked[(partition, offset)] = ident
        return None

    def check(self, records, marks) -> Tuple[List[str], int, int]:
        """(violations, lost, duplicates of the plain producer) of one full read."""
        problems: Dict[str, List[str]] = {}

        def bad(kind, msg):
            problems.setdefault(kind, []).append(msg)

        read: Dict[Tuple[int, int], Ident] = {}
        dup_plain = 0
        for p in range(PARTITIONS):
            low, high = marks[p]
            recs = records[p]
            if low != 0:
                bad("log-start", f"partition {p}: log start offset {low}, expected 0 (nothing deletes records)")
            offsets = [r[0] for r in recs]
            if offsets != list(range(low, high)):
                first = next((i for i, o in enumerate(offsets) if o != low + i), len(offsets))
                at = offsets[first] if first < len(offsets) else None
                bad("offsets", f"partition {p}: read offsets are not {low}..{high - 1}: {len(offsets)} records, "
                               f"first mismatch at index {first} (offset {at})")
            last: Dict[int, Tuple[int, int, int]] = {}  # producer -> (cycle, seq, offset)
            seen_here: Dict[Ident, int] = {}
            for off, key, value in recs:
                ident = self.ident(value)
                if ident is None:
                    bad("foreign", f"offset {p}/{off}: a value no producer sent (corrupt or foreign): "
                                   f"{(value or b'')[:60]!r} ({len(value or b'')} B)")
                    continue
                read[(p, off)] = ident
                prev = self.history.get((p, off))
                if prev is not None and prev != ident:
                    bad("rewritten", f"offset {p}/{off} held {name(prev)} in an earlier read, now {name(ident)}")
                self.history[(p, off)] = ident
                producer, cycle, seq = ident
                if key != make_key(producer, seq):
                    bad("key", f"offset {p}/{off}: key {key!r} for {name(ident)}, sent with {make_key(producer, seq)!r}")
                if partition_of(seq) != p:
                    bad("partition", f"offset {p}/{off}: {name(ident)} was sent to partition {partition_of(seq)}")
                if ident in seen_here:
                    if producer == 0:
                        bad("duplicate", f"the idempotent producer's {name(ident)} at offsets {p}/{seen_here[ident]} "
                                         f"and {p}/{off}")
                    else:
                        dup_plain += 1
                    continue
                seen_here[ident] = off
                if producer in last and (cycle, seq) <= last[producer][:2]:
                    lc, ls, lo = last[producer]
                    bad("order", f"partition {p}: {name(ident)} at offset {off} after c{lc}-p{producer}-{ls} at {lo}")
                last[producer] = (cycle, seq, off)
        lost = 0
        for (p, off), ident in sorted(self.acked.items()):
            got = read.get((p, off))
            if got != ident:
                lost += 1
                where = f"missing (high watermark {marks[p][1]})" if got is None else f"the offset holds {name(got)}"
                bad("lost", f"acknowledged {name(ident)} at {p}/{off}: {where}")
        out = []
        for kind, msgs in problems.items():
            out.extend(msgs[:SHOWN])
            if len(msgs) > SHOWN:
                out.append(f"... and {len(msgs) - SHOWN} more {kind} violations")
        return out, lost, dup_plain


def name(ident: Ident) -> str:
    producer, cycle, seq = ident
    return f"c{cycle}-p{producer}-{seq}"


def wait_port_closed(broker: Broker, timeout: float = 10.0) -> bool:
    """The kernel tears a killed process's io_uring instance down asynchronously, and writes it
    still had in flight may land until then; the listening socket it holds goes with it."""
    deadline = time.monotonic() + timeout
    while port_has_listener(broker.port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def create_topic(bootstrap: str):
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": bootstrap, "broker.address.family": "v4", "log_level": 4})
    futures = admin.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=1)],
                                  operation_timeout=30, request_timeout=30)
    futures[TOPIC].result(timeout=60)


def start(broker: Broker):
    """Starts the broker and waits until it is ready; conftest reports failures to start through
    pytest.fail, which outside pytest is just an exception to report."""
    try:
        broker.start(timeout=60)
    except pytest.fail.Exception as e:
        raise RuntimeError(str(e)) from None
    wait_ready(broker)


def journal_path(broker: Broker) -> Path:
    return Path(broker.settings["test.fault.sync.journal"])


def run(broker: Broker, cycles: int, seed: int, out: Callable[[str], None] = print,
        rate: int = RATE_PER_PRODUCER, max_messages: int = MAX_PER_PRODUCER) -> Result:
    """Runs `cycles` power-loss cycles on `broker` (created with `broker_settings(journal)`, not
    started, with a fresh data directory) and stops it cleanly at the end."""
    rnd = random.Random(seed)
    result = Result(seed=seed)
    checker = Checker()
    journal = journal_path(broker)
    try:
        start(broker)
        create_topic(broker.bootstrap)
        for cycle in range(1, cycles + 1):
            violations = run_cycle(broker, cycle, rnd, checker, result, journal, out, rate, max_messages)
            result.cycles = cycle
            if violations:
                result.violations.extend(f"cycle {cycle}: {v}" for v in violations)
                out(f"broker log tail ({broker.log_path}):\n{broker.log_tail(40)}")
                break
        if result.ok:
            # A clean stop after the last recovery must still exit 0.
            broker.proc.send_signal(signal.SIGTERM)
            code = broker.proc.wait(30)
            if code != 0:
                result.violations.append(f"broker exited with {code} after SIGTERM")
    except Exception as e:  # noqa: BLE001 - one more violation, with the broker's log
        # The first line: conftest's startup failures carry the log tail printed below.
        first = (str(e).splitlines() or [""])[0]
        result.violations.append(f"cycle {result.cycles + 1}: {type(e).__name__}: {first}")
        out(f"broker log tail ({broker.log_path}):\n{broker.log_tail(40)}")
    finally:
        broker.kill()
    return result


def run_cycle(broker: Broker, cycle: int, rnd: random.Random, checker: Checker, result: Result,
              journal: Path, out, rate: int, max_messages: int) -> List[str]:
    kill_after = rnd.uniform(*KILL_AFTER_S)
    damage_rnd = random.Random(rnd.random())
    killed = threading.Event()
    producers = [ProducerRun(broker.bootstrap, cycle, i, killed, rate, max_messages) for i in range(PRODUCERS)]
    for p in producers:
        p.start()
    # The delay counts from when both producers have records acknowledged (the idempotent one
    # first needs a producer id), so that the kill always hits both while they write. Either wait
    # stops early if a producer thread dies.
    deadline = time.monotonic() + 20
    while (time.monotonic() < deadline and all(p.is_alive() for p in producers)
           and not all(p.first_ack.is_set() for p in producers)):
        time.sleep(0.005)
    deadline = time.monotonic() + kill_after
    while time.monotonic() < deadline and all(p.is_alive() for p in producers):
        time.sleep(0.01)
    broker.kill()
    killed.set()
    port_closed = wait_port_closed(broker)
    violations = []
    for p in producers:
        p.join(30)
        if p.is_alive() or not p.closed:
            violations.append(f"producer {p.index} did not finish within 30 s of the kill")
        if p.error is not None:
            violations.append(f"producer {p.index}: {type(p.error).__name__}: {p.error}")
    if not port_closed:
        violations.append("the killed broker's listening socket did not go away within 10 s")
    if violations:
        return violations
    for p in producers:
        checker.add_sent(p.index, cycle, p.sent)
        result.sent += p.sent
        for part, off, value in p.acked:
            v = checker.add_acked(part, off, value)
            if v:
                violations.append(v)
        result.acked += len(p.acked)

    damage = apply_power_loss(broker.data_dir, parse_journal(journal), damage_rnd)
    result.power_loss.add(damage)

    start(broker)
    records, marks, errors = read_all(broker.bootstrap, timeout=120)
    violations.extend(errors)
    found, lost, dup_plain = checker.check(records, marks)
    violations.extend(found)
    result.lost += lost
    result.duplicates_plain += dup_plain
    result.read = sum(len(r) for r in records.values())

    acked = " ".join(f"producer{p.index}={len(p.acked)}/{p.sent}" for p in producers)
    errs = {}
    for p in producers:
        for k, v in p.errors.items():
            errs[k] = errs.get(k, 0) + v
    hw = " ".join(f"p{p}={marks[p][1]}" for p in range(PARTITIONS))
    modes = ",".join(f"{k}={v}" for k, v in sorted(damage.modes.items())) or "-"
    out(f"cycle {cycle}: kill after {kill_after:.2f}s acked {acked} unacked {sum(errs.values())}; "
        f"power loss: {damage.files} files ({modes}) cut {damage.bytes_cut} B zeroed {damage.bytes_zeroed} B; "
        f"high watermarks {hw} lost {lost} -> {'ok' if not violations else 'VIOLATIONS'}")
    if violations:
        out("damage: " + "; ".join(damage.details))
    return violations


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, required=True)
    ap.add_argument("--seed", type=int, default=None, help="default: from the clock (printed)")
    ap.add_argument("--bin", help="strom binary (default $STROM_BIN or target/release/strom)")
    ap.add_argument("--workdir", help="where the data dir, journal and broker log go (default: a new "
                                      "temporary directory, removed after a passing run); must be empty")
    ap.add_argument("--cores", type=int, default=1)
    ap.add_argument("--rate", type=int, default=RATE_PER_PRODUCER, help="messages/s per producer")
    ap.add_argument("--max-messages", type=int, default=MAX_PER_PRODUCER, help="per producer and cycle")
    args = ap.parse_args(argv)
    if args.cycles < 1:
        ap.error("--cycles must be at least 1")
    if args.bin:
        os.environ["STROM_BIN"] = args.bin
    seed = args.seed if args.seed is not None else int(time.time() * 1000) % 2**31
    if args.workdir:
        workdir = Path(args.workdir).resolve()
        if workdir.exists() and any(workdir.iterdir()):
            ap.error(f"--workdir {workdir} is not empty (the run needs a fresh data directory)")
        workdir.mkdir(parents=True, exist_ok=True)
        temporary = False
    else:
        workdir = Path(tempfile.mkdtemp(prefix="strom-powerloss-"))
        temporary = True
    broker = Broker(workdir, cores=args.cores, settings=broker_settings(workdir / "sync-journal"))
    print(f"power-loss: {args.cycles} cycles, seed {seed}, workdir {workdir}, binary "
          f"{os.environ.get('STROM_BIN', 'target/release/strom')}", flush=True)
    result = run(broker, args.cycles, seed, out=lambda s: print(s, flush=True),
                 rate=args.rate, max_messages=args.max_messages)
    for v in result.violations:
        print(f"VIOLATION {v}")
    print(result.summary(), flush=True)
    if result.ok and temporary:
        shutil.rmtree(workdir, ignore_errors=True)
    elif not result.ok:
        print(f"kept {workdir} (data/, sync-journal, {broker.log_path.name}) for inspection")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
