"""A failed fdatasync (`test.fault.sync.fail.path` fails, with EIO, every fdatasync of a file
whose path contains the substring): the partition refuses writes with KAFKA_STORAGE_ERROR and
never acknowledges or serves what it could not make durable; the broker says so in its log,
/metrics and /v1/status; the other partitions carry on; after a restart (the disk healthy again)
the partition recovers what was durable and takes writes."""

import json
import time
import urllib.request

import pytest
from confluent_kafka import KafkaError, Producer
from prometheus_client.parser import text_string_to_metric_families

import kafka_raw as kr
from conftest import unique

FAIL_PATH = "syncfail"

def metric_sum(broker, name):
    """Sum over all label sets of sample `name` in /metrics (None if there is none)."""
    with urllib.request.urlopen(broker.admin_url + "/metrics", timeout=10) as r:
        body = r.read().decode()
    values = [s.value for f in text_string_to_metric_families(body) for s in f.samples if s.name == name]
    return sum(values) if values else None


def partition_status(broker, topic, partition=0):
    with urllib.request.urlopen(broker.admin_url + "/v1/status", timeout=10) as r:
        doc = json.loads(r.read())
    t = next((t for t in doc["topics"] if t["name"] == topic), None)
    assert t is not None, f"{topic} missing from /v1/status: {doc}"
    return next(p for p in t["partitions"] if p["partition"] == partition)


def wait_for(what, check, timeout=10.0):
    """Polls `check()` until it returns a true value; fails with the last value after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout}s (last: {got!r})")
        time.sleep(0.05)


def confluent_produce(broker, topic, value, **conf):
    """Produces one record with acks=all; returns the delivery report's (error, offset)."""
    p = Producer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4", "acks": "all",
                  "linger.ms": 0, **conf})
    reports = []
    p.produce(topic, value=value, partition=0, on_delivery=lambda err, msg: reports.append((err, msg.offset())))
    left = p.flush(30)
    p.close()
    assert left == 0 and len(reports) == 1, f"no delivery report within 30 s ({left} messages left)"
    return reports[0]


@pytest.mark.timeout(90)
def test_failed_fdatasync_refuses_writes(broker_factory):
    bad = unique(FAIL_PATH)
    good = unique("synced")
    # Only the partition's first segment file fails to sync: creating the topic (which syncs
    # its checkpoint files) works, the first acks=all append does not.
    segment = f"{bad}-0/00000000000000000000.log"
    broker = broker_factory(cores=1, settings={"test.fault.sync.fail.path": segment})
    assert FAIL_PATH not in str(broker.data_dir) and FAIL_PATH not in good

    with broker.conn() as c:
        res = c.create_topics([(bad, 1, 1, {}), (good, 1, 1, {})])
        assert res[bad][0] == kr.NONE, res
        assert res[good][0] == kr.NONE, res
        c.wait_topic(bad, 1)
        c.wait_topic(good, 1)

        # acks=all to the failing partition: refused, and again after the first failure.
        for attempt in range(2):
            r = c.produce(bad, 0, kr.simple_batch([f"never-{attempt}".encode()]), acks=-1)
            assert r["error_code"] == kr.KAFKA_STORAGE_ERROR, f"attempt {attempt}: {r}"

        # The other partition still acknowledges acks=all and serves what it acknowledged.
        r = c.produce(good, 0, kr.simple_batch([b"ok-1", b"ok-2"]), acks=-1)
        assert r["error_code"] == kr.NONE and r["base_offset"] == 0, r

    # The same through confluent-kafka: without retries the error is the broker's own; with
    # retries the message still never succeeds.
    err, _ = confluent_produce(broker, bad, b"never-ck", retries=0)
    assert err is not None and err.code() == KafkaError.KAFKA_STORAGE_ERROR, err
    err, _ = confluent_produce(broker, bad, b"never-ck-retried", **{"message.timeout.ms": 3000})
    assert err is not None, "a produce to the partition whose fdatasync failed succeeded"
    err, offset = confluent_produce(broker, good, b"ok-3")
    assert err is None and offset == 2, (err, offset)

    with broker.conn() as c:
        # Nothing unsynced is ever served or counted.
        f = c.fetch(bad, 0, 0)
        assert f["error_code"] in (kr.NONE, kr.KAFKA_STORAGE_ERROR), f
        assert not kr.parse_batches(f["records"] or b"", decode_records=False), "records of the failed partition are served"
        if f["error_code"] == kr.NONE:
            assert f["high_watermark"] == 0, f
        lo = c.list_offsets(bad, 0, kr.LATEST)
        assert lo["error_code"] != kr.NONE or lo["offset"] == 0, lo
        assert [x.value for x in c.fetch_records(good, 0)] == [b"ok-1", b"ok-2", b"ok-3"]

    # Metrics: the failures are counted, and exactly one partition refuses writes.
    wait_for("strom_log_sync_failures_total > 0",
             lambda: (metric_sum(broker, "strom_log_sync_failures_total") or 0) > 0)
    wait_for("strom_partitions_sync_failed == 1",
             lambda: metric_sum(broker, "strom_partitions_sync_failed") == 1)

    st_bad = partition_status(broker, bad)
    assert st_bad["sync_failed"] is True, st_bad
    assert st_bad["durable_end_offset"] == 0 and st_bad["high_watermark"] == 0, st_bad
    st_good = partition_status(broker, good)
    assert st_good["sync_failed"] is False, st_good
    assert st_good["durable_end_offset"] == 3 and st_good["high_watermark"] == 3, st_good

    assert "fdatasync failed" in broker.log_text(), broker.log_tail()
    broker.assert_alive()

    # A restart with a healthy disk: the partition is recovered from what was durable (nothing
    # of it) and takes writes again; the other partition kept everything.
    broker.stop()
    broker.settings.pop("test.fault.sync.fail.path")
    broker.start()
    with broker.conn() as c:
        r = c.produce(bad, 0, kr.simple_batch([b"after-restart"]), acks=-1)
        assert r["error_code"] == kr.NONE and r["base_offset"] == 0, r
        assert [x.value for x in c.fetch_records(bad, 0)] == [b"after-restart"]
        assert [x.value for x in c.fetch_records(good, 0)] == [b"ok-1", b"ok-2", b"ok-3"]
