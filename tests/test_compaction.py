"""Compaction (`cleanup.policy=compact`): the newest record of each key survives at its original
offset, tombstones live for `delete.retention.ms`, compressed batches, keyless records refused,
readers (confluent-kafka, kafka-python), the consumer-group offsets log, idempotent producers,
and crashes at every step of a segment swap."""

import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType
from kafka import KafkaConsumer
from kafka import TopicPartition as KpTopicPartition

import kafka_raw as kr
from conftest import unique, file_sizes

SETTINGS = {"log.cleaner.backoff.ms": "100"}
SEGMENT = 4096
# segment.ms: after a pause, the next append rolls, so every update before it is in a closed
# (cleanable) segment; the sentinel record written then is alone in the active segment.
COMPACT = {"cleanup.policy": "compact", "segment.bytes": str(SEGMENT), "segment.ms": "1000",
           "min.cleanable.dirty.ratio": "0.01"}
SENTINEL = b"zz-sentinel"


def new_topic(broker, configs, prefix="cmp", partitions=1):
    topic = unique(prefix)
    with broker.conn() as c:
        c.create_topic(topic, partitions, configs)
    return topic


def producer(broker, **extra):
    conf = {"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 2, "batch.size": 2048,
            "enable.idempotence": False, "broker.address.family": "v4", "log_level": 3}
    conf.update(extra)
    return Producer(conf)


def produce(p, topic, records, timeout=60):
    """Produces (key, value) pairs; returns {offset: (key, value)} as acknowledged."""
    acked, errors = {}, []

    def cb(err, msg):
        if err:
            errors.append(err)
        else:
            acked[msg.offset()] = (msg.key(), msg.value())

    for k, v in records:
        p.produce(topic, key=k, value=v, partition=0, on_delivery=cb)
        p.poll(0)
    assert p.flush(timeout) == 0
    assert not errors, errors[:5]
    assert len(acked) == len(records)
    return acked


def updates(n, keys, tag="v", size=40):
    return [(f"key-{i % keys:03d}".encode(), f"{tag}-{i}".encode().ljust(size, b".")) for i in range(n)]


def latest(acked):
    """The newest acknowledged record of each key, as [(offset, key, value)] in offset order."""
    by_key = {}
    for offset in sorted(acked):
        k, v = acked[offset]
        by_key[k] = (offset, k, v)
    return sorted(by_key.values())


def write_sentinel(p, topic, acked):
    """After segment.ms, one more record: everything before it is now in closed segments."""
    time.sleep(1.1)
    # A key of its own each time: an older sentinel in a closed segment is not replaced by it.
    acked.update(produce(p, topic, [(SENTINEL + b"-%d" % len(acked), b"end")]))


def raw_records(broker, topic):
    with broker.conn() as c:
        return [(r.offset, r.key, r.value) for r in c.fetch_records(topic, 0, 0)]


def log_bytes(broker, topic):
    return sum(file_sizes(broker.partition_dir(topic)).values())


def wait_records(broker, topic, expected, timeout=20.0, what="compaction"):
    deadline = time.monotonic() + timeout
    while True:
        got = raw_records(broker, topic)
        if got == expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{topic}: {what} did not finish within {timeout}s: {len(got)} records, "
                                 f"expected {len(expected)}; first differences: "
                                 f"{[(g, e) for g, e in zip(got, expected) if g != e][:3]}")
        time.sleep(0.1)


def consume_confluent(broker, topic, end):
    """Every record from the beginning up to offset `end` - 1 with librdkafka."""
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique("g"), "enable.auto.commit": False,
                  "enable.partition.eof": False, "broker.address.family": "v4", "log_level": 3})
    out = []
    try:
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + 30
        while (not out or out[-1][0] < end - 1) and time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is None:
                continue
            assert not m.error(), m.error()
            out.append((m.offset(), m.key(), m.value()))
    finally:
        c.close()
    assert out and out[-1][0] == end - 1, f"consumed up to {out[-1][0] if out else None}, expected {end - 1}"
    return out


def consume_kafka_python(broker, topic, end):
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False, group_id=None,
                      consumer_timeout_ms=1000)
    out = []
    try:
        tp = KpTopicPartition(topic, 0)
        c.assign([tp])
        c.seek_to_beginning(tp)
        deadline = time.monotonic() + 30
        while (not out or out[-1][0] < end - 1) and time.monotonic() < deadline:
            for records in c.poll(timeout_ms=200).values():
                out.extend((r.offset, r.key, r.value) for r in records)
    finally:
        c.close()
    return out


def alter(broker, topic, configs):
    a = AdminClient({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4"})
    res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in configs.items()])
    for f in a.incremental_alter_configs([res]).values():
        f.result(timeout=30)


