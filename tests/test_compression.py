"""Compressed batches from every client and codec: consumed back byte-equal, and stored exactly
as the producer sent them (codec bits and CRC-covered bytes unchanged)."""

import os
import random
import shutil
import subprocess
import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KafkaTopicPartition
from kafka import codec as kcodec

import kafka_raw as kr
from conftest import unique

CODECS = ["gzip", "snappy", "lz4", "zstd"]
KAFKA_PYTHON_HAS = {"gzip": kcodec.has_gzip(), "snappy": kcodec.has_snappy(), "lz4": kcodec.has_lz4(),
                    "zstd": kcodec.has_zstd()}


def payloads(n, seed):
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        kind = i % 3
        if kind == 0:  # very compressible
            out.append((f"record {i} " * (5 + i % 40)).encode())
        elif kind == 1:  # incompressible
            out.append(bytes(rnd.getrandbits(8) for _ in range(50 + i % 200)))
        else:  # mixed, with NULs
            out.append(b"\x00" * (i % 64) + f"{i}".encode() + bytes(rnd.getrandbits(8) for _ in range(8)))
    return out


def stored_batches(broker, topic, partition=0):
    with broker.conn() as c:
        return c.fetch_batches(topic, partition)


def assert_stored_compressed(broker, topic, codec, values):
    batches = stored_batches(broker, topic)
    assert batches, "no batches stored"
    assert all(b.crc_ok for b in batches)
    want = kr.CODEC_NAMES[codec]
    codecs = {b.codec for b in batches}
    # Clients may send a batch uncompressed when compressing does not make it smaller, but most
    # records here are compressible, and no other codec may appear.
    assert codecs <= {want, 0}, f"stored batches have codecs {codecs}, expected {want} ({codec})"
    in_codec = sum(b.record_count for b in batches if b.codec == want)
    assert in_codec * 2 > len(values), f"only {in_codec} of {len(values)} records stored with {codec}"
    recs = [r.value for b in batches for r in b.records]
    assert recs == values, "raw fetch of the compressed batches does not give the produced values"


@pytest.mark.parametrize("codec", CODECS)
def test_confluent_codec(broker, codec):
    topic = unique(f"z-cf-{codec}")
    with broker.conn() as c:
        c.create_topic(topic)
    values = payloads(300, seed=CODECS.index(codec))
    p = Producer({"bootstrap.servers": broker.bootstrap, "compression.type": codec, "linger.ms": 50,
                  "acks": "all", "enable.idempotence": False, "broker.address.family": "v4"})
    errors = []
    for i, v in enumerate(values):
        p.produce(topic, key=f"k{i}".encode(), value=v, partition=0,
                  on_delivery=lambda err, msg: errors.append(err) if err else None)
    assert p.flush(30) == 0
    assert not errors, errors[:3]

    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique("g"), "enable.auto.commit": False,
                  "broker.address.family": "v4", "log_level": 3})
    c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    got = []
    deadline = time.monotonic() + 30
    while len(got) < len(values) and time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is not None and not m.error():
            got.append((m.offset(), m.key(), m.value()))
    c.close()
    assert [g[0] for g in got] == list(range(len(values)))
    assert [g[2] for g in got] == values
    assert [g[1] for g in got] == [f"k{i}".encode() for i in range(len(values))]
    assert_stored_compressed(broker, topic, codec, values)


@pytest.mark.parametrize("codec", CODECS)
def test_kafka_python_codec(broker, codec):
    if not KAFKA_PYTHON_HAS[codec]:
        pytest.fail(f"kafka-python has no {codec} support installed (see tests/requirements.txt)")
    topic = unique(f"z-kp-{codec}")
    with broker.conn() as c:
        c.create_topic(topic)
    values = payloads(200, seed=7)
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, compression_type=codec, linger_ms=50, acks="all",
                      request_timeout_ms=30000, enable_idempotence=False)
    futs = [p.send(topic, value=v, partition=0) for v in values]
    p.flush(30)
    assert sorted(f.get(timeout=30).offset for f in futs) == list(range(len(values)))
    p.close()
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False)
    tp = KafkaTopicPartition(topic, 0)
    c.assign([tp])
    c.seek_to_beginning()
    got = []
    deadline = time.monotonic() + 30
    while len(got) < len(values) and time.monotonic() < deadline:
        for msgs in c.poll(timeout_ms=500).values():
            got.extend(msgs)
    c.close()
    assert [m.value for m in got] == values
    assert_stored_compressed(broker, topic, codec, values)


@pytest.mark.parametrize("codec", CODECS)
def test_kcat_codec(broker, codec):
    kcat = shutil.which("kcat")
    if not kcat:
        pytest.fail("kcat is not installed")
    topic = unique(f"z-kc-{codec}")
    with broker.conn() as c:
        c.create_topic(topic)
    lines = [f"line {i} " + "abc" * (i % 30) for i in range(500)]
    subprocess.run([kcat, "-b", broker.bootstrap, "-P", "-t", topic, "-p", "0", "-z", codec,
                    "-X", "linger.ms=50"], input=("\n".join(lines) + "\n").encode(), check=True, timeout=60,
                   capture_output=True)
    out = subprocess.run([kcat, "-b", broker.bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-f", "%s\n"],
                         check=True, timeout=60, capture_output=True).stdout.decode()
    assert out.splitlines() == lines
    assert_stored_compressed(broker, topic, codec, [ln.encode() for ln in lines])


@pytest.mark.parametrize("codec", CODECS)
def test_raw_compressed_batch_stored_verbatim(conn, codec):
    """The CRC-covered part of a compressed batch comes back bit for bit; only baseOffset and
    partitionLeaderEpoch may differ."""
    topic = unique(f"z-raw-{codec}")
    conn.create_topic(topic)
    cid = kr.CODEC_NAMES[codec]
    first = kr.simple_batch([b"plain-before"])
    assert conn.produce(topic, 0, first)["error_code"] == 0
    recs = [kr.Record(f"compressed value {i} ".encode() * 20, f"k{i}".encode(), [("h", b"v")]) for i in range(50)]
    sent = kr.build_batch(recs, codec=cid, base_offset=0)
    res = conn.produce(topic, 0, sent)
    assert res["error_code"] == 0 and res["base_offset"] == 1
    batches = conn.fetch_batches(topic, 0)
    assert [b.base_offset for b in batches] == [0, 1]
    b = batches[1]
    assert b.codec == cid
    assert b.crc_region == sent[21:], "compressed batch was rewritten by the broker"
    assert b.crc == kr.parse_batches(sent)[0].crc
    assert [r.value for r in b.records] == [r.value for r in recs]
    assert [r.offset for r in b.records] == list(range(1, 51))
    # A corrupt compressed batch is refused like an uncompressed one.
    bad = bytearray(kr.build_batch(recs[:3], codec=cid))
    bad[-2] ^= 0x40
    assert conn.produce(topic, 0, bytes(bad))["error_code"] == kr.CORRUPT_MESSAGE
    assert conn.latest_offset(topic) == 51
