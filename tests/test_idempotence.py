"""Idempotent producers: InitProducerId (v0..v5), the per-partition sequence checks, retried
batches answered with their original offsets, producer state across a clean restart and SIGKILL,
and real clients (confluent-kafka, kafka-python, aiokafka) writing every record exactly once
while the broker drops Produce responses (`test.fault.produce.drop.response.every`)."""

import asyncio
import collections
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import pytest

import kafka_raw as kr
from conftest import unique

FAULT = "test.fault.produce.drop.response.every"
NKEYS = 10
INT32_MAX = 2 ** 31 - 1


# ---------------------------------------------------------------------------------------------
# Helpers


def keyed(n: int):
    """n (key, value) pairs: keys k0..k9 in turn; the value is "<key>:<per-key counter>"."""
    for i in range(n):
        k = f"k{i % NKEYS}"
        yield k.encode(), f"{k}:{i // NKEYS}".encode()


def read_partitions(broker, topic: str, partitions: int) -> Dict[int, List[kr.Batch]]:
    with broker.conn(timeout=30) as c:
        return {p: c.fetch_batches(topic, p, deadline_s=60) for p in range(partitions)}


def records_by_partition(batches: Dict[int, List[kr.Batch]]) -> Dict[int, List[kr.Record]]:
    return {p: [r for b in bs for r in b.records] for p, bs in batches.items()}


def duplicates(batches: Dict[int, List[kr.Batch]]) -> Dict[Tuple[bytes, bytes], int]:
    seen = collections.Counter((r.key, r.value) for rs in records_by_partition(batches).values() for r in rs)
    return {kv: n for kv, n in seen.items() if n > 1}


