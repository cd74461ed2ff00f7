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
