"""OffsetForLeaderEpoch (key 23) against a single node: where the current leader epoch ends
(the log end, also on an empty log), fencing by the current leader epoch the client names
(KIP-320), unknown partitions; and librdkafka, which validates consumer positions with it once
the broker advertises it, still consumes everything from committed offsets."""

import kafka_raw
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import unique

API = 23


def ask(conn, topic, partitions, version=3):
    """[(partition, current_leader_epoch, leader_epoch)] -> {partition: (error, epoch, end)}."""
    w = kafka_raw.Writer().int32(-1)  # replica_id (v3+): a consumer
    w.array([topic], lambda w, t: (
        w.string(t),
        w.array(partitions, lambda w, p: (w.int32(p[0]), w.int32(p[1]), w.int32(p[2])))))
    r = conn.request(API, version, w.done())
    r.int32()  # throttle
    out = {}
    for _ in range(r.int32()):
        r.string()
        for _ in range(r.int32()):
            error, partition, epoch, end = r.int16(), r.int32(), r.int32(), r.int64()
            out[partition] = (error, epoch, end)
    return out


def test_epoch_ends_and_fencing(broker):
    topic = unique("epochs")
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(timeout=20)
    with broker.conn() as c:
        # An empty log: the current epoch (0) ends at the log end, 0.
        assert ask(c, topic, [(0, 0, 0)]) == {0: (0, 0, 0)}
        res = c.produce(topic, 0, kafka_raw.simple_batch([b"a", b"b", b"c"]), acks=-1)
        assert res["error_code"] == 0, res
        got = ask(c, topic, [(0, 0, 0), (1, -1, 0), (7, -1, 0)])
        assert got[0] == (0, 0, 3), got
        assert got[1] == (0, 0, 0), got
        assert ask(c, topic, [(0, 1, 0)])[0][0] == 75, "UNKNOWN_LEADER_EPOCH for a newer epoch"
        assert got[7][0] == 3, "UNKNOWN_TOPIC_OR_PARTITION"
        assert ask(c, unique("nope"), [(0, -1, 0)])[0][0] == 3


def test_librdkafka_consumes_from_committed_offsets_with_validation(broker):
    topic = unique("validated")
    group = unique("g")
    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    for i in range(20):
        p.produce(topic, b"v%d" % i)
    assert p.flush(30) == 0

    def read(n):
        c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                      "auto.offset.reset": "earliest", "enable.auto.commit": False})
        c.subscribe([topic])
        got = []
        for _ in range(60):
            m = c.poll(1.0)
            if m is not None and m.error() is None:
                got.append(m.value())
                if len(got) == n:
                    break
        c.commit(asynchronous=False)
        c.close()
        return got

    assert read(10) == [b"v%d" % i for i in range(10)]
    # The second consumer starts from the committed offset (with its leader epoch), which
    # librdkafka validates with OffsetForLeaderEpoch before fetching.
    assert read(10) == [b"v%d" % i for i in range(10, 20)]


def fetch_error(conn, topic, partition, current_leader_epoch):
    """Fetch v9 of one partition naming `current_leader_epoch`; its error code."""
    w = kafka_raw.Writer().int32(-1).int32(0).int32(1).int32(1 << 20).int8(0).int32(0).int32(-1)
    w.array([topic], lambda w, t: (w.string(t), w.array([partition], lambda w, p: (
        w.int32(p).int32(current_leader_epoch).int64(0).int64(-1).int32(1 << 20)))))
    w.array([], lambda w, t: None)  # forgotten topics
    r = conn.request(1, 9, w.done())
    r.int32()  # throttle
    r.int16()  # top-level error
    r.int32()  # session id
    assert r.int32() == 1
    r.string()
    assert r.int32() == 1
    assert r.int32() == partition
    return r.int16()


def list_offsets_error(conn, topic, partition, current_leader_epoch):
    """ListOffsets v4 (latest) of one partition naming `current_leader_epoch`; its error code."""
    w = kafka_raw.Writer().int32(-1).int8(0)
    w.array([topic], lambda w, t: (w.string(t), w.array([partition], lambda w, p: (
        w.int32(p).int32(current_leader_epoch).int64(-1)))))
    r = conn.request(2, 4, w.done())
    r.int32()
    assert r.int32() == 1
    r.string()
    assert r.int32() == 1
    assert r.int32() == partition
    return r.int16()


def test_fetch_and_list_offsets_fence_by_the_current_leader_epoch(broker):
    """KIP-320: naming the current epoch (0) or none (-1) reads; a newer one is refused with
    UNKNOWN_LEADER_EPOCH (75): this broker does not know that epoch yet."""
    topic = unique("fenced")
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=20)
    with broker.conn() as c:
        assert c.produce(topic, 0, kafka_raw.simple_batch([b"x"]), acks=-1)["error_code"] == 0
        assert [fetch_error(c, topic, 0, e) for e in (-1, 0, 1)] == [0, 0, 75]
        assert [list_offsets_error(c, topic, 0, e) for e in (-1, 0, 3)] == [0, 0, 75]