def assert_exactly_once(batches: Dict[int, List[kr.Batch]], n: int):
    """The partitions hold exactly the n records of keyed(n): no duplicates, no gaps, each key in
    one partition with its counters in offset order."""
    assert n % NKEYS == 0
    recs = records_by_partition(batches)
    dups = duplicates(batches)
    assert not dups, f"{len(dups)} records stored more than once, e.g. {sorted(dups.items())[:5]}"
    total = sum(len(rs) for rs in recs.values())
    assert total == n, f"{total} records stored, expected {n}"
    per_key: Dict[str, Tuple[int, List[int]]] = {}
    for p, rs in recs.items():
        assert [r.offset for r in rs] == list(range(len(rs))), f"partition {p}: offsets not contiguous"
        for r in rs:
            key = r.key.decode()
            vk, _, counter = r.value.decode().partition(":")
            assert vk == key, f"record {r.value!r} under key {key}"
            part, counters = per_key.setdefault(key, (p, []))
            assert part == p, f"key {key} found in partitions {part} and {p}"
            counters.append(int(counter))
    assert sorted(per_key) == sorted(f"k{i}" for i in range(NKEYS))
    for key, (p, counters) in sorted(per_key.items()):
        assert counters == list(range(n // NKEYS)), \
            f"key {key} (partition {p}): counters out of order or missing: {counters}"


def assert_sequences_consistent(batches: Dict[int, List[kr.Batch]]):
    """Every stored batch is idempotent, and within one (producer id, epoch) the sequences of a
    partition run on without gaps or repeats."""
    for p, bs in batches.items():
        last: Dict[Tuple[int, int], int] = {}
        for b in bs:
            assert b.producer_id >= 0 and b.producer_epoch >= 0 and b.base_sequence >= 0, \
                f"partition {p} offset {b.base_offset}: not an idempotent batch ({b.producer_id}, " \
                f"{b.producer_epoch}, {b.base_sequence})"
            k = (b.producer_id, b.producer_epoch)
            if k in last:
                assert b.base_sequence == last[k] + 1, \
                    f"partition {p} offset {b.base_offset}: sequence {b.base_sequence} after {last[k]}"
            last[k] = b.base_sequence + b.last_offset_delta


def assert_reported_offsets(batches: Dict[int, List[kr.Batch]], delivered: List[Tuple[int, int, bytes, bytes]]):
    """Each (partition, offset, key, value) a client was told is where that record is stored."""
    stored = {(p, r.offset): (r.key, r.value) for p, rs in records_by_partition(batches).items() for r in rs}
    wrong = [(p, o, k, v, stored.get((p, o))) for p, o, k, v in delivered if stored.get((p, o)) != (k, v)]
    assert not wrong, f"{len(wrong)} delivery reports name the wrong offset, e.g. " \
                      f"(partition, offset, key, value, stored there) {wrong[:5]}"


class CountingHandler(logging.Handler):
    """Counts log records (WARNING and above) whose message contains one of `needles`."""

    def __init__(self, *needles: str, level=logging.WARNING):
        super().__init__(level)
        self.needles = needles
        self.count = 0

    def emit(self, record):
        try:
            msg = record.getMessage()
            if any(n in msg for n in self.needles):
                self.count += 1
        except Exception:  # noqa: BLE001 - a broken log record must not fail the producer
            pass


@dataclass
class Run:
    delivered: List[Tuple[int, int, bytes, bytes]] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)
    retries: int = 0  # evidence of retries: client-specific counter (see each runner)
    info: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Client runners: produce keyed(n) to `topic`, many small requests, retries allowed.


def run_confluent(broker, topic: str, n: int, idempotent: bool) -> Run:
    from confluent_kafka import Producer

    run = Run()
    stats = {"disconnects": 0, "txretries": 0, "tx": 0}

    def on_stats(s):
        d = json.loads(s)
        for name in stats:
            stats[name] = max(stats[name], sum(b.get(name, 0) for b in d.get("brokers", {}).values()))

    def on_delivery(err, msg):
        if err is not None:
            run.errors.append(str(err))
        else:
            run.delivered.append((msg.partition(), msg.offset(), msg.key(), msg.value()))

    p = Producer({
        "bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
        "enable.idempotence": idempotent, "acks": "all",
        "linger.ms": 1, "batch.num.messages": 5, "max.in.flight.requests.per.connection": 5,
        "retries": 1000, "retry.backoff.ms": 20, "retry.backoff.max.ms": 100,
        "reconnect.backoff.ms": 10, "reconnect.backoff.max.ms": 100,
        "message.timeout.ms": 90000, "request.timeout.ms": 30000,
        "statistics.interval.ms": 100, "stats_cb": on_stats,
        "error_cb": lambda e: run.errors.append(f"error_cb: {e}"),
        "log.connection.close": False,
    })
    for i, (k, v) in enumerate(keyed(n)):
        for _ in range(1000):
            try:
                p.produce(topic, key=k, value=v, on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0.002 if i % 10 == 9 else 0)
    left = p.flush(90)
    assert left == 0, f"confluent-kafka: {left} messages not delivered within 90 s"
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and stats["disconnects"] == 0:
        p.poll(0.1)
    p.poll(0.3)
    # librdkafka reports each connection the broker closed through error_cb (_TRANSPORT, or
    # _ALL_BROKERS_DOWN with a single broker) and counts it in the statistics.
    closed = sum(1 for e in run.errors if "_TRANSPORT" in e or "_ALL_BROKERS_DOWN" in e)
    run.retries = max(stats["disconnects"], closed)
    run.info = dict(stats, closed_events=closed)
    return run


def run_kafka_python(broker, topic: str, n: int, idempotent: bool) -> Run:
    from kafka import KafkaProducer

    run = Run()
    handler = CountingHandler("Error sending produce request", "retrying")
    sender_log = logging.getLogger("kafka.producer.sender")
    sender_log.addHandler(handler)
    try:
        p = KafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=idempotent, acks="all",
                          linger_ms=1, batch_size=256, max_in_flight_requests_per_connection=5,
                          retry_backoff_ms=20, reconnect_backoff_ms=10, reconnect_backoff_max_ms=100,
                          request_timeout_ms=30000, delivery_timeout_ms=90000, max_block_ms=30000)
        try:
            futures = []
            for i, (k, v) in enumerate(keyed(n)):
                futures.append((k, v, p.send(topic, key=k, value=v)))
                if i % 10 == 9:
                    time.sleep(0.002)
            p.flush(90)
            for k, v, f in futures:
                try:
                    md = f.get(timeout=30)
                    run.delivered.append((md.partition, md.offset, k, v))
                except Exception as e:  # noqa: BLE001 - collected and asserted by the caller
                    run.errors.append(repr(e))
        finally:
            p.close(timeout=10)
    finally:
        sender_log.removeHandler(handler)
    run.retries = handler.count
    return run


def run_aiokafka(broker, topic: str, n: int, idempotent: bool) -> Run:
    from aiokafka import AIOKafkaProducer

    run = Run()
    handler = CountingHandler("")
    sender_log = logging.getLogger("aiokafka.producer.sender")
    sender_log.addHandler(handler)

    async def main():
        p = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=idempotent, acks="all",
                             linger_ms=1, max_batch_size=256, retry_backoff_ms=20, request_timeout_ms=30000)
        await asyncio.wait_for(p.start(), 30)
        try:
            futures = []
            for i, (k, v) in enumerate(keyed(n)):
                futures.append((k, v, await p.send(topic, key=k, value=v)))
                if i % 10 == 9:
                    await asyncio.sleep(0.002)
            results = await asyncio.wait_for(
                asyncio.gather(*(f for _, _, f in futures), return_exceptions=True), 90)
            for (k, v, _), md in zip(futures, results):
                if isinstance(md, BaseException):
                    run.errors.append(repr(md))
                else:
                    run.delivered.append((md.partition, md.offset, k, v))
        finally:
            await asyncio.wait_for(p.stop(), 30)

    try:
        asyncio.run(main())
    finally:
        sender_log.removeHandler(handler)
    run.retries = handler.count
    return run