def test_latest_value_per_key_and_tombstones(broker_factory):
    broker = broker_factory(settings=SETTINGS)
    short = new_topic(broker, {**COMPACT, "delete.retention.ms": "6000"}, prefix="cmp-short")
    long_ = new_topic(broker, {**COMPACT, "delete.retention.ms": "3600000"}, prefix="cmp-long")
    data = updates(2000, 20)
    deleted = [f"key-{i:03d}".encode() for i in range(5)]
    p = producer(broker)
    acked = {}
    for t in (short, long_):
        acked[t] = produce(p, t, data)
        acked[t].update(produce(p, t, [(k, None) for k in deleted]))
    tombstones_at = time.monotonic()
    before = log_bytes(broker, short)
    for t in (short, long_):
        write_sentinel(p, t, acked[t])
    # Same records, same offsets in both topics.
    assert acked[short] == acked[long_]
    with_tombstones = latest(acked[short])
    assert len(with_tombstones) == 21 and sum(1 for _, _, v in with_tombstones if v is None) == 5

    wait_records(broker, long_, with_tombstones)
    wait_records(broker, short, with_tombstones, timeout=max(0.5, 5.5 - (time.monotonic() - tombstones_at)),
                 what="compaction before delete.retention.ms")
    assert log_bytes(broker, short) < before / 10, (log_bytes(broker, short), before)

    # Each reader sees exactly the newest value of each key, at the offset the producer was told.
    end = max(acked[long_]) + 1
    assert consume_confluent(broker, long_, end) == with_tombstones
    assert consume_kafka_python(broker, long_, end) == with_tombstones

    # After delete.retention.ms the tombstones go; with a long one they stay.
    live = [r for r in with_tombstones if r[2] is not None]
    wait_records(broker, short, live, what="tombstone removal")
    assert consume_confluent(broker, short, end) == live
    assert raw_records(broker, long_) == with_tombstones

    # Offsets keep growing from where they were; later updates compact too.
    more = produce(p, short, updates(200, 20, tag="w"))
    assert min(more) == end
    acked[short].update(more)
    write_sentinel(p, short, acked[short])
    wait_records(broker, short, [r for r in latest(acked[short]) if r[2] is not None])


@pytest.mark.parametrize("codec", [kr.CODEC_LZ4, kr.CODEC_ZSTD, kr.CODEC_GZIP, kr.CODEC_SNAPPY])
def test_compressed_batches(broker_factory, codec):
    name = {v: k for k, v in kr.CODEC_NAMES.items()}[codec]
    broker = broker_factory(settings=SETTINGS)
    topic = new_topic(broker, COMPACT, prefix=f"cmp-{name}")
    p = producer(broker, **{"compression.type": name, "linger.ms": 5, "batch.size": 16384})
    acked = produce(p, topic, updates(1500, 15, size=60))
    write_sentinel(p, topic, acked)
    expected = latest(acked)
    wait_records(broker, topic, expected)
    with broker.conn() as c:
        batches = c.fetch_batches(topic, 0, 0)
    # Surviving records of compressed batches stay in batches compressed with the same codec.
    assert any(b.codec == codec for b in batches), [b.codec for b in batches]
    assert all(b.codec in (codec, kr.CODEC_NONE) for b in batches)
    assert consume_confluent(broker, topic, max(acked) + 1) == expected


def test_keyless_records_are_refused(broker_factory):
    broker = broker_factory(settings=SETTINGS)
    topic = new_topic(broker, COMPACT, prefix="cmp-keyless")
    with broker.conn() as c:
        assert c.produce(topic, 0, kr.simple_batch([b"no key"]))["error_code"] == kr.INVALID_RECORD
        # One keyless record refuses the whole batch.
        mixed = kr.simple_batch([b"a", b"b", b"c"], keys=[b"k1", None, b"k3"])
        assert c.produce(topic, 0, mixed)["error_code"] == kr.INVALID_RECORD
        assert c.latest_offset(topic) == 0
    errors = []
    p = producer(broker, retries=0)
    p.produce(topic, value=b"keyless", partition=0, on_delivery=lambda err, msg: errors.append(err))
    p.flush(30)
    assert len(errors) == 1 and errors[0] is not None and errors[0].code() == KafkaError.INVALID_RECORD, errors
    # Nothing was stored: the first keyed record gets offset 0.
    assert produce(p, topic, [(b"k", b"v")]) == {0: (b"k", b"v")}
    assert raw_records(broker, topic) == [(0, b"k", b"v")]


def offsets_log_bytes(broker):
    return sum(file_sizes(broker.data_dir / "__strom_groups" / "offsets-0").values())


