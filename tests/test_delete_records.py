"""DeleteRecords (low watermark, segment deletion, consumers below the log start, restarts) and
DescribeLogDirs (sizes, filters, the data dir, volume bytes), through confluent-kafka,
kafka-python and the raw protocol."""

import time
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from kafka import KafkaAdminClient
from kafka import TopicPartition as KpTopicPartition

import kafka_raw as kr
from conftest import unique, assert_offset_reset_error

N = 100  # records produced by most tests
K = 37  # delete before this offset (inside a batch: the producer batches several records)


def admin(broker):
    return AdminClient({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4"})


def consumer(broker, **extra):
    conf = {"bootstrap.servers": broker.bootstrap, "group.id": unique("g"), "enable.auto.commit": False,
            "enable.partition.eof": False, "broker.address.family": "v4", "log_level": 3}
    conf.update(extra)
    return Consumer(conf)


def produce_values(broker, topic, values, partition=0):
    """Produce with librdkafka (batching several records per batch); returns the offsets."""
    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 20,
                  "enable.idempotence": False, "broker.address.family": "v4"})
    offsets, errors = [], []

    def cb(err, msg):
        (errors if err else offsets).append(err or msg.offset())

    for v in values:
        p.produce(topic, value=v, partition=partition, on_delivery=cb)
        p.poll(0)
    assert p.flush(30) == 0
    assert not errors, errors
    return sorted(offsets)


def new_topic(broker, partitions=1, configs=None, prefix="dr"):
    topic = unique(prefix)
    with broker.conn() as c:
        c.create_topic(topic, partitions, configs)
    return topic


def delete_records(broker, parts):
    """confluent-kafka AdminClient.delete_records: {(topic, partition): offset} -> low watermarks."""
    a = admin(broker)
    futures = a.delete_records([TopicPartition(t, p, o) for (t, p), o in parts.items()], request_timeout=30)
    return {(tp.topic, tp.partition): f.result(timeout=30).low_watermark for tp, f in futures.items()}


def poll_values(c, n, timeout=30):
    """Poll until n messages arrived; error events fail the test."""
    msgs = []
    deadline = time.monotonic() + timeout
    while len(msgs) < n and time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is None:
            continue
        assert not m.error(), m.error()
        msgs.append(m)
    assert len(msgs) == n, f"consumed {len(msgs)} of {n} within {timeout}s"
    return msgs


def assert_no_more(c, seconds=1.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        m = c.poll(0.1)
        assert m is None or m.error(), f"unexpected record at offset {m.offset()}"


def segment_bases(broker, topic, partition=0):
    return sorted(int(p.name[:-len(".log")]) for p in broker.partition_dir(topic, partition).glob("*.log"))


def log_bytes(broker, topic, partition=0):
    return sum(p.stat().st_size for p in broker.partition_dir(topic, partition).glob("*.log"))


def earliest(conn, topic, partition=0):
    res = conn.list_offsets(topic, partition, kr.EARLIEST)
    assert res["error_code"] == kr.NONE, res
    return res["offset"]


def test_advertised(broker):
    with broker.conn() as c:
        keys = c.api_versions(3)["api_keys"]
    assert keys[kr.API_DELETE_RECORDS] == (0, 2)
    assert keys[kr.API_DESCRIBE_LOG_DIRS] == (0, 4)


def test_confluent_delete_records(broker):
    topic = new_topic(broker)
    values = [f"v{i}".encode() for i in range(N)]
    assert produce_values(broker, topic, values) == list(range(N))

    assert delete_records(broker, {(topic, 0): K}) == {(topic, 0): K}

    # ListOffsets earliest is the low watermark: through librdkafka's watermarks, the admin
    # client's list_offsets and the raw protocol.
    c = consumer(broker)
    try:
        assert c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10) == (K, N)
    finally:
        c.close()
    a = admin(broker)
    res = a.list_offsets({TopicPartition(topic, 0): OffsetSpec.earliest()}, request_timeout=30)
    assert res[TopicPartition(topic, 0)].result(timeout=30).offset == K
    with broker.conn() as conn:
        assert earliest(conn, topic) == K
        assert conn.latest_offset(topic) == N

    # From the beginning: exactly K..N-1. The fetch at K returns the whole batch holding K; the
    # client skips the records before it.
    c = consumer(broker)
    try:
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        msgs = poll_values(c, N - K)
        assert [m.offset() for m in msgs] == list(range(K, N))
        assert [m.value() for m in msgs] == values[K:]
        assert_no_more(c)
    finally:
        c.close()

    # Deleting before an offset below the log start does not move it back.
    assert delete_records(broker, {(topic, 0): 3}) == {(topic, 0): K}
    # Above the high watermark: OFFSET_OUT_OF_RANGE, nothing changes.
    a = admin(broker)
    fut = a.delete_records([TopicPartition(topic, 0, N + 5)], request_timeout=30)[TopicPartition(topic, 0, N + 5)]
    with pytest.raises(KafkaException) as e:
        fut.result(timeout=30)
    assert e.value.args[0].code() == KafkaError.OFFSET_OUT_OF_RANGE
    with broker.conn() as conn:
        assert earliest(conn, topic) == K