RUNNERS = {"confluent-kafka": run_confluent, "kafka-python": run_kafka_python, "aiokafka": run_aiokafka}


# ---------------------------------------------------------------------------------------------
# 1. Real clients, responses dropped by the broker


@pytest.mark.timeout(300)
@pytest.mark.parametrize("client,cores", [(c, 1) for c in RUNNERS] + [("confluent-kafka", 2), ("kafka-python", 2)])
def test_client_writes_exactly_once_while_responses_are_dropped(broker_factory, client, cores):
    """Every 3rd Produce request (per shard) is appended but its connection is closed without a
    response. A client without idempotence then writes duplicates (which shows the fault is hit
    and the client retries); with idempotence every record is stored once, in per-key order, at
    the offset the client was told."""
    broker = broker_factory(cores=cores, settings={FAULT: "3"})
    n, partitions = 600, 4
    control, topic = unique(f"idem-ctl-{client}"), unique(f"idem-{client}")
    with broker.conn() as c:
        c.create_topic(control, partitions)
        c.create_topic(topic, partitions)
    runner = RUNNERS[client]

    ctl = runner(broker, control, n, idempotent=False)
    ctl_batches = read_partitions(broker, control, partitions)
    ctl_total = sum(len(rs) for rs in records_by_partition(ctl_batches).values())
    assert duplicates(ctl_batches) and ctl_total > n, \
        f"{client} without idempotence stored {ctl_total} records for {n} sent and no duplicates: " \
        f"the dropped responses were not retried (retry evidence {ctl.retries}, errors {ctl.errors[:5]})"

    run = runner(broker, topic, n, idempotent=True)
    fatal = [e for e in run.errors if not e.startswith("error_cb") or "FATAL" in e.upper()]
    assert not fatal, f"{client}: delivery or fatal errors with idempotence: {fatal[:10]}"
    assert len(run.delivered) == n, f"{client}: {len(run.delivered)} of {n} delivered"
    assert run.retries > 0, f"{client}: no dropped connection or retry seen with idempotence ({run.info})"
    batches = read_partitions(broker, topic, partitions)
    assert_exactly_once(batches, n)
    assert_sequences_consistent(batches)
    assert_reported_offsets(batches, run.delivered)
    broker.assert_alive()


# ---------------------------------------------------------------------------------------------
# 2. The protocol by hand


def test_api_versions_advertise_init_producer_id(broker):
    with broker.conn() as c:
        for v in (0, 3):
            keys = c.api_versions(v)["api_keys"]
            assert kr.API_INIT_PRODUCER_ID in keys, f"ApiVersions v{v} lacks InitProducerId: {sorted(keys)}"
            lo, hi = keys[kr.API_INIT_PRODUCER_ID]
            assert lo == 0 and hi >= 5, f"InitProducerId versions {lo}..{hi}, expected 0..5"


def test_init_producer_id_every_version(broker):
    ids = []
    with broker.conn() as c:
        for v in range(6):
            for _ in range(2):
                res = c.init_producer_id(v)
                assert res["error_code"] == kr.NONE, f"v{v}: {res}"
                assert res["producer_id"] >= 0 and res["producer_epoch"] == 0, f"v{v}: {res}"
                ids.append(res["producer_id"])
    with broker.conn() as c:  # a second connection gets fresh ids too
        ids += [c.new_producer(v)[0] for v in (0, 5)]
    assert len(set(ids)) == len(ids), f"producer ids handed out twice: {ids}"


def test_transactional_id_is_refused(broker):
    with broker.conn() as c:
        for v in range(6):
            res = c.init_producer_id(v, transactional_id=f"txn-{v}")
            assert res["error_code"] == kr.COORDINATOR_NOT_AVAILABLE, f"v{v}: {res}"
        # The connection still works afterwards.
        assert c.new_producer(4)[0] >= 0


def test_init_producer_id_epoch_bump_and_fencing(broker):
    with broker.conn() as c:
        pid, epoch = c.new_producer(1)
        assert epoch == 0
        for v in (3, 4, 5):
            res = c.init_producer_id(v, producer_id=pid, producer_epoch=epoch)
            assert res["error_code"] == kr.NONE, f"bump v{v}: {res}"
            assert (res["producer_id"], res["producer_epoch"]) == (pid, epoch + 1), f"bump v{v}: {res}"
            epoch += 1
        # Stale epochs are fenced: INVALID_PRODUCER_EPOCH before v4, PRODUCER_FENCED from v4 on.
        for v, stale, want in ((3, 0, kr.INVALID_PRODUCER_EPOCH), (4, 1, kr.PRODUCER_FENCED),
                               (5, 2, kr.PRODUCER_FENCED), (3, 2, kr.INVALID_PRODUCER_EPOCH)):
            res = c.init_producer_id(v, producer_id=pid, producer_epoch=stale)
            assert res["error_code"] == want, f"v{v} with stale epoch {stale} (current {epoch}): {res}"
        # The refusals changed nothing: the current epoch bumps once more.
        res = c.init_producer_id(5, producer_id=pid, producer_epoch=epoch)
        assert (res["error_code"], res["producer_id"], res["producer_epoch"]) == (kr.NONE, pid, epoch + 1), res
        # A request without a producer id still gets a new one.
        other, e0 = c.new_producer(5)
        assert other != pid and e0 == 0


