"""Retention (`cleanup.policy=delete`): whole closed segments deleted by `retention.ms` and
`retention.bytes`, the log start offset moving, consumers below it resetting per
`auto.offset.reset`, the log start across restarts, compacted topics left alone, and retention
settings changed at runtime."""

import time

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource as KpConfigResource
from kafka.admin import ConfigResourceType

import kafka_raw as kr
from conftest import unique, assert_offset_reset_error, file_sizes

CHECK = {"log.retention.check.interval.ms": "200"}
SEGMENT = 4096
HOUR_MS = 3_600_000


def now_ms():
    return int(time.time() * 1000)


def new_topic(broker, configs, prefix="ret"):
    topic = unique(prefix)
    with broker.conn() as c:
        c.create_topic(topic, 1, configs)
    return topic


def produce(broker, topic, values, keys=None, timestamp=None):
    """Produce with librdkafka in small batches (several per segment); returns the offsets."""
    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 2, "batch.size": 1024,
                  "enable.idempotence": False, "broker.address.family": "v4"})
    offsets, errors = [], []

    def cb(err, msg):
        (errors if err else offsets).append(err or msg.offset())

    for i, v in enumerate(values):
        kw = {"timestamp": timestamp} if timestamp is not None else {}
        p.produce(topic, value=v, key=keys[i] if keys else None, partition=0, on_delivery=cb, **kw)
        p.poll(0)
    assert p.flush(30) == 0
    assert not errors, errors
    return sorted(offsets)


def segment_files(broker, topic):
    """{base offset: size} of the segment data files."""
    return file_sizes(broker.partition_dir(topic))


def index_bases(broker, topic):
    return {int(p.name.split(".")[0]) for p in broker.partition_dir(topic).iterdir()
            if p.name.endswith((".index", ".timeindex"))}


def earliest(broker, topic):
    with broker.conn() as c:
        res = c.list_offsets(topic, 0, kr.EARLIEST)
    assert res["error_code"] == kr.NONE, res
    return res["offset"]


def wait_earliest(broker, topic, cond, timeout=15.0, what="the log start offset to move"):
    deadline = time.monotonic() + timeout
    while True:
        e = earliest(broker, topic)
        if cond(e):
            return e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (earliest {e}, segments {segment_files(broker, topic)})")
        time.sleep(0.05)


def wait_segments_from(broker, topic, start, timeout=15.0):
    """The segment files once none below `start` is left. The log start offset moves first (it
    is persisted, then visible), the files of the segments below it go right after."""
    deadline = time.monotonic() + timeout
    while True:
        files = segment_files(broker, topic)
        if all(b >= start for b in files):
            return files
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for the segments below {start} to go: {files}")
        time.sleep(0.05)


def values_from(broker, topic, start):
    with broker.conn() as c:
        return [(r.offset, r.value) for r in c.fetch_records(topic, 0, start)]


def alter(broker, topic, configs):
    a = AdminClient({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4"})
    res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in configs.items()])
    for f in a.incremental_alter_configs([res]).values():
        f.result(timeout=30)


def pad(s, n=200):
    return s.encode().ljust(n, b".")


def test_retention_by_time(broker_factory):
    broker = broker_factory(settings=CHECK)
    # segment.ms makes the first new record start a segment of its own (see below).
    topic = new_topic(broker, {"segment.bytes": str(SEGMENT), "segment.ms": "1000", "retention.ms": "-1"})
    old = [pad(f"old-{i}") for i in range(100)]
    assert produce(broker, topic, old, timestamp=now_ms() - HOUR_MS) == list(range(100))
    time.sleep(1.2)  # older than segment.ms: the next append rolls
    new = [pad(f"new-{i}") for i in range(40)]
    assert produce(broker, topic, new) == list(range(100, 140))
    before = segment_files(broker, topic)
    assert 100 in before and len([b for b in before if b < 100]) >= 3, before
    # Unlimited: a few checks later nothing is gone.
    time.sleep(0.6)
    assert earliest(broker, topic) == 0 and segment_files(broker, topic) == before

    # Changed at runtime: the old segments are past one minute, the new ones are not.
    alter(broker, topic, {"retention.ms": "60000"})
    assert wait_earliest(broker, topic, lambda e: e > 0) == 100
    after = wait_segments_from(broker, topic, 100)
    # Whole segments went, the others are untouched, the active one is still there.
    assert after == {b: s for b, s in before.items() if b >= 100}
    assert max(before) in after
    assert index_bases(broker, topic) == set(after)
    assert values_from(broker, topic, 100) == list(zip(range(100, 140), new))
    with broker.conn() as c:
        assert c.fetch(topic, 0, 99)["error_code"] == kr.OFFSET_OUT_OF_RANGE
        assert c.latest_offset(topic) == 140


def size_topic(broker, n=300, retention_bytes=2 * SEGMENT):
    """A topic whose log start was moved by retention.bytes; returns (topic, values, log start)."""
    topic = new_topic(broker, {"segment.bytes": str(SEGMENT), "retention.bytes": str(retention_bytes)})
    values = [pad(f"v-{i}") for i in range(n)]
    assert produce(broker, topic, values) == list(range(n))
    start = wait_earliest(broker, topic, lambda e: e > 0)
    # Retention may need another pass or two to settle.
    deadline = time.monotonic() + 10
    while sum(segment_files(broker, topic).values()) > retention_bytes + SEGMENT and time.monotonic() < deadline:
        time.sleep(0.05)
    start = earliest(broker, topic)
    return topic, values, start