def test_kafka_python_delete_records(broker):
    topic = new_topic(broker)
    produce_values(broker, topic, [b"x"] * 20)
    ka = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=30000)
    try:
        res = ka.delete_records({KpTopicPartition(topic, 0): 12})
    finally:
        ka.close()
    r = res[KpTopicPartition(topic, 0)]
    assert r["error_code"] == 0 and r["low_watermark"] == 12
    with broker.conn() as conn:
        assert earliest(conn, topic) == 12


@pytest.mark.parametrize("reset", ["earliest", "error"])
def test_consumer_below_log_start(broker, reset):
    topic = new_topic(broker)
    produce_values(broker, topic, [f"v{i}".encode() for i in range(N)])
    delete_records(broker, {(topic, 0): K})
    c = consumer(broker, **{"auto.offset.reset": reset})
    try:
        c.assign([TopicPartition(topic, 0, 5)])
        if reset == "earliest":
            # OFFSET_OUT_OF_RANGE, then a reset to the log start.
            assert poll_values(c, 1)[0].offset() == K
        else:
            assert_offset_reset_error(c)
    finally:
        c.close()
    # The raw fetch below the log start is OFFSET_OUT_OF_RANGE too; at K it returns data.
    with broker.conn() as conn:
        assert conn.fetch(topic, 0, K - 1)["error_code"] == kr.OFFSET_OUT_OF_RANGE
        assert conn.fetch(topic, 0, K)["error_code"] == kr.NONE
        assert [r.offset for r in conn.fetch_records(topic, 0, K)] == list(range(K, N))


@pytest.mark.parametrize("version", [0, 1, 2])
def test_raw_delete_records(broker, version):
    topic = new_topic(broker, partitions=2)
    with broker.conn() as conn:
        for i in range(4):
            assert conn.produce(topic, 0, kr.simple_batch([b"a%d" % i] * 5))["error_code"] == kr.NONE
        assert conn.produce(topic, 1, kr.simple_batch([b"b"] * 3))["error_code"] == kr.NONE
        missing = unique("missing")
        res = conn.delete_records({(topic, 0): 7, (topic, 1): -1, (topic, 2): 0, (missing, 0): 0}, version=version)
        assert res[(topic, 0)] == {"partition": 0, "low_watermark": 7, "error_code": kr.NONE}
        # -1: the high watermark.
        assert res[(topic, 1)] == {"partition": 1, "low_watermark": 3, "error_code": kr.NONE}
        assert res[(topic, 2)]["error_code"] == kr.UNKNOWN_TOPIC_OR_PARTITION
        assert res[(missing, 0)]["error_code"] == kr.UNKNOWN_TOPIC_OR_PARTITION
        assert res[(missing, 0)]["low_watermark"] == -1
        # Not created by the request.
        assert conn.metadata([missing], version=4, allow_auto_topic_creation=False)["topics"][missing]["error_code"] \
            == kr.UNKNOWN_TOPIC_OR_PARTITION

        # Above the high watermark, or below -1: OFFSET_OUT_OF_RANGE and nothing changes.
        for bad in (21, 1 << 40, -2, -(1 << 62)):
            r = conn.delete_records({(topic, 0): bad}, version=version)[(topic, 0)]
            assert r["error_code"] == kr.OFFSET_OUT_OF_RANGE and r["low_watermark"] == -1, (bad, r)
        assert earliest(conn, topic, 0) == 7
        # Exactly the high watermark is allowed; so is deleting again (no change).
        assert conn.delete_records({(topic, 0): 20}, version=version)[(topic, 0)]["low_watermark"] == 20
        assert conn.delete_records({(topic, 0): -1}, version=version)[(topic, 0)]["low_watermark"] == 20
        assert earliest(conn, topic, 0) == 20 and conn.latest_offset(topic, 0) == 20
        assert earliest(conn, topic, 1) == 3
        # The partition is empty but still writable and readable from the new start.
        assert conn.produce(topic, 0, kr.simple_batch([b"after"]))["base_offset"] == 20
        assert [r.value for r in conn.fetch_records(topic, 0, 20)] == [b"after"]
        assert conn.fetch(topic, 0, 19)["error_code"] == kr.OFFSET_OUT_OF_RANGE