def test_init_producer_id_odd_requests(broker):
    with broker.conn() as c:
        pid, _ = c.new_producer(3)
        # Only one of producer id and epoch given.
        for v in (3, 4, 5):
            for args in ({"producer_id": pid}, {"producer_epoch": 0}):
                res = c.init_producer_id(v, **args)
                assert res["error_code"] == kr.INVALID_REQUEST, f"v{v} {args}: {res}"
        # An id this broker never handed out gets a fresh id with epoch 0.
        for v in (3, 4, 5):
            res = c.init_producer_id(v, producer_id=pid + 10 ** 12, producer_epoch=3)
            assert res["error_code"] == kr.NONE, f"v{v}: {res}"
            assert res["producer_id"] not in (pid, pid + 10 ** 12) and res["producer_epoch"] == 0, f"v{v}: {res}"
        # An empty transactional id is invalid, as in Kafka.
        res = c.init_producer_id(4, transactional_id="")
        assert res["error_code"] == kr.INVALID_REQUEST, res
        # The connection still works for a plain request.
        assert c.new_producer(2)[1] == 0


class Producer:
    """One idempotent producer on one connection: remembers each batch it sent (bytes,
    sequences, offset) so that tests can retry them verbatim."""

    def __init__(self, conn, producer_id: int, epoch: int = 0):
        self.conn, self.pid, self.epoch = conn, producer_id, epoch
        self.next_seq: Dict[Tuple[str, int], int] = {}
        self.sent: List[dict] = []

    def batch(self, topic, partition, values, seq=None, epoch=None) -> dict:
        tp = (topic, partition)
        seq = self.next_seq.get(tp, 0) if seq is None else seq
        epoch = self.epoch if epoch is None else epoch
        data = kr.idempotent_batch([v if isinstance(v, bytes) else v.encode() for v in values],
                                   self.pid, epoch, seq)
        return {"tp": tp, "seq": seq, "epoch": epoch, "count": len(values), "bytes": data, "offset": None}

    def send(self, b: dict, version: int = 3) -> dict:
        return self.conn.produce(b["tp"][0], b["tp"][1], b["bytes"], acks=-1, version=version)

    def produce(self, topic, partition, values, version: int = 3, **kw) -> dict:
        """Send the next batch; asserts success and records it."""
        b = self.batch(topic, partition, values, **kw)
        res = self.send(b, version)
        assert res["error_code"] == kr.NONE, f"{b['tp']} seq {b['seq']} epoch {b['epoch']}: {res}"
        b["offset"] = res["base_offset"]
        self.next_seq[b["tp"]] = (b["seq"] + b["count"]) % (INT32_MAX + 1)
        self.sent.append(b)
        return b


def assert_retry_is_duplicate(prod: Producer, b: dict, version: int = 3):
    res = prod.send(b, version)
    assert (res["error_code"], res["base_offset"]) == (kr.NONE, b["offset"]), \
        f"retry of {b['tp']} seq {b['seq']} (first stored at offset {b['offset']}): {res}"


def assert_refused(prod: Producer, b: dict, code: int, what: str):
    topic, part = b["tp"]
    leo = prod.conn.latest_offset(topic, part)
    res = prod.send(b)
    assert res["error_code"] == code, f"{what}: expected error {code}, got {res}"
    assert prod.conn.latest_offset(topic, part) == leo, f"{what}: the refused batch was appended"


