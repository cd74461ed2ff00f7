"""Several shards (--cores 2): partitions owned by different cores, requests that span them,
and pipelined requests on one connection answered in order."""

import random
import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

import kafka_raw as kr
from conftest import unique

PARTITIONS = 8


@pytest.fixture
def broker2(broker_factory):
    return broker_factory(cores=2)


def test_one_connection_all_partitions(broker2):
    topic = unique("shards")
    with broker2.conn() as c:
        c.create_topic(topic, partitions=PARTITIONS)
        md = c.metadata([topic], version=1)
        node = md["brokers"][0]["node_id"]
        assert sorted(md["topics"][topic]["partitions"]) == list(range(PARTITIONS))
        assert all(p["leader"] == node for p in md["topics"][topic]["partitions"].values())
        expected = {p: [] for p in range(PARTITIONS)}
        for rnd in range(25):
            parts = {}
            for p in range(PARTITIONS):
                vals = [f"p{p}-r{rnd}-{i}".encode() for i in range(1 + (p + rnd) % 4)]
                parts[(topic, p)] = kr.simple_batch(vals)
                expected[p].append(vals)
            res = c.produce_many(parts, acks=-1 if rnd % 2 else 1)
            assert sorted(k[1] for k in res) == list(range(PARTITIONS))
            for p in range(PARTITIONS):
                r = res[(topic, p)]
                assert r["error_code"] == 0, r
                assert r["base_offset"] == sum(len(v) for v in expected[p][:-1]), (p, r)
        # One fetch request for all partitions, repeated until everything is read.
        want = {p: [v for vals in expected[p] for v in vals] for p in range(PARTITIONS)}
        got = {p: [] for p in range(PARTITIONS)}
        offsets = {(topic, p): 0 for p in range(PARTITIONS)}
        deadline = time.monotonic() + 30
        while any(len(got[p]) < len(want[p]) for p in range(PARTITIONS)):
            assert time.monotonic() < deadline, {p: len(got[p]) for p in got}
            res = c.fetch_many(offsets, max_wait_ms=100, partition_max_bytes=300)
            for (t, p), r in res.items():
                assert r["error_code"] == 0, r
                # The last round used acks=1: with flush.on.ack its records become visible one
                # group-commit fdatasync after the answer, so the high watermark may still lag.
                assert r["high_watermark"] <= len(want[p])
                for b in kr.parse_batches(r["records"] or b""):
                    for rec in b.records:
                        if rec.offset >= offsets[(t, p)]:
                            got[p].append(rec.value)
                    offsets[(t, p)] = max(offsets[(t, p)], b.next_offset)
        assert got == want
        lo = c.list_offsets_many({(topic, p): kr.LATEST for p in range(PARTITIONS)})
        assert {k[1]: v["offset"] for k, v in lo.items()} == {p: len(want[p]) for p in range(PARTITIONS)}


def test_librdkafka_across_shards(broker2):
    topic = unique("shards-cf")
    with broker2.conn() as c:
        c.create_topic(topic, partitions=PARTITIONS)
    p = Producer({"bootstrap.servers": broker2.bootstrap, "acks": "all", "linger.ms": 5,
                  "enable.idempotence": False, "broker.address.family": "v4"})
    n = 800
    errors = []
    for i in range(n):
        p.produce(topic, key=f"k{i}".encode(), value=f"v{i}".encode(), partition=i % PARTITIONS,
                  on_delivery=lambda err, msg: errors.append(err) if err else None)
        p.poll(0)
    assert p.flush(30) == 0 and not errors
    c = Consumer({"bootstrap.servers": broker2.bootstrap, "group.id": unique("g"), "enable.auto.commit": False,
                  "broker.address.family": "v4", "log_level": 3})
    c.assign([TopicPartition(topic, q, OFFSET_BEGINNING) for q in range(PARTITIONS)])
    msgs = []
    deadline = time.monotonic() + 30
    while len(msgs) < n and time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is not None and not m.error():
            msgs.append(m)
    c.close()
    assert len(msgs) == n
    for q in range(PARTITIONS):
        vals = [m.value() for m in sorted(msgs, key=lambda m: m.offset()) if m.partition() == q]
        assert vals == [f"v{i}".encode() for i in range(q, n, PARTITIONS)]