def test_group_offsets_survive_offsets_log_compaction(broker_factory):
    broker = broker_factory(settings={**SETTINGS, "offsets.topic.num.partitions": "1",
                                      "offsets.topic.segment.bytes": str(SEGMENT), "log.flush.on.ack": "false"})
    topic = new_topic(broker, {}, prefix="cmp-groups", partitions=2)
    groups = [unique("g") for _ in range(3)]
    expected = {}
    with broker.conn() as c:
        for g in groups:
            # One commit of both partitions (one batch), then many of one partition only:
            # compaction removes one record of that batch and keeps the other, for one of the
            # groups the batch's last record.
            assert set(c.offset_commit(g, {(topic, 0): (7, "p0"), (topic, 1): (8, "p1")}).values()) == {0}
        moving = {groups[0]: 1, groups[1]: 0, groups[2]: 1}
        for i in range(1, 250):
            for g, p in moving.items():
                assert c.offset_commit(g, {(topic, p): (i, f"m{i}")}) == {(topic, p): 0}
        expected[groups[0]] = {(topic, 0): (7, "p0"), (topic, 1): (249, "m249")}
        expected[groups[1]] = {(topic, 0): (249, "m249"), (topic, 1): (8, "p1")}
        # A deleted group leaves tombstones behind.
        assert c.delete_groups([groups[2]]) == {groups[2]: 0}
    # 750 commits of more than 100 bytes each were appended (one batch each); compaction, which
    # runs meanwhile, leaves a few segments.
    deadline = time.monotonic() + 20
    while offsets_log_bytes(broker) > 4 * SEGMENT and time.monotonic() < deadline:
        time.sleep(0.1)
    assert offsets_log_bytes(broker) <= 4 * SEGMENT
    assert "offsets-0 segments=" in broker.log_text()

    def check():
        with broker.conn() as c:
            for g, want in expected.items():
                got = c.offset_fetch(g, [(topic, 0), (topic, 1)])["partitions"]
                assert {tp: (v["offset"], v["metadata"]) for tp, v in got.items()} == want, g
            got = c.offset_fetch(groups[2], [(topic, 0), (topic, 1)])["partitions"]
            assert all(v["offset"] == -1 for v in got.values()), got

    check()
    broker.restart()
    check()
    broker.crash_restart()
    check()
    with broker.conn() as c:
        assert c.offset_commit(groups[0], {(topic, 1): (300, "after")}) == {(topic, 1): 0}
    expected[groups[0]][(topic, 1)] = (300, "after")
    broker.restart()
    check()


def test_idempotent_producer_across_compaction_and_restart(broker_factory):
    broker = broker_factory(settings=SETTINGS)
    topic = new_topic(broker, COMPACT, prefix="cmp-idem")
    p = producer(broker, **{"enable.idempotence": True})
    acked = produce(p, topic, updates(1000, 10))
    write_sentinel(p, topic, acked)
    wait_records(broker, topic, latest(acked))
    broker.restart()
    # The same producer (same id, sequences continuing) keeps writing after the restart.
    more = produce(p, topic, updates(300, 10, tag="after"))
    assert sorted(more) == list(range(max(acked) + 1, max(acked) + 301))
    acked.update(more)
    write_sentinel(p, topic, acked)
    wait_records(broker, topic, latest(acked))
    assert consume_confluent(broker, topic, max(acked) + 1) == latest(acked)


@pytest.mark.parametrize("step", ["cleaned-written", "swap-committed", "old-removed", "renamed"])
def test_crash_during_compaction(broker_factory, step):
    broker = broker_factory(settings={**SETTINGS, "test.fault.cleaner.abort.at": step})
    # Written as a plain topic; compaction starts when the policy changes.
    topic = new_topic(broker, {**COMPACT, "cleanup.policy": "delete", "retention.ms": "-1"}, prefix="cmp-crash")
    p = producer(broker)
    acked = produce(p, topic, updates(1500, 20))
    write_sentinel(p, topic, acked)
    alter(broker, topic, {"cleanup.policy": "compact"})
    try:
        code = broker.proc.wait(20)
    except Exception:
        pytest.fail(f"the broker did not abort at {step} within 20 s")
    broker.exit_codes.append(code)
    assert code != 0
    assert f"aborting after cleaner step {step}" in broker.log_text()

    del broker.settings["test.fault.cleaner.abort.at"]
    broker.start()
    expected = latest(acked)
    got = raw_records(broker, topic)
    offsets = [o for o, _, _ in got]
    assert offsets == sorted(set(offsets)), "offsets repeat or go back"
    # Whatever is there was written at that offset, and the newest record of every key is there.
    assert all(acked[o] == (k, v) for o, k, v in got)
    assert set(expected) <= set(got)
    # The pass runs again and finishes.
    wait_records(broker, topic, expected)
    assert consume_confluent(broker, topic, max(acked) + 1) == expected
    leftovers = [f.name for f in broker.partition_dir(topic).iterdir() if f.name.endswith(".cleaned") or f.name == "clean-swap"]
    assert not leftovers