@pytest.mark.parametrize("cores,produce_version", [(1, 3), (1, 7), (2, 3), (2, 7)])
def test_retried_batch_gets_original_offset(broker_factory, cores, produce_version):
    broker = broker_factory(cores=cores)
    topic, partitions = unique("idem-dup"), 4
    with broker.conn() as c:
        c.create_topic(topic, partitions)
        prod = Producer(c, *c.new_producer(3))
        expected = {p: [] for p in range(partitions)}
        for p in range(partitions):
            # A plain (non-idempotent) record first, so the producer's offsets do not start at 0.
            assert c.produce(topic, p, kr.simple_batch([b"plain"]))["error_code"] == kr.NONE
            expected[p].append(b"plain")
            for i in range(3):
                vals = [f"p{p}b{i}r{j}".encode() for j in range(3)]
                b = prod.produce(topic, p, vals, version=produce_version)
                assert b["offset"] == 1 + 3 * i
                expected[p] += vals
        leos = {p: c.latest_offset(topic, p) for p in range(partitions)}
        assert leos == {p: 10 for p in range(partitions)}
        for b in prod.sent[::-1] + prod.sent:
            assert_retry_is_duplicate(prod, b, produce_version)
        assert {p: c.latest_offset(topic, p) for p in range(partitions)} == leos, "a retried batch was appended"
        for p in range(partitions):
            batches = c.fetch_batches(topic, p)
            assert [r.value for bt in batches for r in bt.records] == expected[p]
            # The stored batches keep the producer id, epoch and sequence they were sent with.
            assert [(bt.producer_id, bt.producer_epoch, bt.base_sequence) for bt in batches] == \
                   [(-1, -1, -1)] + [(prod.pid, 0, s) for s in (0, 3, 6)]
        # The next sequence is still accepted after the retries.
        b = prod.produce(topic, 0, ["next"], version=produce_version)
        assert b["offset"] == 10


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_compressed_batch_retry(broker, codec):
    topic = unique(f"idem-{codec}")
    with broker.conn() as c:
        c.create_topic(topic)
        pid, epoch = c.new_producer()
        sent = []
        for i, seq in enumerate((0, 50, 100)):
            vals = [f"c{i}-{j}-".encode() * 20 for j in range(50)]
            data = kr.idempotent_batch(vals, pid, epoch, seq, codec=kr.CODEC_NAMES[codec])
            res = c.produce(topic, 0, data)
            assert (res["error_code"], res["base_offset"]) == (kr.NONE, 50 * i), res
            sent.append((data, vals))
        for i, (data, _) in enumerate(sent):
            res = c.produce(topic, 0, data)
            assert (res["error_code"], res["base_offset"]) == (kr.NONE, 50 * i), f"retry {i}: {res}"
        assert c.latest_offset(topic, 0) == 150
        gap = kr.idempotent_batch([b"x"], pid, epoch, 151, codec=kr.CODEC_NAMES[codec])
        assert c.produce(topic, 0, gap)["error_code"] == kr.OUT_OF_ORDER_SEQUENCE_NUMBER
        assert [r.value for r in c.fetch_records(topic, 0)] == [v for _, vals in sent for v in vals]


def test_last_five_batches_are_remembered(broker):
    topic = unique("idem-five")
    with broker.conn() as c:
        c.create_topic(topic)
        prod = Producer(c, *c.new_producer())
        for i in range(7):
            prod.produce(topic, 0, [f"b{i}r0", f"b{i}r1"])
        assert [b["offset"] for b in prod.sent] == [0, 2, 4, 6, 8, 10, 12]
        for b in prod.sent[2:]:
            assert_retry_is_duplicate(prod, b)
        # Batches older than the last five are neither duplicates nor in sequence.
        for b in prod.sent[:2]:
            assert_refused(prod, b, kr.OUT_OF_ORDER_SEQUENCE_NUMBER, f"retry of old batch seq {b['seq']}")
        # A batch that starts like a remembered one but ends elsewhere is not a duplicate.
        assert_refused(prod, prod.batch(topic, 0, ["x"], seq=prod.sent[4]["seq"]),
                       kr.OUT_OF_ORDER_SEQUENCE_NUMBER, "batch overlapping a remembered one")
        assert_refused(prod, prod.batch(topic, 0, ["x", "y", "z"], seq=prod.sent[6]["seq"]),
                       kr.OUT_OF_ORDER_SEQUENCE_NUMBER, "batch extending the last one")
        assert c.latest_offset(topic, 0) == 14
        assert prod.produce(topic, 0, ["next"])["offset"] == 14
        assert len(c.fetch_records(topic, 0)) == 15


def test_sequence_gap_is_refused(broker):
    topic = unique("idem-gap")
    with broker.conn() as c:
        c.create_topic(topic)
        prod = Producer(c, *c.new_producer())
        prod.produce(topic, 0, ["a", "b", "c"])  # sequences 0..2
        for seq in (4, 10, 1000, INT32_MAX, 1, 2):
            assert_refused(prod, prod.batch(topic, 0, ["gap"], seq=seq), kr.OUT_OF_ORDER_SEQUENCE_NUMBER,
                           f"sequence {seq} after 2")
        assert prod.produce(topic, 0, ["d"])["offset"] == 3
        assert [r.value for r in c.fetch_records(topic, 0)] == [b"a", b"b", b"c", b"d"]