def test_pipelined_requests_answered_in_order(broker2):
    topic = unique("pipe")
    rnd = random.Random(99)
    with broker2.conn() as setup:
        setup.create_topic(topic, partitions=PARTITIONS)
    with broker2.conn() as c:
        sent = []  # (corr, kind, extra)
        counts = [0] * PARTITIONS
        acks0 = []
        for i in range(60):
            kind = rnd.choice(["produce", "produce", "produce", "fetch", "metadata", "apiversions", "acks0"])
            if kind in ("produce", "acks0"):
                p = rnd.randrange(PARTITIONS)
                acks = 0 if kind == "acks0" else rnd.choice([1, -1])
                vals = [f"pipe-{i}-{j}".encode() for j in range(rnd.randint(1, 3))]
                corr = c.produce_send({(topic, p): kr.simple_batch(vals)}, acks=acks)
                if acks == 0:
                    acks0.append((p, vals))
                else:
                    sent.append((corr, "produce", (p, vals)))
                counts[p] += len(vals)
            elif kind == "fetch":
                p = rnd.randrange(PARTITIONS)
                sent.append((c.fetch_send({(topic, p): 0}, max_wait_ms=rnd.choice([0, 50])), "fetch", p))
            elif kind == "metadata":
                sent.append((c.send(kr.API_METADATA, 1, kr.Writer().array([topic], lambda w, t: w.string(t)).done()),
                             "metadata", None))
            else:
                sent.append((c.send(kr.API_API_VERSIONS, 0, b""), "apiversions", None))
        # Nothing read yet: now collect every response, in order.
        order = []
        next_off = {}
        for corr, kind, extra in sent:
            got, r = c.recv()
            order.append(got)
            assert got == corr, f"response {got} arrived where {corr} ({kind}) was expected"
            if kind == "produce":
                res = kr.KafkaConn.parse_produce(r)
                p, vals = extra
                pr = res[(topic, p)]
                assert pr["error_code"] == 0, pr
                assert pr["base_offset"] >= next_off.get(p, 0)
                next_off[p] = pr["base_offset"] + len(vals)
            elif kind == "fetch":
                res = kr.KafkaConn.parse_fetch(r)
                assert res[(topic, extra)]["error_code"] == 0
        assert order == [s[0] for s in sent]
        # acks=0 records were stored too.
        deadline = time.monotonic() + 10
        while [c.latest_offset(topic, p) for p in range(PARTITIONS)] != counts:
            assert time.monotonic() < deadline, ([c.latest_offset(topic, p) for p in range(PARTITIONS)], counts)
            time.sleep(0.1)
        stored = set()
        for p in range(PARTITIONS):
            stored.update(r.value for r in c.fetch_records(topic, p))
        for p, vals in acks0:
            assert set(vals) <= stored
        # Per partition, records are stored in the order the requests were sent.
        for p in range(PARTITIONS):
            vals = [r.value.decode() for r in c.fetch_records(topic, p)]
            idx = [int(v.split("-")[1]) for v in vals]
            assert idx == sorted(idx), f"partition {p}: pipelined produces applied out of order"


def test_many_connections_many_partitions(broker2):
    """Connections land on different shards; each talks to partitions on both."""
    topic = unique("conns")
    with broker2.conn() as c:
        c.create_topic(topic, partitions=PARTITIONS)
    conns = [broker2.conn() for _ in range(6)]
    try:
        for rnd in range(10):
            for i, c in enumerate(conns):
                c.produce_send({(topic, p): kr.simple_batch([f"c{i}-r{rnd}-p{p}".encode()])
                                for p in range(PARTITIONS)}, acks=-1)
            for c in conns:
                _, r = c.recv()
                res = kr.KafkaConn.parse_produce(r)
                assert all(v["error_code"] == 0 for v in res.values())
        with broker2.conn() as c:
            for p in range(PARTITIONS):
                vals = {r.value for r in c.fetch_records(topic, p)}
                assert vals == {f"c{i}-r{rnd}-p{p}".encode() for i in range(6) for rnd in range(10)}
    finally:
        for c in conns:
            c.close()


