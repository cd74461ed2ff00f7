"""Debian's kcat (librdkafka) against the broker: metadata, keyed produce, consume, JSON output."""

import json
import shutil
import subprocess
import time

import pytest

import kafka_raw as kr
from conftest import unique

KCAT = shutil.which("kcat") or shutil.which("kafkacat")


@pytest.fixture(autouse=True)
def need_kcat():
    if not KCAT:
        pytest.fail("kcat is not installed (scripts/test-all.sh installs it with apt-get)")


def kcat(broker, *args, input=None, timeout=60, check=True):
    cmd = [KCAT, "-b", broker.bootstrap, "-X", "socket.timeout.ms=10000", *args]
    p = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}\nstdout:\n{p.stdout.decode(errors='replace')}"
                             f"\nstderr:\n{p.stderr.decode(errors='replace')}")
    return p


def test_metadata_listing(broker):
    topic = unique("kcat-meta")
    with broker.conn() as c:
        c.create_topic(topic, partitions=3)
    out = kcat(broker, "-L").stdout.decode()
    assert "1 brokers:" in out, out
    assert f"at {broker.bootstrap}" in out, out
    assert f'topic "{topic}" with 3 partitions:' in out, out
    for p in range(3):
        assert f"partition {p}, leader" in out

    js = json.loads(kcat(broker, "-L", "-J").stdout)
    assert [b["name"] for b in js["brokers"]] == [broker.bootstrap], js["brokers"]
    topics = {t["topic"]: t for t in js["topics"]}
    assert topic in topics
    parts = sorted(p["partition"] for p in topics[topic]["partitions"])
    assert parts == [0, 1, 2]
    node = js["brokers"][0]["id"]
    for p in topics[topic]["partitions"]:
        assert p["leader"] == node
        assert [r["id"] for r in p["replicas"]] == [node]
        assert [r["id"] for r in p["isrs"]] == [node]


def test_keyed_produce_and_consume(broker):
    topic = unique("kcat-keyed")
    with broker.conn() as c:
        c.create_topic(topic)
    lines = [f"key{i}:value {i} with some text {'x' * (i % 17)}" for i in range(200)]
    kcat(broker, "-P", "-t", topic, "-K:", "-X", "acks=all", input=("\n".join(lines) + "\n").encode())
    out = kcat(broker, "-C", "-t", topic, "-o", "beginning", "-e", "-f", "%k=%s\n").stdout.decode()
    got = out.splitlines()
    want = [ln.replace(":", "=", 1) for ln in lines]
    assert got == want
    with broker.conn() as c:
        recs = c.fetch_records(topic, 0)
    assert [(r.key, r.value) for r in recs] == [tuple(s.encode() for s in ln.split(":", 1)) for ln in lines]


def test_json_offsets_and_partitions(broker):
    topic = unique("kcat-json")
    with broker.conn() as c:
        c.create_topic(topic, partitions=2)
    for p in range(2):
        data = "".join(f"p{p}-k{i}:p{p}-v{i}\n" for i in range(30))
        kcat(broker, "-P", "-t", topic, "-p", str(p), "-K:", input=data.encode())
    out = kcat(broker, "-C", "-t", topic, "-o", "beginning", "-e", "-J").stdout.decode()
    msgs = [json.loads(ln) for ln in out.splitlines() if ln.strip()]
    assert len(msgs) == 60
    for p in range(2):
        mine = [m for m in msgs if m["partition"] == p]
        assert [m["offset"] for m in mine] == list(range(30))
        assert [m["key"] for m in mine] == [f"p{p}-k{i}" for i in range(30)]
        assert [m["payload"] for m in mine] == [f"p{p}-v{i}" for i in range(30)]
        assert all(m["topic"] == topic for m in mine)

    # Start in the middle of the log.
    out = kcat(broker, "-C", "-t", topic, "-p", "1", "-o", "25", "-e", "-J").stdout.decode()
    msgs = [json.loads(ln) for ln in out.splitlines() if ln.strip()]
    assert [m["offset"] for m in msgs] == [25, 26, 27, 28, 29]
    # Relative to the end.
    out = kcat(broker, "-C", "-t", topic, "-p", "0", "-o", "-3", "-e", "-f", "%o:%s\n").stdout.decode()
    assert out.splitlines() == ["27:p0-v27", "28:p0-v28", "29:p0-v29"]


def test_query_offsets_by_timestamp(broker):
    topic = unique("kcat-ts")
    with broker.conn() as c:
        c.create_topic(topic)
        base = int(time.time() * 1000) - 100_000
        for i in range(5):
            b = kr.build_batch([kr.Record(f"v{i}".encode(), timestamp=base + i * 1000)])
            assert c.produce(topic, 0, b)["error_code"] == 0
    out = kcat(broker, "-Q", "-t", f"{topic}:0:{base + 2500}").stdout.decode()
    assert "offset 3" in out, out
    out = kcat(broker, "-Q", "-t", f"{topic}:0:{base}").stdout.decode()
    assert "offset 0" in out, out


def test_produce_to_autocreated_topic(broker):
    topic = unique("kcat-auto")
    kcat(broker, "-P", "-t", topic, "-K:", input=b"a:1\nb:2\nc:3\n")
    with broker.conn() as c:
        c.wait_topic(topic, 1)
        recs = c.fetch_records(topic, 0)
    assert [(r.key, r.value) for r in recs] == [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")]


def test_binary_values_and_null_keys(broker):
    topic = unique("kcat-bin")
    with broker.conn() as c:
        c.create_topic(topic)
        values = [bytes(range(256)), b"", b"\x00\xff" * 1000]
        b = kr.build_batch([kr.Record(v, None) for v in values])
        assert c.produce(topic, 0, b)["error_code"] == 0
    # kcat writes non-UTF-8 payload bytes into its JSON as they are.
    out = kcat(broker, "-C", "-t", topic, "-o", "beginning", "-e", "-J").stdout.decode(errors="replace")
    msgs = [json.loads(ln) for ln in out.splitlines() if ln.strip()]
    assert [m["offset"] for m in msgs] == [0, 1, 2]
    assert all(m["key"] is None for m in msgs)
    # Raw bytes through a custom format keep every byte.
    out = kcat(broker, "-C", "-t", topic, "-o", "beginning", "-e", "-f", "%s\x01SEP\x01").stdout
    parts = out.split(b"\x01SEP\x01")
    assert parts[:3] == values