def test_partitions_and_producers_are_independent(broker):
    topic = unique("idem-indep")
    with broker.conn() as c:
        c.create_topic(topic, 2)
        a = Producer(c, *c.new_producer())
        b = Producer(c, *c.new_producer())
        a0 = a.produce(topic, 0, ["a0", "a1", "a2"])
        # Another producer, and the same producer on another partition, start at sequence 0.
        b.produce(topic, 0, ["b0"])
        a1 = a.produce(topic, 1, ["x0"])
        # One request: a retry on partition 0 and a new batch on partition 1.
        nxt = a.batch(topic, 1, ["x1"])
        res = c.produce_many({(topic, 0): a0["bytes"], (topic, 1): nxt["bytes"]})
        assert (res[(topic, 0)]["error_code"], res[(topic, 0)]["base_offset"]) == (kr.NONE, a0["offset"]), res
        assert (res[(topic, 1)]["error_code"], res[(topic, 1)]["base_offset"]) == (kr.NONE, 1), res
        a.next_seq[(topic, 1)] = 2
        # One request: a gap on partition 0 is refused while partition 1 goes on.
        gap = a.batch(topic, 0, ["gap"], seq=5)
        nxt = a.batch(topic, 1, ["x2"])
        res = c.produce_many({(topic, 0): gap["bytes"], (topic, 1): nxt["bytes"]})
        assert res[(topic, 0)]["error_code"] == kr.OUT_OF_ORDER_SEQUENCE_NUMBER, res
        assert (res[(topic, 1)]["error_code"], res[(topic, 1)]["base_offset"]) == (kr.NONE, 2), res
        assert a1["offset"] == 0
        assert [r.value for r in c.fetch_records(topic, 0)] == [b"a0", b"a1", b"a2", b"b0"]
        assert [r.value for r in c.fetch_records(topic, 1)] == [b"x0", b"x1", b"x2"]


def test_stale_epoch_is_refused(broker):
    topic = unique("idem-epoch")
    with broker.conn() as c:
        c.create_topic(topic)
        prod = Producer(c, *c.new_producer())
        first = prod.produce(topic, 0, ["e0-a", "e0-b"])
        res = c.init_producer_id(3, producer_id=prod.pid, producer_epoch=0)
        assert (res["error_code"], res["producer_id"], res["producer_epoch"]) == (kr.NONE, prod.pid, 1), res
        prod.epoch = 1
        prod.next_seq.clear()
        assert prod.produce(topic, 0, ["e1-a"])["offset"] == 2
        assert_refused(prod, prod.batch(topic, 0, ["e0-c"], seq=2, epoch=0), kr.INVALID_PRODUCER_EPOCH,
                       "next sequence with the old epoch")
        assert_refused(prod, first, kr.INVALID_PRODUCER_EPOCH, "retry of a batch of the old epoch")
        assert prod.produce(topic, 0, ["e1-b"])["offset"] == 3
        assert [r.value for r in c.fetch_records(topic, 0)] == [b"e0-a", b"e0-b", b"e1-a", b"e1-b"]


def test_new_epoch_must_start_at_sequence_zero(broker):
    topic = unique("idem-epoch0")
    with broker.conn() as c:
        c.create_topic(topic)
        prod = Producer(c, *c.new_producer())
        prod.produce(topic, 0, ["a", "b"])  # sequences 0..1
        res = c.init_producer_id(4, producer_id=prod.pid, producer_epoch=0)
        assert (res["error_code"], res["producer_epoch"]) == (kr.NONE, 1), res
        for seq in (2, 5):
            assert_refused(prod, prod.batch(topic, 0, ["c"], seq=seq, epoch=1), kr.OUT_OF_ORDER_SEQUENCE_NUMBER,
                           f"new epoch starting at sequence {seq}")
        prod.epoch = 1
        assert prod.produce(topic, 0, ["c"], seq=0)["offset"] == 2
        assert [b.base_sequence for b in c.fetch_batches(topic, 0)] == [0, 0]


def test_unknown_producer_may_start_at_any_sequence(broker):
    topic = unique("idem-any")
    with broker.conn() as c:
        c.create_topic(topic)
        prod = Producer(c, *c.new_producer())
        assert prod.produce(topic, 0, ["a", "b"], seq=1000)["offset"] == 0
        assert_retry_is_duplicate(prod, prod.sent[0])
        assert_refused(prod, prod.batch(topic, 0, ["gap"], seq=1003), kr.OUT_OF_ORDER_SEQUENCE_NUMBER,
                       "gap after a producer's first batch")
        assert prod.produce(topic, 0, ["c"])["offset"] == 2
        assert [b.base_sequence for b in c.fetch_batches(topic, 0)] == [1000, 1002]


