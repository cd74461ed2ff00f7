"""confluent-kafka (librdkafka): admin API, keyed produce with headers, consume, offsets."""

import json
import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions,
                                   NewTopic, ResourceType)

import kafka_raw as kr
from conftest import unique


def admin(broker):
    return AdminClient({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4"})


def producer(broker, **extra):
    conf = {"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 5,
            "enable.idempotence": False, "broker.address.family": "v4", "message.timeout.ms": 30000}
    conf.update(extra)
    return Producer(conf)


def consumer(broker, **extra):
    conf = {"bootstrap.servers": broker.bootstrap, "group.id": unique("g"), "enable.auto.commit": False,
            "enable.partition.eof": False, "broker.address.family": "v4", "log_level": 3}
    conf.update(extra)
    return Consumer(conf)


def wait_all(futures, timeout=30):
    return {k: f.result(timeout=timeout) for k, f in futures.items()}


def create_topics(broker, new_topics):
    # The AdminClient must outlive its futures: a collected client fails them with _DESTROY.
    a = admin(broker)
    return wait_all(a.create_topics(new_topics))


def produce_all(p, items, timeout=30):
    """items: list of kwargs for produce(); returns delivery reports (err, topic, partition, offset,
    key, value, headers, timestamp) in completion order."""
    reports = []

    def cb(err, msg):
        reports.append((err, msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(),
                        msg.headers(), msg.timestamp()))

    for it in items:
        while True:
            try:
                p.produce(on_delivery=cb, **it)
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    left = p.flush(timeout)
    assert left == 0, f"{left} messages not delivered within {timeout}s"
    assert len(reports) == len(items)
    errs = [r for r in reports if r[0] is not None]
    assert not errs, f"delivery errors: {errs[:5]}"
    return reports


def consume_n(c, n, timeout=30):
    """Poll until n messages arrived. Error events are collected, not fatal: without consumer
    group support librdkafka reports coordinator errors, which do not affect assigned
    partitions."""
    msgs, errors = [], []
    deadline = time.monotonic() + timeout
    while len(msgs) < n and time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is None:
            continue
        if m.error():
            errors.append(str(m.error()))
            continue
        msgs.append(m)
    assert len(msgs) == n, f"consumed {len(msgs)} of {n} messages within {timeout}s; errors: {errors[:10]}"
    return msgs


def consume_none(c, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        m = c.poll(0.2)
        assert m is None or m.error(), f"unexpected message {m.value()!r}"


def topic_config(a, topic):
    res = ConfigResource(ResourceType.TOPIC, topic)
    return {k: v.value for k, v in a.describe_configs([res])[res].result(timeout=30).items()}


def wait_for(pred, timeout=15, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_admin_topic_lifecycle(broker):
    a = admin(broker)
    topic = unique("cf-admin")
    wait_all(a.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1,
                                       config={"retention.ms": "3600000", "cleanup.policy": "delete"})]))
    md = a.list_topics(timeout=30)
    assert topic in md.topics
    assert sorted(md.topics[topic].partitions) == [0, 1, 2]
    assert len(md.brokers) == 1
    (b,) = md.brokers.values()
    assert (b.host, b.port) == ("127.0.0.1", broker.port)
    for p in md.topics[topic].partitions.values():
        assert p.leader == b.id and p.replicas == [b.id] and p.isrs == [b.id]

    # Creating it again fails with TOPIC_ALREADY_EXISTS.
    with pytest.raises(KafkaException) as ei:
        wait_all(a.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)]))
    assert ei.value.args[0].code() == 36

    wait_all(a.create_partitions([NewPartitions(topic, 5)]))
    wait_for(lambda: len(a.list_topics(topic, timeout=10).topics[topic].partitions) == 5,
             what="5 partitions")
    # New partitions are writable.
    with broker.conn() as c:
        assert c.produce(topic, 4, kr.simple_batch([b"p4"]))["error_code"] == 0
    # Shrinking is refused.
    with pytest.raises(KafkaException):
        wait_all(a.create_partitions([NewPartitions(topic, 2)]))

    wait_all(a.delete_topics([topic]))
    wait_for(lambda: topic not in a.list_topics(timeout=10).topics, what="topic deletion")
    # Deleting an unknown topic reports UNKNOWN_TOPIC_OR_PARTITION.
    with pytest.raises(KafkaException) as ei:
        wait_all(a.delete_topics([topic]))
    assert ei.value.args[0].code() == 3


