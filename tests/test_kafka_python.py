"""kafka-python (a pure-Python client with its own protocol code) against the broker."""

import time

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

import kafka_raw as kr
from conftest import unique


def admin(broker):
    return KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=30000)


def make_consumer(broker, **kw):
    return KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False,
                         request_timeout_ms=30000, **kw)


def consume(c, n, timeout=30):
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        for _, msgs in c.poll(timeout_ms=500).items():
            out.extend(msgs)
    assert len(out) == n, f"consumed {len(out)} of {n} within {timeout}s"
    return out


def create_topic(broker, topic, partitions=1, configs=None):
    a = admin(broker)
    try:
        a.create_topics({topic: {"num_partitions": partitions, "replication_factor": 1,
                                 "configs": configs or {}}}, wait_for_metadata=True)
    finally:
        a.close()


def test_admin_create_list_delete(broker):
    a = admin(broker)
    t1, t2 = unique("kp-a"), unique("kp-b")
    a.create_topics({t1: {"num_partitions": 2, "replication_factor": 1},
                     t2: {"num_partitions": 1, "replication_factor": 1, "configs": {"retention.ms": "60000"}}},
                    wait_for_metadata=True)
    names = a.list_topics()
    assert t1 in names and t2 in names
    desc = {d["name"]: d for d in a.describe_topics([t1, t2])}
    assert len(desc[t1]["partitions"]) == 2 and len(desc[t2]["partitions"]) == 1
    a.delete_topics([t1])
    deadline = time.monotonic() + 15
    while t1 in a.list_topics():
        assert time.monotonic() < deadline, f"{t1} still listed after delete"
        time.sleep(0.1)
    assert t2 in a.list_topics()
    a.close()
    # A deleted topic's name can be created again, empty.
    with broker.conn() as c:
        c.create_topic(t1, partitions=1)
        assert c.latest_offset(t1) == 0


@pytest.mark.parametrize("acks", [1, "all"])
def test_produce_and_consume(broker, acks):
    topic = unique(f"kp-acks{acks}")
    create_topic(broker, topic, partitions=2)
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, acks=acks, linger_ms=5, request_timeout_ms=30000)
    sent = []
    futures = []
    for i in range(200):
        part = i % 2
        key = f"key-{i}".encode()
        val = f"value-{i}-".encode() * (1 + i % 7)
        hdrs = [("i", str(i).encode())]
        futures.append((part, key, val, hdrs, p.send(topic, value=val, key=key, headers=hdrs, partition=part)))
    p.flush(30)
    offsets = {0: [], 1: []}
    for part, key, val, hdrs, fut in futures:
        md = fut.get(timeout=30)
        assert md.partition == part
        offsets[part].append(md.offset)
        sent.append((part, md.offset, key, val, hdrs))
    p.close()
    for part in (0, 1):
        assert sorted(offsets[part]) == list(range(100))

    c = make_consumer(broker)
    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    c.assign(tps)
    c.seek_to_beginning()
    msgs = consume(c, 200)
    got = {(m.partition, m.offset): m for m in msgs}
    for part, off, key, val, hdrs in sent:
        m = got[(part, off)]
        assert (m.key, m.value, list(m.headers)) == (key, val, hdrs)
    assert c.end_offsets(tps) == {tps[0]: 100, tps[1]: 100}
    assert c.beginning_offsets(tps) == {tps[0]: 0, tps[1]: 0}
    c.close()


def test_offsets_for_times(broker):
    topic = unique("kp-times")
    create_topic(broker, topic)
    base = int(time.time() * 1000) - 600_000
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=0, batch_size=1)
    for i in range(8):
        p.send(topic, value=f"v{i}".encode(), partition=0, timestamp_ms=base + i * 100).get(timeout=30)
    p.close()
    c = make_consumer(broker)
    tp = TopicPartition(topic, 0)
    for ts, want in [(base - 1, 0), (base + 250, 3), (base + 700, 7)]:
        res = c.offsets_for_times({tp: ts})
        assert res[tp] is not None and res[tp].offset == want, (ts, res)
    assert c.offsets_for_times({tp: base + 10_000})[tp] is None
    c.assign([tp])
    c.seek(tp, 5)
    msgs = consume(c, 3)
    assert [m.value for m in msgs] == [b"v5", b"v6", b"v7"]
    assert [m.timestamp for m in msgs] == [base + 500, base + 600, base + 700]
    c.close()


def test_consumer_reads_raw_produced_batches(broker):
    """Batches built by the raw client (several records each, mid-batch seek) read back through
    kafka-python."""
    topic = unique("kp-raw")
    with broker.conn() as conn:
        conn.create_topic(topic)
        for b in range(5):
            batch = kr.build_batch([kr.Record(f"b{b}r{r}".encode(), f"k{r}".encode(), [("b", str(b).encode())])
                                    for r in range(4)])
            res = conn.produce(topic, 0, batch)
            assert res["error_code"] == 0 and res["base_offset"] == b * 4
    c = make_consumer(broker)
    tp = TopicPartition(topic, 0)
    c.assign([tp])
    c.seek(tp, 6)  # in the middle of the second batch
    msgs = consume(c, 14)
    assert [m.offset for m in msgs] == list(range(6, 20))
    assert [m.value for m in msgs] == [f"b{o // 4}r{o % 4}".encode() for o in range(6, 20)]
    c.close()


@pytest.mark.timeout(60)
def test_default_producer_config(broker):
    """kafka-python >= 3 producers are idempotent by default (InitProducerId, then batches with
    producer id and sequences)."""
    topic = unique("kp-default")
    create_topic(broker, topic)
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, request_timeout_ms=10000, max_block_ms=10000)
    try:
        assert p.config["enable_idempotence"]
        mds = [p.send(topic, value=f"default config {i}".encode(), partition=0) for i in range(20)]
        assert [f.get(timeout=20).offset for f in mds] == list(range(20))
    finally:
        p.close(timeout=5)
    with broker.conn() as c:
        batches = c.fetch_batches(topic, 0)
    assert [r.value for b in batches for r in b.records] == [f"default config {i}".encode() for i in range(20)]
    assert all(b.producer_id >= 0 and b.producer_epoch >= 0 for b in batches), \
        [(b.producer_id, b.producer_epoch, b.base_sequence) for b in batches]
    assert batches[0].base_sequence == 0