def test_idle_producer_state_expires(broker_factory):
    """producer.id.expiration.ms: a producer silent for longer is forgotten by the partition, so
    its next batch may start at any sequence (a gap is no longer refused); an active one is not."""
    broker = broker_factory(settings={"producer.id.expiration.ms": "1500"})
    topic = unique("idem-expire")
    with broker.conn() as c:
        c.create_topic(topic)
        idle = Producer(c, *c.new_producer())
        busy = Producer(c, *c.new_producer())
        idle.produce(topic, 0, ["a", "b"])
        busy.produce(topic, 0, ["x"])
        assert_refused(idle, idle.batch(topic, 0, ["gap"], seq=5), kr.OUT_OF_ORDER_SEQUENCE_NUMBER,
                       "a gap while the producer is remembered")
        deadline = time.monotonic() + 10
        forgotten = False
        while time.monotonic() < deadline and not forgotten:
            busy.produce(topic, 0, ["x"])  # keeps the busy producer alive
            res = idle.send(idle.batch(topic, 0, ["late"], seq=5))
            forgotten = res["error_code"] == kr.NONE
            if not forgotten:
                assert res["error_code"] == kr.OUT_OF_ORDER_SEQUENCE_NUMBER, res
                time.sleep(0.2)
        assert forgotten, "the idle producer was still remembered 10 s after producer.id.expiration.ms=1500"
        assert_refused(busy, busy.batch(topic, 0, ["gap"], seq=100), kr.OUT_OF_ORDER_SEQUENCE_NUMBER,
                       "a gap from a producer that kept producing")


def test_sequence_wraps_after_int32_max(broker):
    topic = unique("idem-wrap")
    with broker.conn() as c:
        c.create_topic(topic)
        prod = Producer(c, *c.new_producer())
        # Sequences INT32_MAX-1, INT32_MAX, 0: the next batch starts at 1.
        wrap = prod.produce(topic, 0, ["a", "b", "c"], seq=INT32_MAX - 1)
        assert prod.next_seq[(topic, 0)] == 1
        assert_retry_is_duplicate(prod, wrap)
        assert_refused(prod, prod.batch(topic, 0, ["x"], seq=0), kr.OUT_OF_ORDER_SEQUENCE_NUMBER,
                       "sequence 0 again after the wrap")
        assert prod.produce(topic, 0, ["d"])["offset"] == 3
        assert len(c.fetch_records(topic, 0)) == 4


def test_dropped_response_then_retry(broker_factory):
    """The fault setting: every 2nd Produce request is appended, then its connection closes
    without an answer; the retry on a new connection gets the original offset."""
    broker = broker_factory(settings={FAULT: "2"})
    topic = unique("idem-drop")
    with broker.conn(timeout=10) as c:
        c.create_topic(topic)
        pid, epoch = c.new_producer()
    batches = [kr.idempotent_batch([b"a", b"b"], pid, epoch, 0), kr.idempotent_batch([b"c"], pid, epoch, 2),
               kr.idempotent_batch([b"d"], pid, epoch, 3)]
    with broker.conn(timeout=10) as c:
        res = c.produce(topic, 0, batches[0])  # request 1
        assert (res["error_code"], res["base_offset"]) == (kr.NONE, 0), res
        with pytest.raises(kr.ConnectionClosed):
            c.produce(topic, 0, batches[1])  # request 2: appended, no answer
    with broker.conn(timeout=10) as c:
        assert c.latest_offset(topic, 0) == 3, "the request whose answer was dropped was not appended"
        res = c.produce(topic, 0, batches[1])  # request 3: the retry
        assert (res["error_code"], res["base_offset"]) == (kr.NONE, 2), res
        assert c.latest_offset(topic, 0) == 3
        with pytest.raises(kr.ConnectionClosed):
            c.produce(topic, 0, batches[2])  # request 4
    with broker.conn(timeout=10) as c:
        res = c.produce(topic, 0, batches[2])  # request 5
        assert (res["error_code"], res["base_offset"]) == (kr.NONE, 3), res
        assert [r.value for r in c.fetch_records(topic, 0)] == [b"a", b"b", b"c", b"d"]


# ---------------------------------------------------------------------------------------------
# 3. Producer state across restart and SIGKILL


def _restart(broker, how):
    if how == "restart":
        broker.restart()
    else:
        broker.crash_restart()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["restart", "sigkill"])