def test_configs_round_trip(broker):
    a = admin(broker)
    topic = unique("cf-cfg")
    wait_all(a.create_topics([NewTopic(topic, 1, 1, config={"retention.ms": "3600000"})]))
    cfg = topic_config(a, topic)
    assert cfg["retention.ms"] == "3600000"
    for name in ("retention.bytes", "segment.bytes", "segment.ms", "cleanup.policy", "max.message.bytes",
                 "message.timestamp.type", "min.insync.replicas", "flush.messages", "flush.ms"):
        assert name in cfg, f"{name} missing from DescribeConfigs: {sorted(cfg)}"
    assert cfg["max.message.bytes"] == "1048588"
    assert cfg["cleanup.policy"] == "delete"

    # AlterConfigs (non-incremental: the given set replaces the overrides).
    res = ConfigResource(ResourceType.TOPIC, topic, set_config={"retention.ms": "7200000",
                                                                  "max.message.bytes": "50000"})
    wait_all(a.alter_configs([res]))
    cfg = topic_config(a, topic)
    assert cfg["retention.ms"] == "7200000" and cfg["max.message.bytes"] == "50000"

    # IncrementalAlterConfigs SET and DELETE.
    res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("retention.ms", "1000000", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("max.message.bytes", None, incremental_operation=AlterConfigOpType.DELETE)])
    wait_all(a.incremental_alter_configs([res]))
    cfg = topic_config(a, topic)
    assert cfg["retention.ms"] == "1000000"
    assert cfg["max.message.bytes"] == "1048588", "DELETE did not restore the default"

    # The altered limit is enforced by produce.
    res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("max.message.bytes", "1000", incremental_operation=AlterConfigOpType.SET)])
    wait_all(a.incremental_alter_configs([res]))
    with broker.conn() as c:
        assert c.produce(topic, 0, kr.simple_batch([b"x" * 2000]))["error_code"] == kr.MESSAGE_TOO_LARGE
        assert c.produce(topic, 0, kr.simple_batch([b"x" * 100]))["error_code"] == 0

    # An invalid value is refused and changes nothing.
    res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("retention.ms", "soon", incremental_operation=AlterConfigOpType.SET)])
    with pytest.raises(KafkaException):
        wait_all(a.incremental_alter_configs([res]))
    assert topic_config(a, topic)["retention.ms"] == "1000000"

    # Overrides survive a restart.
    broker.restart()
    a = admin(broker)
    cfg = topic_config(a, topic)
    assert cfg["retention.ms"] == "1000000" and cfg["max.message.bytes"] == "1000"


def test_describe_broker_config_and_cluster(broker):
    a = admin(broker)
    md = a.list_topics(timeout=30)
    (node,) = md.brokers
    res = ConfigResource(ResourceType.BROKER, str(node))
    cfg = {k: v.value for k, v in a.describe_configs([res])[res].result(timeout=30).items()}
    assert cfg.get("message.max.bytes") == "1048588", cfg.get("message.max.bytes")
    assert cfg.get("num.partitions") == "1"
    dc = a.describe_cluster().result(timeout=30)
    assert [n.id for n in dc.nodes] == [node]
    assert dc.nodes[0].host == "127.0.0.1" and dc.nodes[0].port == broker.port
    assert dc.cluster_id


def test_keyed_produce_with_headers_and_consume(broker):
    topic = unique("cf-keyed")
    create_topics(broker, [NewTopic(topic, 3, 1)])
    n = 300
    items = []
    for i in range(n):
        items.append(dict(topic=topic, partition=i % 3, key=f"key-{i}".encode(),
                          value=json.dumps({"i": i, "pad": "z" * (i % 50)}).encode(),
                          headers=[("seq", str(i).encode()), ("origin", b"confluent"), ("empty", b"")]))
    reports = produce_all(producer(broker), items)
    by_part = {}
    for _, t, p, off, key, val, hdrs, _ in reports:
        by_part.setdefault(p, []).append(off)
    for p in range(3):
        assert sorted(by_part[p]) == list(range(n // 3)), f"offsets of partition {p} not contiguous"

    c = consumer(broker)
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(3)])
    msgs = consume_n(c, n)
    c.close()
    got = {(m.partition(), m.offset()): m for m in msgs}
    assert len(got) == n
    sent_headers = {it["key"]: it["headers"] for it in items}
    for _, t, p, off, key, val, _, _ in reports:
        m = got[(p, off)]
        assert m.key() == key and m.value() == val
        assert list(m.headers() or []) == sent_headers[key]
        i = json.loads(m.value())["i"]
        assert m.key() == f"key-{i}".encode() and i % 3 == p
    # Per-partition order is production order.
    for p in range(3):
        seq = [json.loads(m.value())["i"] for m in sorted(msgs, key=lambda m: m.offset()) if m.partition() == p]
        assert seq == sorted(seq)