def test_retention_by_size(broker_factory):
    broker = broker_factory(settings=CHECK)
    retention_bytes = 2 * SEGMENT
    topic, values, start = size_topic(broker, retention_bytes=retention_bytes)
    files = segment_files(broker, topic)
    total = sum(files.values())
    assert retention_bytes <= total <= retention_bytes + SEGMENT, files
    assert min(files) == start
    assert values_from(broker, topic, start) == list(zip(range(start, len(values)), values[start:]))
    # Later records are appended and read normally.
    assert produce(broker, topic, [b"later"]) == [len(values)]
    assert values_from(broker, topic, len(values))[-1] == (len(values), b"later")


def consumer(broker, **extra):
    conf = {"bootstrap.servers": broker.bootstrap, "group.id": unique("g"), "enable.auto.commit": False,
            "enable.partition.eof": False, "broker.address.family": "v4", "log_level": 3}
    conf.update(extra)
    return Consumer(conf)


@pytest.mark.parametrize("reset", ["earliest", "latest", "error"])
def test_consumer_below_log_start(broker_factory, reset):
    broker = broker_factory(settings=CHECK)
    topic, values, start = size_topic(broker)
    hw = len(values)
    c = consumer(broker, **{"auto.offset.reset": reset})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        if reset == "earliest":
            deadline = time.monotonic() + 30
            m = None
            while m is None and time.monotonic() < deadline:
                m = c.poll(0.2)
            assert m is not None and not m.error(), m and m.error()
            assert m.offset() == start and m.value() == values[start]
        elif reset == "latest":
            # Keep producing until the consumer (reset to the end at some point) sees records.
            seen = []
            deadline = time.monotonic() + 30
            i = 0
            while not seen and time.monotonic() < deadline:
                produce(broker, topic, [f"fresh-{i}".encode()])
                i += 1
                end = time.monotonic() + 0.3
                while time.monotonic() < end:
                    m = c.poll(0.1)
                    if m is not None:
                        assert not m.error(), m.error()
                        seen.append((m.offset(), m.value()))
            assert seen, "the consumer saw nothing after resetting to the end"
            assert all(o >= hw and v.startswith(b"fresh-") for o, v in seen), seen
        else:
            assert_offset_reset_error(c)
    finally:
        c.close()


def test_log_start_survives_restart(broker_factory):
    broker = broker_factory(settings=CHECK)
    topic, values, start = size_topic(broker)
    files = segment_files(broker, topic)
    # Without retention running after the restart, the log start comes from disk.
    broker.settings["log.retention.check.interval.ms"] = "3600000"
    broker.restart()
    assert earliest(broker, topic) == start
    assert segment_files(broker, topic) == files
    broker.crash_restart()
    assert earliest(broker, topic) == start
    assert values_from(broker, topic, start) == list(zip(range(start, len(values)), values[start:]))
    with broker.conn() as c:
        assert c.fetch(topic, 0, start - 1)["error_code"] == kr.OFFSET_OUT_OF_RANGE


def test_compacted_topic_is_not_deleted_by_retention(broker_factory):
    # The cleaner is off: only retention could remove anything here.
    broker = broker_factory(settings={**CHECK, "log.cleaner.enable": "false"})
    configs = {"segment.bytes": str(SEGMENT), "retention.ms": "1000", "retention.bytes": str(SEGMENT)}
    compact = new_topic(broker, {**configs, "cleanup.policy": "compact"}, prefix="ret-c")
    both = new_topic(broker, {**configs, "cleanup.policy": "compact,delete"}, prefix="ret-cd")
    values = [pad(f"v-{i}") for i in range(100)]
    keys = [f"k-{i}".encode() for i in range(100)]
    old = now_ms() - HOUR_MS
    for t in (compact, both):
        assert produce(broker, t, values, keys=keys, timestamp=old) == list(range(100))
    compact_files = segment_files(broker, compact)
    assert len(compact_files) > 3
    wait_earliest(broker, both, lambda e: e > 0)
    time.sleep(0.6)  # three more retention checks
    assert earliest(broker, compact) == 0
    assert segment_files(broker, compact) == compact_files
    assert [v for _, v in values_from(broker, compact, 0)] == values


def test_retention_bytes_changed_at_runtime(broker_factory):
    broker = broker_factory(settings=CHECK)
    topic = new_topic(broker, {"segment.bytes": str(SEGMENT)})
    values = [pad(f"v-{i}") for i in range(200)]
    produce(broker, topic, values)
    time.sleep(0.6)
    files = segment_files(broker, topic)
    assert earliest(broker, topic) == 0 and len(files) > 4
    # kafka-python's (non-incremental) AlterConfigs.
    ka = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=30000)
    try:
        ka.alter_configs([KpConfigResource(ConfigResourceType.TOPIC, topic,
                                           configs={"segment.bytes": str(SEGMENT), "retention.bytes": str(SEGMENT)})])
    finally:
        ka.close()
    start = wait_earliest(broker, topic, lambda e: e > 0)
    deadline = time.monotonic() + 10
    while sum(segment_files(broker, topic).values()) > 2 * SEGMENT and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sum(segment_files(broker, topic).values()) <= 2 * SEGMENT
    start = earliest(broker, topic)
    assert values_from(broker, topic, start) == list(zip(range(start, len(values)), values[start:]))
    # Back to unlimited: nothing more goes.
    alter(broker, topic, {"retention.bytes": "-1"})
    produce(broker, topic, values)
    time.sleep(0.6)
    assert earliest(broker, topic) == start
