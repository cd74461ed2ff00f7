"""Malformed, hostile and invalid requests, sent with the raw client.

The broker must close connections that send garbage or oversized frames without allocating for
them, answer invalid produce/metadata/create requests with Kafka's error codes, and keep
serving every other client throughout."""

import os
import socket
import struct
import time

import pytest

import kafka_raw as kr
from conftest import unique


def served(broker, topic=None):
    """A fresh connection gets ApiVersions and Metadata answered (and the process is alive)."""
    broker.assert_alive()
    with broker.conn(timeout=5) as c:
        av = c.api_versions(3)
        assert av["error_code"] == 0 and kr.API_PRODUCE in av["api_keys"]
        md = c.metadata([topic] if topic else [], version=1)
        assert len(md["brokers"]) == 1
        if topic:
            assert md["topics"][topic]["error_code"] == 0


def assert_closed(c: kr.KafkaConn, what: str, timeout: float = 5.0):
    assert c.wait_closed(timeout), f"broker kept the connection open after {what}"


# ---------------------------------------------------------------------------------------------
# Framing and garbage

GARBAGE = {
    # Text protocol on the Kafka port: the 'length prefix' reads as ~1.2 GB.
    "http": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    # Negative length prefix.
    "negative-length": struct.pack(">i", -1) + b"\x00" * 16,
    # Zero-length frame: no header at all.
    "zero-length": struct.pack(">i", 0),
    # A frame too short to hold a request header.
    "short-header": struct.pack(">i", 3) + b"\x00\x12\x00",
    # A Produce v3 header followed by a 3-byte body (truncated request body).
    "truncated-body": (lambda f: struct.pack(">i", len(f)) + f)(
        struct.pack(">hhi", 0, 3, 7) + struct.pack(">h", 4) + b"test" + b"\xff\xff\x00"),
    # Client id length pointing past the end of the frame.
    "bad-client-id": (lambda f: struct.pack(">i", len(f)) + f)(
        struct.pack(">hhi", 18, 0, 7) + struct.pack(">h", 3000) + b"abc"),
    # Random bytes in a well-sized frame (fixed seed).
    "random": (lambda f: struct.pack(">i", len(f)) + f)(bytes((i * 197 + 11) % 256 for i in range(64))),
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_garbage_closes_connection_and_broker_keeps_serving(broker, kind):
    bystander = broker.conn()
    assert bystander.api_versions(0)["error_code"] == 0
    with broker.conn() as c:
        c.send_raw(GARBAGE[kind])
        assert_closed(c, f"garbage ({kind})")
    # The connection opened before keeps working, and new ones are served.
    assert bystander.api_versions(0)["error_code"] == 0
    bystander.close()
    served(broker)


def _request(api: int, version: int, body: bytes, header_version: int = 1) -> bytes:
    header = struct.pack(">hhi", api, version, 99) + struct.pack(">h", 4) + b"test"
    if header_version >= 2:
        header += b"\x00"  # no tagged fields
    frame = header + body
    return struct.pack(">i", len(frame)) + frame


# Tiny requests whose array counts claim billions of elements. The decoder pre-sizes arrays from
# the count; the broker must answer with a closed connection, not run out of memory.
HUGE_COUNTS = {
    "metadata-v1-topics": _request(kr.API_METADATA, 1, struct.pack(">i", 0x7FFFFFFF) + struct.pack(">h", 1) + b"t"),
    "produce-v3-topics": _request(kr.API_PRODUCE, 3, struct.pack(">hhii", -1, 1, 1000, 0x7FFFFFFF) + b"\x00"),
    "fetch-v4-topics": _request(kr.API_FETCH, 4, struct.pack(">iiiibi", -1, 100, 1, 1024, 0, 0x7FFFFFFF) + b"\x00\x01"),
    "list-offsets-v1-partitions": _request(kr.API_LIST_OFFSETS, 1, struct.pack(">ii", -1, 1) + struct.pack(">h", 1) + b"t"
                                           + struct.pack(">i", 0x7FFFFFFF) + b"\x00"),
    "create-topics-v2-topics": _request(kr.API_CREATE_TOPICS, 2, struct.pack(">i", 0x7FFFFFFF) + b"\x00\x01"),
}


@pytest.mark.parametrize("kind", sorted(HUGE_COUNTS))
def test_huge_array_count_is_refused_without_allocating(broker, kind):
    with broker.conn() as c:
        c.send_raw(HUGE_COUNTS[kind])
        assert_closed(c, f"a request claiming 2^31 elements ({kind})")
    served(broker)
    rss_kib = broker.proc_status().get("VmRSS", 0)
    assert rss_kib < 512 * 1024, f"broker RSS grew to {rss_kib} KiB"


def test_unknown_api_key_is_refused_and_broker_keeps_serving(broker):
    with broker.conn() as c:
        corr = c.send(9999, 0, b"")
        # Either an error response for that correlation id or a closed connection; never a hang
        # and never a crash.
        try:
            got, _ = c.recv()
            assert got == corr
        except (kr.ConnectionClosed, OSError):
            pass
    served(broker)


def test_unsupported_produce_version_is_refused(broker):
    topic = unique("oldproduce")
    with broker.conn() as c:
        c.create_topic(topic)
        c.send(kr.API_PRODUCE, 99, b"\xff\xff\xff\xff\x00\x00\x03\xe8\x00\x00\x00\x00")
        try:
            c.recv()
        except (kr.ConnectionClosed, OSError):
            pass
    with broker.conn() as c:
        assert c.latest_offset(topic) == 0
    served(broker, topic)


def rss_kib(broker):
    st = broker.proc_status()
    return st["VmRSS"], st["VmHWM"], st.get("VmPeak", 0)


@pytest.mark.parametrize("prefix", [0x7FFFFFFF, 104857600 + 1])
def test_huge_length_prefix_closed_without_allocating(broker, prefix):
    bystander = broker.conn()
    assert bystander.api_versions(0)["error_code"] == 0
    rss0, hwm0, peak0 = rss_kib(broker)
    with broker.conn() as c:
        c.send_raw(struct.pack(">i", prefix) + b"\x00\x01\x00\x00\x00\x00\x00\x01" + b"x" * 4096)
        t0 = time.monotonic()
        assert_closed(c, f"length prefix {prefix}", timeout=5.0)
        assert time.monotonic() - t0 < 3.0, "closing an oversized frame took too long"
    rss1, hwm1, peak1 = rss_kib(broker)
    assert hwm1 - hwm0 < 64 * 1024, f"resident peak grew by {(hwm1 - hwm0) // 1024} MiB"
    assert peak1 - peak0 < 1024 * 1024, f"virtual peak grew by {(peak1 - peak0) // 1024} MiB"
    assert bystander.api_versions(0)["error_code"] == 0
    bystander.close()
    served(broker)


def test_socket_request_max_bytes_setting(broker_factory):
    limit = 2 * 1024 * 1024
    broker = broker_factory(settings={"socket.request.max.bytes": str(limit)})
    topic = unique("reqmax")
    with broker.conn() as c:
        c.create_topic(topic)
        # A request just under the limit is served...
        big = kr.simple_batch([os.urandom(900 * 1024)])
        res = c.produce(topic, 0, big)
        assert res["error_code"] == 0 and res["base_offset"] == 0
    with broker.conn() as c:
        # ...one whose length prefix is over it is closed before its body is read.
        c.send_raw(struct.pack(">i", limit + 1) + b"\x00" * 1024)
        assert_closed(c, "a frame over socket.request.max.bytes")
    with broker.conn() as c:
        assert c.latest_offset(topic) == 1
    served(broker, topic)


def test_truncated_frame_then_close(broker):
    topic = unique("trunc")
    with broker.conn() as c:
        c.create_topic(topic)
    for cut in (2, 10, 60):
        batch = kr.simple_batch([b"never-complete"])
        frame = (kr.Writer().int16(0).int16(3).int32(5).string("t").string(None).int16(-1).int32(1000)
                 .array([topic], lambda w, t: (w.string(t), w.array([0], lambda w, p: (w.int32(p), w.bytes_(batch)))))
                 .done())
        full = struct.pack(">i", len(frame)) + frame
        s = socket.create_connection((broker.host, broker.port), timeout=5)
        s.sendall(full[:len(full) - cut])
        time.sleep(0.1)
        s.close()
    # Half a frame and then silence: the broker waits, other clients are unaffected.
    s = socket.create_connection((broker.host, broker.port), timeout=5)
    s.sendall(struct.pack(">i", 100) + b"\x00" * 50)
    served(broker, topic)
    s.close()
    with broker.conn() as c:
        assert c.latest_offset(topic) == 0, "a truncated produce request was appended"
    served(broker, topic)


# ---------------------------------------------------------------------------------------------
# Produce validation


def test_bad_crc_is_corrupt_message_and_not_appended(conn):
    topic = unique("crc")
    conn.create_topic(topic)
    good = conn.produce(topic, 0, kr.simple_batch([b"good-0", b"good-1"]))
    assert good["error_code"] == 0 and good["base_offset"] == 0
    assert conn.latest_offset(topic) == 2

    batch = bytearray(kr.simple_batch([b"bad-crc"]))
    batch[17] ^= 0xFF  # first byte of the CRC field
    res = conn.produce(topic, 0, bytes(batch))
    assert res["error_code"] == kr.CORRUPT_MESSAGE, res

    batch = bytearray(kr.simple_batch([b"flipped-payload-byte"]))
    batch[-3] ^= 0x01  # inside the record value: the CRC no longer matches
    res = conn.produce(topic, 0, bytes(batch))
    assert res["error_code"] == kr.CORRUPT_MESSAGE, res

    assert conn.latest_offset(topic) == 2, "a corrupt batch was appended"
    vals = [r.value for r in conn.fetch_records(topic, 0)]
    assert vals == [b"good-0", b"good-1"]
    nxt = conn.produce(topic, 0, kr.simple_batch([b"good-2"]))
    assert nxt["error_code"] == 0 and nxt["base_offset"] == 2


def test_invalid_record_sets(conn):
    topic = unique("invrec")
    conn.create_topic(topic)
    # Null records.
    res = conn.produce(topic, 0, None)
    assert res["error_code"] == kr.INVALID_RECORD, res
    # Two batches in one partition's record set.
    two = kr.simple_batch([b"a"]) + kr.simple_batch([b"b"])
    res = conn.produce(topic, 0, two)
    assert res["error_code"] == kr.INVALID_RECORD, res
    # A batch whose declared length runs past the record set.
    b = bytearray(kr.simple_batch([b"c"]))
    struct.pack_into(">i", b, 8, len(b) + 100)
    res = conn.produce(topic, 0, bytes(b))
    assert res["error_code"] in (kr.INVALID_RECORD, kr.CORRUPT_MESSAGE), res
    assert conn.latest_offset(topic) == 0
    served_after = conn.produce(topic, 0, kr.simple_batch([b"ok"]))
    assert served_after["error_code"] == 0 and served_after["base_offset"] == 0


@pytest.mark.parametrize("codec", [kr.CODEC_NONE, kr.CODEC_LZ4])
def test_keyless_records_on_a_compacted_topic_are_invalid_record(conn, codec):
    """As Kafka: the whole batch is refused with INVALID_RECORD, and ProduceResponse v8+ names
    each keyless record's batch_index."""
    topic = unique("cmpkey")
    conn.create_topic(topic, configs={"cleanup.policy": "compact"})
    batch = kr.build_batch([kr.Record(b"v0", key=b"k0"), kr.Record(b"v1"), kr.Record(b"v2", key=b"k2"),
                            kr.Record(None)], codec=codec)
    res = conn.produce(topic, 0, batch, version=8)
    assert res["error_code"] == kr.INVALID_RECORD, res
    assert [i for i, _ in res["record_errors"]] == [1, 3], res
    assert "without key" in (res["error_message"] or ""), res
    assert conn.latest_offset(topic) == 0, "nothing of the batch is stored"
    # v3 has no record_errors, the error code is the same.
    assert conn.produce(topic, 0, batch)["error_code"] == kr.INVALID_RECORD
    keyed = conn.produce(topic, 0, kr.build_batch([kr.Record(b"v", key=b"k")], codec=codec), version=8)
    assert keyed["error_code"] == 0 and keyed["record_errors"] == [], keyed
    # A topic that is not compacted takes keyless records.
    plain = unique("plainkey")
    conn.create_topic(plain)
    assert conn.produce(plain, 0, batch, version=8)["error_code"] == 0


def test_invalid_required_acks(conn):
    topic = unique("acks")
    conn.create_topic(topic)
    res = conn.produce(topic, 0, kr.simple_batch([b"x"]), acks=2)
    assert res["error_code"] == kr.INVALID_REQUIRED_ACKS, res
    assert conn.latest_offset(topic) == 0


def test_message_too_large_default_limit(conn):
    topic = unique("big")
    conn.create_topic(topic)
    res = conn.produce(topic, 0, kr.simple_batch([b"x" * 1_100_000]))
    assert res["error_code"] == kr.MESSAGE_TOO_LARGE, res
    ok = conn.produce(topic, 0, kr.simple_batch([b"y" * 1_000_000]))
    assert ok["error_code"] == 0 and ok["base_offset"] == 0
    assert conn.latest_offset(topic) == 1


def test_message_too_large_topic_limit(conn):
    topic = unique("small")
    conn.create_topic(topic, configs={"max.message.bytes": "2000"})
    small = kr.simple_batch([b"s" * 1500])
    assert len(small) < 2000
    ok = conn.produce(topic, 0, small)
    assert ok["error_code"] == 0 and ok["base_offset"] == 0
    big = kr.simple_batch([b"b" * 3000])
    res = conn.produce(topic, 0, big)
    assert res["error_code"] == kr.MESSAGE_TOO_LARGE, res
    # Many small records adding up to a big batch are refused too.
    many = kr.simple_batch([b"m" * 100] * 40)
    assert len(many) > 2000
    res = conn.produce(topic, 0, many)
    assert res["error_code"] == kr.MESSAGE_TOO_LARGE, res
    assert conn.latest_offset(topic) == 1
    assert [r.value for r in conn.fetch_records(topic, 0)] == [b"s" * 1500]


def test_errors_are_per_partition(conn):
    """One bad partition in a produce request does not fail the others."""
    topic = unique("mixed")
    conn.create_topic(topic, partitions=3)
    bad = bytearray(kr.simple_batch([b"bad"]))
    bad[18] ^= 0x55
    res = conn.produce_many({(topic, 0): kr.simple_batch([b"p0"]), (topic, 1): bytes(bad),
                             (topic, 2): kr.simple_batch([b"p2"]), (topic, 7): kr.simple_batch([b"p7"])})
    assert res[(topic, 0)]["error_code"] == 0
    assert res[(topic, 1)]["error_code"] == kr.CORRUPT_MESSAGE
    assert res[(topic, 2)]["error_code"] == 0
    assert res[(topic, 7)]["error_code"] == kr.UNKNOWN_TOPIC_OR_PARTITION
    assert [conn.latest_offset(topic, p) for p in range(3)] == [1, 0, 1]


# ---------------------------------------------------------------------------------------------
# Batch checks: what Kafka's LogValidator refuses from clients (an offset range that disagrees
# with the record count, control batches), transactional batches (Kafka refuses them outside an
# ongoing transaction; here there never is one), and the cap on producers per partition. A
# refused batch appends nothing and takes no offset.


def _refused(conn, topic, batch, code, version=3):
    before = conn.latest_offset(topic)
    res = conn.produce(topic, 0, batch, version=version)
    assert res["error_code"] == code, res
    assert res["base_offset"] == -1, res
    assert conn.latest_offset(topic) == before, "a refused batch was appended"
    return res


def _topic_with_one_record(conn, prefix):
    topic = unique(prefix)
    conn.create_topic(topic)
    assert conn.produce(topic, 0, kr.simple_batch([b"a"]))["base_offset"] == 0
    return topic


def _next_batch_lands_at(conn, topic, offset):
    """A good batch after refused ones takes the next offset: the refusals took none."""
    nxt = conn.produce(topic, 0, kr.simple_batch([b"next"]))
    assert nxt["error_code"] == 0 and nxt["base_offset"] == offset, nxt


def test_batch_offset_range_must_match_record_count(conn):
    topic = unique("count")
    conn.create_topic(topic)
    assert conn.produce(topic, 0, kr.simple_batch([b"a", b"b"]))["base_offset"] == 0
    # One record claiming a million offsets.
    claims = kr.reseal_batch(kr.simple_batch([b"one"]), last_offset_delta=1_000_000)
    res = _refused(conn, topic, claims, kr.INVALID_RECORD, version=8)
    assert "Inconsistent batch offset range" in (res["error_message"] or ""), res
    # Fewer offsets than records.
    _refused(conn, topic, kr.reseal_batch(kr.simple_batch([b"c", b"d", b"e"]), last_offset_delta=1),
             kr.INVALID_RECORD)
    _next_batch_lands_at(conn, topic, 2)
    assert [r.value for r in conn.fetch_records(topic, 0)] == [b"a", b"b", b"next"]


def test_batch_record_count_must_fit_its_bytes(conn):
    """Offset range and count agree, but an uncompressed batch of a few bytes cannot hold a
    million records."""
    topic = _topic_with_one_record(conn, "countbytes")
    liar = kr.reseal_batch(kr.simple_batch([b"b"]), records_count=1_000_000, last_offset_delta=999_999)
    _refused(conn, topic, liar, kr.INVALID_RECORD)
    _next_batch_lands_at(conn, topic, 1)


def test_control_batch_from_a_client_is_invalid_record(conn):
    topic = _topic_with_one_record(conn, "control")
    control = kr.reseal_batch(kr.simple_batch([b"not-a-marker"]), attributes_or=kr.ATTR_CONTROL)
    res = _refused(conn, topic, control, kr.INVALID_RECORD, version=8)
    assert "control records" in (res["error_message"] or ""), res
    _next_batch_lands_at(conn, topic, 1)


def test_transactional_batch_is_invalid_txn_state(conn):
    topic = _topic_with_one_record(conn, "txn")
    pid, epoch = conn.new_producer()
    txn = kr.reseal_batch(kr.idempotent_batch([b"t0", b"t1"], pid, epoch, 0), attributes_or=kr.ATTR_TRANSACTIONAL)
    _refused(conn, topic, txn, kr.INVALID_TXN_STATE)
    # The refusal left no producer state behind: the same sequence, not transactional, is new.
    ok = conn.produce_idempotent(topic, 0, pid, epoch, 0, [b"t0", b"t1"])
    assert ok["error_code"] == 0 and ok["base_offset"] == 1, ok
    assert conn.latest_offset(topic) == 3


@pytest.mark.parametrize("cap,kept", [("3", False), ("4", True), (None, True)], ids=["cap3", "cap4", "default"])
def test_producer_state_cap_evicts_the_oldest_producer(broker_factory, cap, kept):
    """Four producers write one partition. With room for three, the first one's state is
    evicted and its retry is stored again at a new offset; with room for four (or the default
    cap), the retry is recognised as a duplicate."""
    broker = broker_factory(settings={"producer.id.max.per.partition": cap} if cap else {})
    topic = unique("pidcap")
    with broker.conn() as c:
        c.create_topic(topic)
        producers = [c.new_producer() for _ in range(4)]
        for i, (pid, epoch) in enumerate(producers):
            res = c.produce_idempotent(topic, 0, pid, epoch, 0, [f"p{i}".encode()])
            assert res["error_code"] == 0 and res["base_offset"] == i, res
        pid, epoch = producers[0]
        retry = c.produce_idempotent(topic, 0, pid, epoch, 0, [b"p0"])
        assert retry["error_code"] == 0, retry
        if kept:
            assert retry["base_offset"] == 0 and c.latest_offset(topic) == 4, retry
        else:
            assert retry["base_offset"] == 4 and c.latest_offset(topic) == 5, retry
        # The newest producer is kept either way.
        pid, epoch = producers[3]
        newest = c.produce_idempotent(topic, 0, pid, epoch, 0, [b"p3"])
        assert newest["error_code"] == 0 and newest["base_offset"] == 3, newest


# ---------------------------------------------------------------------------------------------
# Unknown topics and partitions


@pytest.fixture
def no_autocreate(broker_factory):
    return broker_factory(settings={"auto.create.topics.enable": "false"})


def test_unknown_topic_without_autocreate(no_autocreate):
    topic = unique("missing")
    with no_autocreate.conn() as c:
        res = c.produce(topic, 0, kr.simple_batch([b"x"]))
        assert res["error_code"] == kr.UNKNOWN_TOPIC_OR_PARTITION, res
        for version in (1, 4):
            md = c.metadata([topic], version=version)
            assert md["topics"][topic]["error_code"] == kr.UNKNOWN_TOPIC_OR_PARTITION, md
        f = c.fetch(topic, 0, 0)
        assert f["error_code"] == kr.UNKNOWN_TOPIC_OR_PARTITION, f
        lo = c.list_offsets(topic, 0, kr.LATEST)
        assert lo["error_code"] == kr.UNKNOWN_TOPIC_OR_PARTITION, lo
        # Nothing was created along the way.
        md = c.metadata(None, version=1)
        assert topic not in md["topics"]


def test_autocreate_via_metadata(broker):
    with broker.conn() as c:
        t_v4_denied = unique("nocreate")
        md = c.metadata([t_v4_denied], version=4, allow_auto_topic_creation=False)
        assert md["topics"][t_v4_denied]["error_code"] == kr.UNKNOWN_TOPIC_OR_PARTITION
        assert t_v4_denied not in c.metadata(None, version=1)["topics"]

        for version in (1, 4):
            topic = unique(f"auto-v{version}")
            md = c.metadata([topic], version=version)
            assert md["topics"][topic]["error_code"] in (0, kr.LEADER_NOT_AVAILABLE), md
            md = c.wait_topic(topic, 1)
            p = md["topics"][topic]["partitions"][0]
            node = md["brokers"][0]["node_id"]
            assert p["leader"] == node and p["replicas"] == [node] and p["isr"] == [node]
            res = c.produce(topic, 0, kr.simple_batch([b"auto"]))
            assert res["error_code"] == 0 and res["base_offset"] == 0


def test_unknown_partition(conn):
    topic = unique("onepart")
    conn.create_topic(topic)
    res = conn.produce(topic, 5, kr.simple_batch([b"x"]))
    assert res["error_code"] == kr.UNKNOWN_TOPIC_OR_PARTITION, res
    res = conn.produce(topic, -1, kr.simple_batch([b"x"]))
    assert res["error_code"] == kr.UNKNOWN_TOPIC_OR_PARTITION, res
    assert conn.fetch(topic, 5, 0)["error_code"] == kr.UNKNOWN_TOPIC_OR_PARTITION
    assert conn.list_offsets(topic, 5)["error_code"] == kr.UNKNOWN_TOPIC_OR_PARTITION
    assert conn.latest_offset(topic, 0) == 0


def test_fetch_offset_out_of_range(conn):
    topic = unique("oor")
    conn.create_topic(topic)
    conn.produce(topic, 0, kr.simple_batch([b"a", b"b"]))
    assert conn.fetch(topic, 0, 3)["error_code"] == kr.OFFSET_OUT_OF_RANGE
    at_end = conn.fetch(topic, 0, 2)
    assert at_end["error_code"] == 0 and at_end["high_watermark"] == 2
    assert at_end["records"] in (b"", None) or kr.parse_batches(at_end["records"]) == []


# ---------------------------------------------------------------------------------------------
# Topic names

INVALID_NAMES = ["bad/name", "..", ".", "a" * 250, "", "has space", "tab\tname", "star*", "ümlaut"]


def test_invalid_topic_names_create_topics(conn):
    res = conn.create_topics([(n, 1, 1, {}) for n in INVALID_NAMES])
    for n in INVALID_NAMES:
        assert n in res, f"no result for {n!r}: {res}"
        assert res[n][0] == kr.INVALID_TOPIC_EXCEPTION, f"{n!r}: {res[n]}"
    md = conn.metadata(None, version=1)
    assert not set(INVALID_NAMES) & set(md["topics"])


def test_valid_topic_name_edge_cases(conn):
    names = ["a" * 249, "Mixed.Case_with-dashes.0", "x"]
    names = [n if len(n) == 249 else unique(n) for n in names]
    res = conn.create_topics([(n, 1, 1, {}) for n in names])
    for n in names:
        assert res[n][0] == 0, f"{n!r}: {res[n]}"
    for n in names:
        conn.wait_topic(n, 1)
        r = conn.produce(n, 0, kr.simple_batch([n.encode()]))
        assert r["error_code"] == 0
        assert [x.value for x in conn.fetch_records(n, 0)] == [n.encode()]


@pytest.mark.parametrize("version", [1, 4])
def test_invalid_topic_names_metadata_autocreate(conn, version):
    names = ["bad/name", "..", "a" * 250]
    md = conn.metadata(names, version=version, allow_auto_topic_creation=True)
    for n in names:
        assert md["topics"][n]["error_code"] == kr.INVALID_TOPIC_EXCEPTION, (n, md["topics"].get(n))


def test_create_topics_errors(conn):
    t = unique("dup")
    assert conn.create_topics([(t, 2, 1, {})])[t][0] == 0
    assert conn.create_topics([(t, 2, 1, {})])[t][0] == kr.TOPIC_ALREADY_EXISTS
    t2 = unique("rf")
    assert conn.create_topics([(t2, 1, 3, {})])[t2][0] == kr.INVALID_REPLICATION_FACTOR
    t3 = unique("parts")
    assert conn.create_topics([(t3, 0, 1, {})])[t3][0] == kr.INVALID_PARTITIONS
    t4 = unique("cfg")
    assert conn.create_topics([(t4, 1, 1, {"retention.ms": "not-a-number"})])[t4][0] == kr.INVALID_CONFIG
    t5 = unique("validate")
    assert conn.create_topics([(t5, 1, 1, {})], validate_only=True)[t5][0] == 0
    md = conn.metadata(None, version=1)
    assert t in md["topics"] and len(md["topics"][t]["partitions"]) == 2
    for name in (t2, t3, t4, t5):
        assert name not in md["topics"], f"{name} exists although its creation failed or was validate-only"


# ---------------------------------------------------------------------------------------------
# ApiVersions


def test_api_versions_v3_ranges(conn):
    av = conn.api_versions(3)
    assert av["error_code"] == 0
    keys = av["api_keys"]

    def supports(key, version):
        lo, hi = keys.get(key, (1, 0))
        return lo <= version <= hi

    # What this raw client and librdkafka's feature checks need.
    assert keys[kr.API_PRODUCE][0] == 0, "Produce must advertise min version 0"
    for key, version in [(kr.API_PRODUCE, 3), (kr.API_PRODUCE, 7), (kr.API_FETCH, 4), (kr.API_FETCH, 10),
                         (kr.API_LIST_OFFSETS, 1), (kr.API_METADATA, 1), (kr.API_METADATA, 4),
                         (kr.API_API_VERSIONS, 0), (kr.API_API_VERSIONS, 3), (kr.API_CREATE_TOPICS, 2)]:
        assert supports(key, version), f"api {key} v{version} not advertised: {keys.get(key)}"
    for lo, hi in keys.values():
        assert 0 <= lo <= hi
    # v0 and v3 agree.
    assert conn.api_versions(0)["api_keys"] == keys


def test_api_versions_unsupported_version_kip511(conn):
    corr = conn.send(kr.API_API_VERSIONS, 99, kr.Writer().compact_string("x").compact_string("1")
                     .tagged_fields().done(), header_version=2)
    got, r = conn.recv(0)
    assert got == corr
    res = kr.parse_api_versions(r, 0)
    assert res["error_code"] == kr.UNSUPPORTED_VERSION
    assert kr.API_API_VERSIONS in res["api_keys"], res
    lo, hi = res["api_keys"][kr.API_API_VERSIONS]
    assert lo == 0 and hi >= 3
    assert kr.API_PRODUCE in res["api_keys"] and kr.API_FETCH in res["api_keys"]
    # The client then retries on the same connection with a supported version.
    again = conn.api_versions(hi)
    assert again["error_code"] == 0 and again["api_keys"] == res["api_keys"]


# ---------------------------------------------------------------------------------------------
# Consumer group input
#
# Bounds from broker/src/limits.rs. Whatever the broker acknowledges must be readable after a
# restart; what it cannot store is refused with an error code, never answered 0.

GROUP_ID_BYTES_MAX = 32767  # Kafka's own offsets-topic keys hold no longer group id
INSTANCE_ID_BYTES_MAX = 249
MEMBER_ID_PREFIX_BYTES_MAX = 249
MEMBER_ID_BYTES_MAX = MEMBER_ID_PREFIX_BYTES_MAX + 1 + 36
JOIN_PROTOCOLS_MAX = 64
JOIN_PROTOCOLS_BYTES_MAX = 1 << 20
SYNC_ASSIGNMENT_BYTES_MAX = 1 << 20


@pytest.fixture
def group_broker(broker_factory):
    """A broker whose first rebalance does not wait for more members."""
    return broker_factory(settings={"group.initial.rebalance.delay.ms": "0"})


def group_id_of_bytes(n: int) -> str:
    """A unique group id of exactly `n` UTF-8 bytes, mostly two-byte characters (bytes, not
    characters, are bounded)."""
    prefix = unique("g")
    rest = n - len(prefix)
    return prefix + "é" * (rest // 2) + "g" * (rest % 2)


def test_offset_commit_with_an_overlong_group_id_is_refused_not_stored(broker):
    with broker.conn() as c:
        topic = unique("grp-long")
        c.create_topic(topic)
        for group in ("g" * 70_000, group_id_of_bytes(GROUP_ID_BYTES_MAX + 1)):
            # Only flexible versions (compact strings) can carry ids over 32767 bytes.
            assert c.offset_commit(group, {(topic, 0): (5, "meta")}, version=8) == {(topic, 0): kr.INVALID_GROUP_ID}
            for version in (6, 8):
                res = c.offset_fetch(group, [(topic, 0)], version=version)
                assert res["error_code"] == kr.INVALID_GROUP_ID and res["partitions"] == {}, (version, res)
    assert "skipping unreadable record" not in broker.log_text()
    served(broker)


def test_group_id_at_the_limit_is_committed_and_survives_a_restart(broker):
    group = group_id_of_bytes(GROUP_ID_BYTES_MAX)
    assert len(group.encode()) == GROUP_ID_BYTES_MAX
    topic = unique("grp-limit")
    with broker.conn() as c:
        c.create_topic(topic)
        assert c.offset_commit(group, {(topic, 0): (42, "at-limit", 3)}, version=8) == {(topic, 0): 0}
    broker.stop()
    broker.start()
    with broker.conn() as c:
        for version in (1, 8):  # a classic string (i16 length) holds exactly this id too
            res = c.offset_fetch(group, [(topic, 0)], version=version)
            assert res["error_code"] == 0, (version, res)
            p = res["partitions"][(topic, 0)]
            assert (p["offset"], p["metadata"]) == (42, "at-limit"), (version, p)
    assert "skipping unreadable record" not in broker.log_text()


def test_group_apis_refuse_overlong_group_ids(group_broker):
    long_group = "g" * 70_000
    with group_broker.conn() as c:
        topic = unique("grp-apis")
        c.create_topic(topic)
        protocols = [("range", kr.consumer_subscription([topic]))]
        got = {
            "JoinGroup v6": c.join_group(long_group, "", protocols, version=6)["error_code"],
            "SyncGroup v4": c.sync_group(long_group, 1, "m", {"m": b""}, version=4)["error_code"],
            "Heartbeat v4": c.heartbeat(long_group, 1, "m", version=4)["error_code"],
            "LeaveGroup v4": c.leave_group(long_group, [("m", None)], version=4)["error_code"],
        }
        assert got == {k: kr.INVALID_GROUP_ID for k in got}, got
        # At the limit the group id is accepted: a new member is asked for its id (KIP-394).
        at_limit = group_id_of_bytes(GROUP_ID_BYTES_MAX)
        assert c.join_group(at_limit, "", protocols, version=6)["error_code"] == kr.MEMBER_ID_REQUIRED
        # Several groups per request: only the over-long one is refused, in request order.
        short = unique("g-short")
        assert c.offset_commit(short, {(topic, 0): (1, None)}, version=8) == {(topic, 0): 0}
        described = c.group_call(kr.API_DESCRIBE_GROUPS, 5, kr.encode_describe_groups(5, [long_group, short]))
        assert [(g["group_id"], g["error_code"]) for g in described["groups"]] == [
            (long_group, kr.INVALID_GROUP_ID), (short, 0)], described
        deleted = c.group_call(kr.API_DELETE_GROUPS, 2, kr.encode_delete_groups(2, [long_group, short]))
        assert deleted["results"] == [(long_group, kr.INVALID_GROUP_ID), (short, 0)], deleted
    served(group_broker)


def test_join_group_refuses_overlong_instance_ids_and_oversized_protocols(group_broker):
    with group_broker.conn() as c:
        topic = unique("grp-join")
        c.create_topic(topic)
        sub = kr.consumer_subscription([topic])

        def join(protocols, **kw):
            return c.join_group(unique("g"), "", protocols, version=5, **kw)

        assert join([("range", sub)], group_instance_id="i" * (INSTANCE_ID_BYTES_MAX + 1))["error_code"] == kr.INVALID_REQUEST
        instance = "i" * INSTANCE_ID_BYTES_MAX
        res = join([("range", sub)], group_instance_id=instance)  # a static member joins at once
        assert res["error_code"] == 0 and res["member_id"].startswith(instance + "-"), res
        # Protocol type, names and metadata of one member together: at most 1 MiB.
        fits = JOIN_PROTOCOLS_BYTES_MAX - len("consumer") - len("range")
        assert join([("range", b"\0" * (fits + 1))])["error_code"] == kr.INVALID_REQUEST
        assert join([("range", b"\0" * fits)])["error_code"] == kr.MEMBER_ID_REQUIRED
        many = [(f"p{i}", sub) for i in range(JOIN_PROTOCOLS_MAX + 1)]
        assert join(many)["error_code"] == kr.INVALID_REQUEST
        assert join(many[:JOIN_PROTOCOLS_MAX])["error_code"] == kr.MEMBER_ID_REQUIRED
    served(group_broker)


def test_generated_member_ids_are_bounded_and_longer_ones_unknown(group_broker):
    client_id = "c" * 32767  # the longest a request header carries
    with kr.KafkaConn(group_broker.host, group_broker.port, client_id=client_id) as c:
        topic = unique("grp-member")
        c.create_topic(topic)
        group = unique("g")
        res = c.join_group(group, "", [("range", kr.consumer_subscription([topic]))], version=5)
        assert res["error_code"] == kr.MEMBER_ID_REQUIRED
        member = res["member_id"]
        assert len(member.encode()) <= MEMBER_ID_BYTES_MAX, len(member)
        assert member.startswith(client_id[:MEMBER_ID_PREFIX_BYTES_MAX] + "-"), member[:300]
        res = c.join_group(group, member, [("range", kr.consumer_subscription([topic]))], version=5)
        assert res["error_code"] == 0 and res["member_id"] == member, res
        generation = res["generation_id"]
        assert c.sync_group(group, generation, member, {member: b""})["error_code"] == 0
        ghost = member + "x" * (MEMBER_ID_BYTES_MAX + 1 - len(member))
        assert c.heartbeat(group, generation, ghost)["error_code"] == kr.UNKNOWN_MEMBER_ID
        assert c.sync_group(group, generation, ghost, {})["error_code"] == kr.UNKNOWN_MEMBER_ID
        assert c.offset_commit(group, {(topic, 0): (1, None)}, generation, ghost) == {(topic, 0): kr.UNKNOWN_MEMBER_ID}
        left = c.leave_group(group, [(ghost, None), (member, None)], version=3)
        assert [m["error_code"] for m in left["members"]] == [kr.UNKNOWN_MEMBER_ID, 0], left
    served(group_broker)


def test_sync_group_refuses_an_oversized_assignment(group_broker):
    with group_broker.conn() as c:
        topic = unique("grp-sync")
        c.create_topic(topic)
        group, protocols = unique("g"), [("range", kr.consumer_subscription([topic]))]
        member = c.join_group(group, "", protocols, version=5)["member_id"]
        res = c.join_group(group, member, protocols, version=5)
        assert res["error_code"] == 0 and res["leader"] == member, res
        generation = res["generation_id"]
        too_big = {member: b"\0" * (SYNC_ASSIGNMENT_BYTES_MAX + 1)}
        assert c.sync_group(group, generation, member, too_big)["error_code"] == kr.INVALID_REQUEST
        # Nothing was stored; the leader can still hand in an assignment within the bound.
        fits = b"\1" * SYNC_ASSIGNMENT_BYTES_MAX
        res = c.sync_group(group, generation, member, {member: fits})
        assert res["error_code"] == 0 and res["assignment"] == fits
        assert c.heartbeat(group, generation, member)["error_code"] == 0
    served(group_broker)


def test_group_max_size_is_finite_by_default_and_enforced(broker_factory):
    from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

    default = broker_factory()
    admin = AdminClient({"bootstrap.servers": default.bootstrap})
    res = ConfigResource(ResourceType.BROKER, "0")
    assert admin.describe_configs([res])[res].result(timeout=30)["group.max.size"].value == "1000"

    small = broker_factory(settings={"group.max.size": "2", "group.initial.rebalance.delay.ms": "0"})
    with small.conn() as c:
        topic = unique("grp-size")
        c.create_topic(topic)
        group, protocols = unique("g"), [("range", kr.consumer_subscription([topic]))]
        # Members waiting to rejoin with their new id (KIP-394) count: two fill the group.
        ids = [c.join_group(group, "", protocols, version=5) for _ in range(2)]
        assert [r["error_code"] for r in ids] == [kr.MEMBER_ID_REQUIRED] * 2, ids
        assert c.join_group(group, "", protocols, version=5)["error_code"] == kr.GROUP_MAX_SIZE_REACHED
        # A static member is refused too (it would be a third member).
        full = c.join_group(group, "", protocols, version=5, group_instance_id="static-3")
        assert full["error_code"] == kr.GROUP_MAX_SIZE_REACHED, full
    served(small)
