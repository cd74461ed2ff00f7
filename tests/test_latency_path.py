"""The request path's latency instruments and the connection move to the partition owner.

- `strom_request_stage_seconds` (a summary per API and stage) accounts for every answered
  request, and its stages add up.
- A connection whose requests all go to partitions of another shard is handed to that shard
  (`connections.migrate.to.owner`), with responses kept in request order and nothing lost.
"""

import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

import kafka_raw as kr
from conftest import unique
from test_admin import scrape, value

STAGES = ["schedule", "decode", "hop_out", "execute", "hop_back", "encode", "queue", "send", "total"]


def owner_shard(topic: str, partition: int, shards: int) -> int:
    """The shard that owns a new partition (`ShardTable::assign`)."""
    return (kr.crc32c(topic.encode()) + partition) % shards


def connections_by_shard(broker, shards: int):
    s = scrape(broker)
    return [int(value(s, "strom_connections", shard=i)) for i in range(shards)]


def wait_for(cond, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def produce_one_by_one(broker, topic, n, partition=0, prefix="m", **extra):
    """n records, each flushed before the next, so each is its own Produce request."""
    conf = {"bootstrap.servers": broker.bootstrap, "acks": "1", "linger.ms": 0}
    conf.update(extra)
    p = Producer(conf)
    errors = []
    for i in range(n):
        p.produce(topic, value=f"{prefix}{i}".encode(), partition=partition,
                  on_delivery=lambda err, msg: errors.append(err) if err else None)
        assert p.flush(10) == 0
    assert not errors, errors
    return p


def read_all(broker, topic, n, partition=0, timeout=30.0):
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique("g"),
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, partition, 0)])
    got = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < n and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            assert m.error() is None, m.error()
            got.append((m.offset(), m.value()))
    finally:
        c.close()
    return got


def test_stage_summary_accounts_for_every_request(broker_factory):
    broker = broker_factory(cores=2)
    topic = unique("stages")
    with broker.conn() as c:
        c.create_topic(topic, partitions=2)
    p = produce_one_by_one(broker, topic, 30)
    p.flush(10)
    assert len(read_all(broker, topic, 30)) == 30

    s = scrape(broker)
    produced = value(s, "strom_requests_total", api="Produce")
    assert produced >= 30
    for stage in STAGES:
        n = value(s, "strom_request_stage_seconds_count", api="Produce", stage=stage)
        assert n == produced, f"stage {stage}: {n} observations for {produced} Produce requests"
        qs = [value(s, "strom_request_stage_seconds", api="Produce", stage=stage, quantile=q)
              for q in ("0.5", "0.9", "0.99", "0.999", "1")]
        assert qs == sorted(qs), f"stage {stage}: quantiles not ordered {qs}"
    # The total covers the stages: its sum is at least the sum of the others' sums (each stage
    # is a gap between consecutive stamps, and HDR rounding is within 1%).
    parts = sum(value(s, "strom_request_stage_seconds_sum", api="Produce", stage=st) for st in STAGES[:-1])
    total = value(s, "strom_request_stage_seconds_sum", api="Produce", stage="total")
    assert total > 0 and parts <= total * 1.05 + 1e-4, (parts, total)
    # Fetch and the rest are measured too.
    assert value(s, "strom_request_stage_seconds_count", api="Fetch", stage="total") > 0
    assert value(s, "strom_request_stage_seconds_count", api="other", stage="total") > 0


@pytest.mark.parametrize("migrate", [True, False])
def test_a_producer_connection_moves_to_the_partition_owner(broker_factory, migrate):
    """Every producer ends up served by the owner shard, wherever SO_REUSEPORT put it; with
    the setting off, nothing moves. Records and their order are unchanged either way."""
    shards = 2
    broker = broker_factory(cores=shards, settings={"connections.migrate.to.owner": str(migrate).lower()})
    topic = unique("move")
    with broker.conn() as c:
        c.create_topic(topic, partitions=1)
    owner = owner_shard(topic, 0, shards)
    other = 1 - owner
    wait_for(lambda: connections_by_shard(broker, shards) == [0, 0], what="the setup connection to close")
    producers, landed_elsewhere = 12, 0
    for i in range(producers):
        p = produce_one_by_one(broker, topic, 1, prefix=f"p{i}-")
        # Where the connection landed: before its 8th request it has not moved yet.
        conns = connections_by_shard(broker, shards)
        assert sum(conns) == 1, conns
        landed_elsewhere += conns[other]
        for j in range(1, 20):
            p.produce(topic, value=f"p{i}-{j}".encode(), partition=0)
            assert p.flush(10) == 0
        conns = connections_by_shard(broker, shards)
        if migrate:
            assert conns == [1 if s == owner else 0 for s in range(shards)], \
                f"producer {i}: connection not on the owner shard {owner}: {conns}"
        del p
        wait_for(lambda: connections_by_shard(broker, shards) == [0, 0], what="the producer's connection to close")

    moved = sum(v for (n, _), v in scrape(broker).items() if n == "strom_connections_migrated_total")
    if migrate:
        assert moved == landed_elsewhere, (moved, landed_elsewhere)
    else:
        assert moved == 0
    got = read_all(broker, topic, producers * 20)
    assert [o for o, _ in got] == list(range(producers * 20))
    for i in range(producers):
        mine = [v for _, v in got if v.startswith(f"p{i}-".encode())]
        assert mine == [f"p{i}-{j}".encode() for j in range(20)]


def test_pipelined_idempotent_producers_keep_order_across_the_move(broker_factory):
    """Producers with 5 requests in flight: the move waits for a point with none in flight, so
    responses stay in request order (librdkafka fails a connection whose responses come out of
    order), sequences stay in order, and nothing is duplicated."""
    shards = 2
    broker = broker_factory(cores=shards)
    topic = unique("pipelined")
    with broker.conn() as c:
        c.create_topic(topic, partitions=1)
    producers, per = 6, 3000
    for i in range(producers):
        p = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True,
                      "max.in.flight.requests.per.connection": 5, "linger.ms": 0,
                      "batch.num.messages": 20})
        errors = []
        for j in range(per):
            p.produce(topic, value=f"p{i}-{j}".encode(), partition=0,
                      on_delivery=lambda err, msg: errors.append(err) if err else None)
            if j % 50 == 0:
                p.poll(0)
        assert p.flush(60) == 0
        assert not errors, errors[:5]
        del p
    got = read_all(broker, topic, producers * per, timeout=60)
    assert len(got) == producers * per, f"read {len(got)} of {producers * per}"
    for i in range(producers):
        mine = [v for _, v in got if v.startswith(f"p{i}-".encode())]
        assert mine == [f"p{i}-{j}".encode() for j in range(per)], f"producer {i}: order or count wrong"
    assert "request handler was cancelled" not in broker.log_text()
    moved = sum(v for (n, _), v in scrape(broker).items() if n == "strom_connections_migrated_total")
    print(f"{moved:.0f} of {producers} producer connections moved")
