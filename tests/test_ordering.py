"""Order of records within a partition when librdkafka keeps many Produce requests in flight on
one connection, with the partition owned by a shard other than the one serving the connection
(a cross-shard hop per request). Every record must come back in exactly the order produced."""

import subprocess

from conftest import unique

RECORDS = 120_000
ROUNDS = 5


def test_many_inflight_produce_requests_keep_partition_order(broker_factory):
    b = broker_factory(cores=2)
    topic = unique("order")
    payload = "".join(f"{i:08d}-{'0' * 100}\n" for i in range(RECORDS))
    for _round in range(ROUNDS):
        subprocess.run(
            ["kcat", "-b", b.bootstrap, "-P", "-t", topic, "-p", "0",
             "-X", "batch.num.messages=2000", "-X", "linger.ms=1", "-X", "queue.buffering.max.ms=1"],
            input=payload.encode(), check=True, timeout=120)
    out = subprocess.run(
        ["kcat", "-b", b.bootstrap, "-C", "-t", topic, "-p", "0", "-o", "beginning", "-e", "-q",
         "-f", "%o %s\n"],
        check=True, timeout=120, capture_output=True).stdout.decode().splitlines()
    assert len(out) == ROUNDS * RECORDS
    expected = 0
    for line in out:
        offset, value = line.split(" ", 1)
        seq = int(value[:8])
        assert seq == expected % RECORDS, f"offset {offset} holds record {seq}, expected {expected % RECORDS}"
        expected += 1