@pytest.mark.parametrize("how", ["clean", "sigkill"])
def test_low_watermark_survives_restart(broker, how):
    topic = new_topic(broker)
    values = [f"v{i}".encode() for i in range(N)]
    produce_values(broker, topic, values)
    assert delete_records(broker, {(topic, 0): K}) == {(topic, 0): K}
    if how == "clean":
        broker.restart()
    else:
        broker.crash_restart()
    with broker.conn() as conn:
        assert earliest(conn, topic) == K
        assert conn.latest_offset(topic) == N
        assert conn.fetch(topic, 0, K - 1)["error_code"] == kr.OFFSET_OUT_OF_RANGE
        assert [r.value for r in conn.fetch_records(topic, 0, K)] == values[K:]
    c = consumer(broker)
    try:
        assert c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10) == (K, N)
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        assert [m.offset() for m in poll_values(c, N - K)] == list(range(K, N))
    finally:
        c.close()
    # And once more after a further delete and another restart of the other kind.
    assert delete_records(broker, {(topic, 0): K + 10}) == {(topic, 0): K + 10}
    if how == "clean":
        broker.crash_restart()
    else:
        broker.restart()
    with broker.conn() as conn:
        assert earliest(conn, topic) == K + 10


def test_whole_segments_deleted(broker):
    """With 16 KiB segments, DeleteRecords removes the segment files wholly below the new log
    start (with their indexes), never the one holding it and never the active one."""
    topic = new_topic(broker, configs={"segment.bytes": "16384"})
    per_batch, batches = 4, 60
    with broker.conn() as conn:
        for i in range(batches):
            batch = kr.simple_batch([b"%05d-" % (i * per_batch + j) + b"x" * 1000 for j in range(per_batch)])
            assert conn.produce(topic, 0, batch)["base_offset"] == i * per_batch
        hw = per_batch * batches
        before = segment_bases(broker, topic)
        assert len(before) >= 8, before
        size_before = conn.describe_log_dirs({topic: [0]}, version=1)["results"][0]["topics"][topic][0]["size"]
        assert size_before == log_bytes(broker, topic)

        k = 25 * per_batch + 2  # inside a batch, inside some segment
        holder = max(b for b in before if b <= k)
        assert holder < k
        assert conn.delete_records({(topic, 0): k})[(topic, 0)]["low_watermark"] == k
        after = segment_bases(broker, topic)
        assert after == [b for b in before if b >= holder]
        assert len(after) < len(before)
        files = {p.name for p in broker.partition_dir(topic).iterdir()}
        for b in before:
            if b < holder:
                for ext in (".log", ".index", ".timeindex"):
                    assert "%020d%s" % (b, ext) not in files, (b, sorted(files))
        size_after = conn.describe_log_dirs({topic: [0]}, version=1)["results"][0]["topics"][topic][0]["size"]
        assert size_after == log_bytes(broker, topic) < size_before

        # The fetch at k returns the whole batch that holds it.
        res = conn.fetch(topic, 0, k)
        assert res["error_code"] == kr.NONE
        first = kr.parse_batches(res["records"])[0]
        assert first.base_offset == k - 2
        recs = conn.fetch_records(topic, 0, k)
        assert [r.offset for r in recs] == list(range(k, hw))
        assert recs[0].value.startswith(b"%05d-" % k)

        # Up to the high watermark: only the active segment is left, and it keeps working.
        assert conn.delete_records({(topic, 0): -1})[(topic, 0)]["low_watermark"] == hw
        assert segment_bases(broker, topic) == [before[-1]]
        assert earliest(conn, topic) == hw
        assert conn.produce(topic, 0, kr.simple_batch([b"tail"]))["base_offset"] == hw
        assert [r.value for r in conn.fetch_records(topic, 0, hw)] == [b"tail"]
    broker.restart()
    with broker.conn() as conn:
        assert earliest(conn, topic) == hw
        assert segment_bases(broker, topic) == [before[-1]]
        assert [r.value for r in conn.fetch_records(topic, 0, hw)] == [b"tail"]


def test_kafka_python_describe_log_dirs(broker):
    t1, t2 = new_topic(broker, 2, prefix="ld"), new_topic(broker, prefix="ld")
    produce_values(broker, t1, [b"y" * 100] * 10, partition=1)
    ka = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=30000)
    try:
        everything = ka.describe_log_dirs()
        only = ka.describe_log_dirs({t1: [1]})
    finally:
        ka.close()

    def sizes(res):
        assert len(res) == 1  # one broker
        dirs = res[0]["log_dirs"]
        assert len(dirs) == 1  # one log dir
        d = dirs[0]
        assert d["error_code"] == 0
        assert d["log_dir"] == str(broker.data_dir)
        return {(t["name"], p["partition_index"]): p["partition_size"] for t in d["topics"] for p in t["partitions"]}

    s = sizes(everything)
    assert {(t1, 0), (t1, 1), (t2, 0)} <= set(s)
    assert s[(t1, 1)] == log_bytes(broker, t1, 1) > 1000
    assert s[(t1, 0)] == 0 and s[(t2, 0)] == 0
    assert sizes(only) == {(t1, 1): s[(t1, 1)]}


