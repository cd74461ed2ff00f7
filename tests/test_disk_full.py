"""A data directory that runs out of space: KAFKA_STORAGE_ERROR for the partition, no corruption,
no lost acknowledged data, recovery once space is freed, and a clean restart afterwards."""

import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

import kafka_raw as kr
from conftest import unique

RECORDS_PER_BATCH = 16
VALUE_SIZE = 4000
FILLER_BYTES = 1536 * 1024


def value_for(seq: int) -> bytes:
    head = f"{seq:08d}:".encode()
    return head + random.Random(seq).randbytes(VALUE_SIZE - len(head))


def batch_for(first_seq: int) -> bytes:
    return kr.simple_batch([value_for(first_seq + i) for i in range(RECORDS_PER_BATCH)])


@pytest.fixture
def small_tmpfs():
    d = Path(tempfile.mkdtemp(prefix="strom-tmpfs-"))
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(d)], capture_output=True, text=True)
    if p.returncode != 0:
        shutil.rmtree(d, ignore_errors=True)
        pytest.fail(f"cannot mount an 8 MiB tmpfs on {d} (the disk-full test needs root): "
                    f"{p.stderr.strip() or p.stdout.strip()}")
    try:
        yield d
    finally:
        for args in (["umount", str(d)], ["umount", "-l", str(d)]):
            if subprocess.run(args, capture_output=True).returncode == 0:
                break
            time.sleep(0.5)
        shutil.rmtree(d, ignore_errors=True)


def check_log(c, topic, acked):
    """The partition holds exactly the acknowledged batches, intact and in order."""
    records = c.fetch_records(topic, 0)
    expected = []
    for base, first_seq in acked:
        expected.extend((base + i, value_for(first_seq + i)) for i in range(RECORDS_PER_BATCH))
    got = [(r.offset, r.value) for r in records]
    assert len(got) == len(expected), f"log has {len(got)} records, {len(expected)} were acknowledged"
    for (go, gv), (eo, ev) in zip(got, expected):
        assert go == eo, f"offset {go} where {eo} was expected"
        assert gv == ev, f"record at offset {go} differs from what was acknowledged"


@pytest.mark.timeout(180)
def test_disk_full_storage_error_and_recovery(small_tmpfs, broker_factory):
    filler = small_tmpfs / "filler"
    filler.write_bytes(os.urandom(FILLER_BYTES))
    broker = broker_factory(data_dir=small_tmpfs / "data")
    topic = unique("full")
    other = unique("other")

    c = broker.conn(timeout=30)
    c.create_topic(topic)
    c.create_topic(other)
    acked = []  # (base offset, first seq)
    seq = 0
    storage_error = None
    deadline = time.monotonic() + 60
    for _ in range(1000):
        assert time.monotonic() < deadline, "the disk never filled up within 60 s"
        res = c.produce(topic, 0, batch_for(seq), acks=-1)
        if res["error_code"] == kr.NONE:
            assert res["base_offset"] == len(acked) * RECORDS_PER_BATCH, res
            acked.append((res["base_offset"], seq))
            seq += RECORDS_PER_BATCH
            continue
        assert res["error_code"] == kr.KAFKA_STORAGE_ERROR, f"expected KAFKA_STORAGE_ERROR (56), got {res}"
        storage_error = res
        break
    assert storage_error is not None, "1000 batches of 64 KiB fitted in an 8 MiB tmpfs?"
    assert acked, "the very first batch failed: nothing could be written at all"
    seq += RECORDS_PER_BATCH  # the refused batch's sequence numbers are never reused

    # Still full: the next attempt fails the same way, the broker is up, reads work.
    again = c.produce(topic, 0, batch_for(seq), acks=-1)
    assert again["error_code"] == kr.KAFKA_STORAGE_ERROR, again
    seq += RECORDS_PER_BATCH
    broker.assert_alive()
    assert c.latest_offset(topic) == len(acked) * RECORDS_PER_BATCH
    check_log(c, topic, acked)
    md = c.metadata([topic, other], version=1)
    assert md["topics"][topic]["error_code"] == 0

    # Free space: producing works again, at the next offset (failed appends consumed none).
    filler.unlink()
    deadline = time.monotonic() + 15
    while True:
        res = c.produce(topic, 0, batch_for(seq), acks=-1)
        if res["error_code"] == kr.NONE:
            break
        assert res["error_code"] == kr.KAFKA_STORAGE_ERROR, res
        assert time.monotonic() < deadline, "producing did not recover within 15 s of freeing space"
        time.sleep(0.5)
    assert res["base_offset"] == len(acked) * RECORDS_PER_BATCH, res
    acked.append((res["base_offset"], seq))
    seq += RECORDS_PER_BATCH
    res = c.produce(other, 0, kr.simple_batch([b"other topic works"]), acks=-1)
    assert res["error_code"] == 0 and res["base_offset"] == 0
    check_log(c, topic, acked)
    c.close()

    # Everything acknowledged survives a restart on the same directory.
    broker.restart()
    with broker.conn(timeout=30) as c:
        check_log(c, topic, acked)
        assert [r.value for r in c.fetch_records(other, 0)] == [b"other topic works"]
        res = c.produce(topic, 0, kr.simple_batch([b"after restart"]), acks=-1)
        assert res["error_code"] == 0 and res["base_offset"] == len(acked) * RECORDS_PER_BATCH
    broker.stop()