def test_retry_after_restart_is_a_duplicate(broker_factory, how):
    """A batch is appended but its answer is lost; the broker restarts (cleanly or after SIGKILL)
    before the retry. The retry, and retries of earlier batches, still get their original offsets;
    the next sequence is accepted and a gap refused."""
    broker = broker_factory(settings={FAULT: "5"})
    topic = unique(f"idem-{how}")
    with broker.conn(timeout=10) as c:
        c.create_topic(topic, 2)
        prod = Producer(c, *c.new_producer())
        prod.produce(topic, 0, ["p0-0", "p0-1", "p0-2"])  # request 1
        prod.produce(topic, 0, ["p0-3", "p0-4", "p0-5"])  # 2
        p1 = prod.produce(topic, 1, ["p1-0", "p1-1"])  # 3
        acked = prod.produce(topic, 0, ["p0-6", "p0-7", "p0-8"])  # 4
        lost = prod.batch(topic, 0, ["p0-9", "p0-10", "p0-11"])
        with pytest.raises(kr.ConnectionClosed):
            prod.send(lost)  # 5: appended, no answer
    with broker.conn(timeout=10) as c:
        assert c.latest_offset(topic, 0) == 12
    _restart(broker, how)
    with broker.conn(timeout=10) as c:
        prod.conn = c
        leo = c.latest_offset(topic, 0)
        # After SIGKILL the unanswered batch may or may not have reached the disk; either way the
        # retry must leave exactly one copy, at offset 9.
        assert leo == 12 or (how == "sigkill" and leo == 9), f"log end offset {leo} after {how}"
        res = c.produce_many({(topic, 0): lost["bytes"], (topic, 1): p1["bytes"]})  # request 1 after
        assert (res[(topic, 0)]["error_code"], res[(topic, 0)]["base_offset"]) == (kr.NONE, 9), \
            f"retry of the unanswered batch after {how}: {res}"
        assert (res[(topic, 1)]["error_code"], res[(topic, 1)]["base_offset"]) == (kr.NONE, 0), \
            f"retry of an acknowledged batch on partition 1 after {how}: {res}"
        assert_retry_is_duplicate(prod, acked)  # 2
        assert (c.latest_offset(topic, 0), c.latest_offset(topic, 1)) == (12, 2)
        prod.next_seq[(topic, 0)] = 12
        assert_refused(prod, prod.batch(topic, 0, ["gap"], seq=13), kr.OUT_OF_ORDER_SEQUENCE_NUMBER,
                       f"gap after {how}")  # 3
        assert prod.produce(topic, 0, ["p0-12"])["offset"] == 12  # 4
        assert [r.value for r in c.fetch_records(topic, 0)] == [f"p0-{i}".encode() for i in range(13)]
        assert [r.value for r in c.fetch_records(topic, 1)] == [b"p1-0", b"p1-1"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["restart", "sigkill"])
def test_producer_state_survives_restart(broker_factory, how):
    """Without the fault setting: the last five batches, the sequence and the epoch of each
    producer survive a restart, twice in a row."""
    broker = broker_factory()
    topic = unique(f"idem-state-{how}")
    with broker.conn() as c:
        c.create_topic(topic)
        old = Producer(c, *c.new_producer())
        for i in range(6):
            old.produce(topic, 0, [f"old-{i}"])
        res = c.init_producer_id(3, producer_id=old.pid, producer_epoch=0)
        assert (res["error_code"], res["producer_epoch"]) == (kr.NONE, 1), res
        old.epoch = 1
        old.next_seq.clear()
        old.produce(topic, 0, ["old-e1-0"])
        cur = Producer(c, *c.new_producer())
        for i in range(6):
            cur.produce(topic, 0, [f"cur-{2 * i}", f"cur-{2 * i + 1}"])
    end = 19
    for round_ in range(2):
        _restart(broker, how)
        with broker.conn() as c:
            old.conn = cur.conn = c
            assert c.latest_offset(topic, 0) == end
            for b in cur.sent[-5:]:
                assert_retry_is_duplicate(cur, b)
            assert_refused(cur, cur.sent[-6], kr.OUT_OF_ORDER_SEQUENCE_NUMBER,
                           f"batch older than the last five after {how} #{round_ + 1}")
            assert_refused(cur, cur.batch(topic, 0, ["gap"], seq=cur.next_seq[(topic, 0)] + 1),
                           kr.OUT_OF_ORDER_SEQUENCE_NUMBER, f"gap after {how} #{round_ + 1}")
            assert_refused(old, old.batch(topic, 0, ["stale"], seq=6, epoch=0), kr.INVALID_PRODUCER_EPOCH,
                           f"stale epoch after {how} #{round_ + 1}")
            assert_retry_is_duplicate(old, old.sent[-1])
            cur.produce(topic, 0, [f"after-{round_}"])
            end += 1
    with broker.conn() as c:
        assert len(c.fetch_records(topic, 0)) == end == 21


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["restart", "sigkill"])
@pytest.mark.parametrize("cores", [1, 2])
def test_producer_ids_unique_across_restarts(broker_factory, how, cores):
    broker = broker_factory(cores=cores)
    seen: Dict[int, str] = {}
    for round_ in range(3):
        if round_:
            _restart(broker, how)
        conns = [broker.conn() for _ in range(4)]  # with several shards, connections spread over them
        try:
            for i, c in enumerate(conns):
                for v in (0, 2, 4):
                    pid, epoch = c.new_producer(v)
                    where = f"round {round_}, connection {i}, v{v}"
                    assert pid not in seen, f"producer id {pid} ({where}) already handed out ({seen[pid]})"
                    assert epoch == 0
                    seen[pid] = where
        finally:
            for c in conns:
                c.close()