@pytest.mark.parametrize("version", [0, 1, 2, 3, 4])
def test_raw_describe_log_dirs(broker, version):
    t1, t2 = new_topic(broker, 2, prefix="ld"), new_topic(broker, prefix="ld")
    with broker.conn() as conn:
        def describe(topics):
            res = conn.describe_log_dirs(topics, version=version)
            assert res["error_code"] == 0 and res["throttle_time_ms"] == 0
            assert len(res["results"]) == 1
            d = res["results"][0]
            assert d["error_code"] == 0
            assert d["log_dir"] == str(broker.data_dir) and Path(d["log_dir"]).is_absolute()
            if version >= 4:
                assert d["total_bytes"] > 0 and 0 < d["usable_bytes"] <= d["total_bytes"]
            for parts in d["topics"].values():
                for p in parts.values():
                    assert p["offset_lag"] == 0 and p["is_future_key"] is False
            return {(t, i): p["size"] for t, parts in d["topics"].items() for i, p in parts.items()}

        empty = describe({t1: [0, 1]})
        assert empty == {(t1, 0): 0, (t1, 1): 0}
        conn.produce(t1, 0, kr.simple_batch([b"z" * 500] * 3))
        one = describe({t1: [0, 1]})
        assert one[(t1, 0)] == log_bytes(broker, t1, 0) > 1500 and one[(t1, 1)] == 0
        conn.produce(t1, 0, kr.simple_batch([b"z" * 500] * 3))
        two = describe({t1: [0]})
        assert set(two) == {(t1, 0)}
        assert two[(t1, 0)] > one[(t1, 0)] and two[(t1, 0)] == log_bytes(broker, t1, 0)

        # Only the requested topics and partitions; unknown ones are left out.
        missing = unique("missing")
        assert describe({t2: [0], missing: [0], t1: [7, -1]}) == {(t2, 0): 0}
        assert describe({}) == {}
        # Null: every user topic, with every partition.
        everything = describe(None)
        assert {(t1, 0), (t1, 1), (t2, 0)} <= set(everything)
        assert everything[(t1, 0)] == two[(t1, 0)]
        assert not any(t.startswith("__") for t, _ in everything)


def test_two_shards(broker_factory):
    """Partitions owned by both shards: DeleteRecords and DescribeLogDirs gather from each."""
    broker = broker_factory(cores=2)
    topic = new_topic(broker, partitions=4)
    with broker.conn() as conn:
        for p in range(4):
            for i in range(p + 2):
                assert conn.produce(topic, p, kr.simple_batch([b"p%d-%d" % (p, i)] * 2))["error_code"] == kr.NONE
        sizes = {p: conn.describe_log_dirs(None, version=4)["results"][0]["topics"][topic][p]["size"] for p in range(4)}
        assert all(sizes[p] == log_bytes(broker, topic, p) > 0 for p in range(4))
        want = {(topic, p): p + 1 for p in range(4)}
        res = conn.delete_records(want, version=2)
        assert {k: (v["error_code"], v["low_watermark"]) for k, v in res.items()} == \
            {k: (kr.NONE, o) for k, o in want.items()}
        for p in range(4):
            assert earliest(conn, topic, p) == p + 1
    assert delete_records(broker, {(topic, p): -1 for p in range(4)}) == {(topic, p): 2 * (p + 2) for p in range(4)}


@pytest.mark.parametrize("version", [1, 2])
def test_malformed_delete_records(broker, version):
    topic = new_topic(broker)
    w = kr.VWriter(version >= 2)
    w.arr([topic], lambda w, t: (w.str_(t), w.arr([0], lambda w, p: (w.int32(p), w.int64(0), w.tags())), w.tags()))
    body = w.int32(1000).tags().done()
    header = 2 if version >= 2 else 1
    for cut in (body[:len(body) - 6], body[:3], b"", kr.Writer().int32(0x7FFFFFFF).done()):
        with broker.conn() as conn:
            conn.send(kr.API_DELETE_RECORDS, version, cut, header_version=header)
            assert conn.wait_closed(), f"connection not closed for a body of {len(cut)} bytes"
        broker.assert_alive()
    with broker.conn() as conn:
        conn.send(kr.API_DESCRIBE_LOG_DIRS, 4, kr.Writer().uvarint(5).done(), header_version=2)
        assert conn.wait_closed()
    broker.assert_alive()
    with broker.conn() as conn:
        assert conn.delete_records({(topic, 0): 0}, version=version)[(topic, 0)]["error_code"] == kr.NONE