def test_fetch_long_poll_across_shards(broker2):
    """A fetch with max_wait_ms waits for data on partitions owned by any shard and returns as
    soon as a produce (on another connection) makes min_bytes available."""
    import threading

    topic = unique("longpoll")
    with broker2.conn() as c:
        c.create_topic(topic, partitions=PARTITIONS)
    with broker2.conn() as c:
        # Nothing to read: the broker waits about max_wait_ms, then answers empty.
        t0 = time.monotonic()
        res = c.fetch_many({(topic, p): 0 for p in range(PARTITIONS)}, max_wait_ms=600, min_bytes=1)
        waited = time.monotonic() - t0
        assert 0.45 <= waited < 5.0, f"empty long poll returned after {waited:.2f}s"
        assert all(r["error_code"] == 0 and not r["records"] for r in res.values())
        for target in (0, PARTITIONS - 1, 3):
            ends = {p: c.latest_offset(topic, p) for p in range(PARTITIONS)}

            def produce_later():
                time.sleep(0.3)
                with broker2.conn() as pc:
                    pc.produce(topic, target, kr.simple_batch([f"wake-{target}".encode()]), acks=1)

            th = threading.Thread(target=produce_later)
            th.start()
            t0 = time.monotonic()
            res = c.fetch_many({(topic, p): ends[p] for p in range(PARTITIONS)}, max_wait_ms=10000, min_bytes=1)
            waited = time.monotonic() - t0
            th.join(10)
            assert waited < 5.0, f"long poll not woken by data on partition {target} ({waited:.2f}s)"
            recs = kr.records_of(res[(topic, target)]["records"] or b"")
            assert [r.value for r in recs] == [f"wake-{target}".encode()]


@pytest.mark.parametrize("cores", [1, 2])
def test_pipelined_produces_keep_order_within_partition(broker_factory, cores):
    """Produce requests pipelined on one connection are appended in the order they were sent,
    whatever their acks and whatever slower requests sit between them (clients with several
    requests in flight rely on it)."""
    b = broker_factory(cores=cores)
    topic = unique("order")
    with b.conn() as setup:
        setup.create_topic(topic, partitions=3)  # partition 2 stays empty: fetches on it wait
    n = 150
    acks_cycle = [-1, 1, 0, 1, -1, 0]
    with b.conn() as c:
        expected = {0: [], 1: []}
        kinds = {}
        for i in range(n):
            p = (i // 3) % 2
            acks = acks_cycle[i % len(acks_cycle)]
            corr = c.produce_send({(topic, p): kr.simple_batch([f"{i}".encode()])}, acks=acks)
            if acks != 0:
                kinds[corr] = "produce"
            expected[p].append(f"{i}".encode())
            if i % 7 == 3:  # a long-polling fetch in between
                kinds[c.fetch_send({(topic, 2): 0}, max_wait_ms=50)] = "fetch"
        while c.pending:
            corr, r = c.recv()
            if kinds[corr] == "produce":
                res = kr.KafkaConn.parse_produce(r)
                assert all(v["error_code"] == 0 for v in res.values()), res
        deadline = time.monotonic() + 10
        while sum(c.latest_offset(topic, p) for p in (0, 1)) < n:
            assert time.monotonic() < deadline, "acks=0 records missing"
            time.sleep(0.05)
        for p in (0, 1):
            got = [r.value for r in c.fetch_records(topic, p)]
            assert sorted(got, key=int) == sorted(expected[p], key=int), f"partition {p}: records lost or duplicated"
            assert got == expected[p], (f"partition {p}: pipelined produces appended out of order; first "
                                        f"difference at index {next(i for i, (a, e) in enumerate(zip(got, expected[p])) if a != e)}")


def test_a_panicking_shard_stops_the_whole_broker(broker_factory):
    """A shard that panics must not leave the others serving and /v1/ready green while its
    partitions and groups hang: the process aborts, and the log says which shard and why."""
    import signal
    import urllib.request

    broker = broker_factory(cores=2, settings={"test.fault.shard.panic.after.ms": "1500"})
    topic = unique("panic")
    with broker.conn() as c:
        c.create_topic(topic, partitions=2)
    try:
        code = broker.proc.wait(15)
    except Exception:
        with urllib.request.urlopen(broker.admin_url + "/v1/ready", timeout=5) as r:
            status = r.status
        pytest.fail(f"the broker kept running after a shard panicked (/v1/ready answers {status})")
    assert code == -signal.SIGABRT, f"exit code {code}, expected SIGABRT"
    log = broker.log_text()
    assert "shard 1 (" in log and "panicked" in log and "shard 1 panics on purpose" in log, log[-2000:]
    with pytest.raises(OSError):
        urllib.request.urlopen(broker.admin_url + "/v1/ready", timeout=2)