def test_keyed_partitioning_is_stable(broker):
    """The default partitioner maps a key to one partition; the broker must keep that order."""
    topic = unique("cf-part")
    create_topics(broker, [NewTopic(topic, 4, 1)])
    items = [dict(topic=topic, key=f"user-{i % 10}".encode(), value=f"{i}".encode()) for i in range(200)]
    reports = produce_all(producer(broker, **{"linger.ms": 20}), items)
    key_parts = {}
    for _, _, p, _, key, _, _, _ in reports:
        key_parts.setdefault(key, set()).add(p)
    assert all(len(s) == 1 for s in key_parts.values())
    c = consumer(broker)
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(4)])
    msgs = consume_n(c, 200)
    c.close()
    per_key = {}
    for m in sorted(msgs, key=lambda m: (m.partition(), m.offset())):
        per_key.setdefault(m.key(), []).append(int(m.value()))
    for k, vals in per_key.items():
        assert vals == sorted(vals), f"order of key {k} broken"
    assert sum(len(v) for v in per_key.values()) == 200


def test_offsets_for_times_and_watermarks(broker):
    topic = unique("cf-times")
    create_topics(broker, [NewTopic(topic, 1, 1)])
    base = int(time.time() * 1000) - 3_600_000
    items = [dict(topic=topic, partition=0, value=f"t{i}".encode(), timestamp=base + i * 1000) for i in range(10)]
    # One message per batch so that every record's timestamp is a batch boundary.
    p = producer(broker, **{"linger.ms": 0, "batch.num.messages": 1})
    reports = produce_all(p, items)
    assert sorted(r[3] for r in reports) == list(range(10))
    assert sorted(r[7][1] for r in reports) == [base + i * 1000 for i in range(10)]

    c = consumer(broker)
    q = [TopicPartition(topic, 0, base - 5000), TopicPartition(topic, 0, base + 3000),
         TopicPartition(topic, 0, base + 3500), TopicPartition(topic, 0, base + 9000),
         TopicPartition(topic, 0, base + 9001)]
    want = [0, 3, 4, 9, -1]
    got = []
    for tp in q:  # one at a time: librdkafka merges duplicates of one partition
        (r,) = c.offsets_for_times([tp], timeout=30)
        assert r.error is None, r.error
        got.append(r.offset)
    assert got == want
    assert c.get_watermark_offsets(TopicPartition(topic, 0), timeout=30) == (0, 10)

    c.assign([TopicPartition(topic, 0, 4)])
    msgs = consume_n(c, 6)
    assert [m.value() for m in msgs] == [f"t{i}".encode() for i in range(4, 10)]
    assert [m.timestamp()[1] for m in msgs] == [base + i * 1000 for i in range(4, 10)]
    c.close()


def test_produce_to_autocreated_topic(broker_factory):
    broker = broker_factory(settings={"num.partitions": "3"})
    topic = unique("cf-auto")
    items = [dict(topic=topic, key=f"k{i}".encode(), value=f"v{i}".encode()) for i in range(30)]
    reports = produce_all(producer(broker), items)
    assert {r[2] for r in reports} <= {0, 1, 2}
    md = admin(broker).list_topics(topic, timeout=30)
    assert sorted(md.topics[topic].partitions) == [0, 1, 2]
    c = consumer(broker)
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(3)])
    msgs = consume_n(c, 30)
    c.close()
    assert sorted(m.value() for m in msgs) == sorted(f"v{i}".encode() for i in range(30))


@pytest.mark.parametrize("acks", ["0", "1", "all"])
def test_acks_levels(broker, acks):
    topic = unique(f"cf-acks{acks}")
    create_topics(broker, [NewTopic(topic, 1, 1)])
    items = [dict(topic=topic, partition=0, value=f"{acks}-{i}".encode()) for i in range(100)]
    produce_all(producer(broker, acks=acks), items)
    with broker.conn() as c:
        # acks=0 gives no confirmation: wait until all are in.
        wait_for(lambda: c.latest_offset(topic) == 100, what="100 records")
        vals = [r.value for r in c.fetch_records(topic, 0)]
    assert vals == [f"{acks}-{i}".encode() for i in range(100)]


def test_long_poll_consumer_sees_new_data(broker):
    topic = unique("cf-tail")
    create_topics(broker, [NewTopic(topic, 1, 1)])
    c = consumer(broker, **{"fetch.wait.max.ms": 5000})
    c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    consume_none(c, 1.5)
    p = producer(broker)
    for i in range(5):
        p.produce(topic, value=f"late-{i}".encode(), partition=0)
        p.flush(10)
        t0 = time.monotonic()
        msgs = consume_n(c, 1, timeout=10)
        assert msgs[0].value() == f"late-{i}".encode()
        assert time.monotonic() - t0 < 2.5, "a long-polling fetch was not woken by new data"
    c.close()
