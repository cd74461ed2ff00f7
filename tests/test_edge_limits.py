"""Limits at the network edge: what a hostile or broken client can make the broker hold.

Every test here runs the real broker and checks both sides of a limit: the hostile client is
stopped (closed, made to wait) and an ordinary client is served meanwhile."""

import socket
import struct
import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

import kafka_raw as kr
from conftest import HOST, unique
from test_admin import scrape

MIB = 1024 * 1024
# socket.request.max.bytes default: 100 MiB.
REQUEST_MAX = 104857600


def rss_kib(broker) -> int:
    return broker.proc_status()["VmRSS"]


def wait_until(cond, timeout: float, what: str, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def produce_and_consume(broker, topic: str, n: int = 20) -> None:
    """A real client (librdkafka) produces `n` records with acks=all and reads them back."""
    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 0,
                  "message.timeout.ms": 20000})
    delivered = []
    for i in range(n):
        p.produce(topic, value=f"v{i}".encode(), on_delivery=lambda err, msg: delivered.append(err))
    assert p.flush(30) == 0, "producer did not deliver within 30 s"
    assert delivered == [None] * n, delivered
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique("edge"),
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    got = []
    deadline = time.monotonic() + 30
    while len(got) < n and time.monotonic() < deadline:
        m = c.poll(1.0)
        if m is not None and m.error() is None:
            got.append(m.value())
    c.close()
    assert got[-n:] == [f"v{i}".encode() for i in range(n)]


def test_near_limit_prefixes_cost_no_memory_and_clients_are_served(broker_factory):
    """20 connections that each send only a length prefix just under socket.request.max.bytes
    (and then nothing) must not make the broker reserve those 2 GB: the frame buffer grows only
    as bytes arrive. An ordinary client is served while they hang."""
    broker = broker_factory(cores=2)
    topic = unique("edge-mem")
    with broker.conn() as c:
        c.create_topic(topic)
    produce_and_consume(broker, topic)  # warm up: clients, topic, groups
    before = rss_kib(broker)
    vm_before = broker.proc_status()["VmSize"]
    hostile = []
    for _ in range(20):
        s = socket.create_connection((HOST, broker.port), timeout=5)
        s.sendall(struct.pack(">i", REQUEST_MAX - 16))
        hostile.append(s)
    # Every hostile connection's prefix has been read once the broker answers a request sent
    # after them on each shard (connections are spread over the shards by the kernel).
    for _ in range(8):
        with broker.conn() as c:
            assert c.api_versions(0)["error_code"] == 0
    produce_and_consume(broker, topic)
    during = rss_kib(broker)
    grown_mib = (during - before) / 1024
    # Address space too: a buffer sized from the prefix may stay untouched (the allocator can
    # map zeroed memory lazily), yet it is reserved, and one write fills it.
    vm_grown_mib = (broker.proc_status()["VmSize"] - vm_before) / 1024
    print(f"RSS before {before // 1024} MiB, with 20 hostile prefixes {during // 1024} MiB "
          f"(+{grown_mib:.1f} MiB); address space +{vm_grown_mib:.0f} MiB")
    assert grown_mib < 64, f"RSS grew by {grown_mib:.0f} MiB with 20 near-limit length prefixes"
    assert vm_grown_mib < 512, f"address space grew by {vm_grown_mib:.0f} MiB with 20 near-limit length prefixes"
    for s in hostile:
        s.close()
    broker.assert_alive()


def metric_sum(broker, name: str) -> float:
    """The sum over shards of a per-shard metric."""
    return sum(v for (n, _), v in scrape(broker).items() if n == name)


def test_request_budget_applies_back_pressure_and_keeps_small_requests_flowing(broker_factory):
    """A frame is charged to the shard's budget from its length prefix. While a client that
    announced a large frame holds most of it, a second large request waits (it is not read, and
    not refused), small requests are still served, and the waiting request goes through as soon
    as the bytes are released."""
    # One shard, a 4 MiB budget: large frames may take 3 MiB together.
    broker = broker_factory(cores=1, settings={"queued.max.request.bytes": str(4 * MIB)})
    topic = unique("budget")
    with broker.conn() as c:
        c.create_topic(topic)
    hog = socket.create_connection((HOST, broker.port), timeout=5)
    hog.sendall(struct.pack(">i", int(2.5 * MIB)) + b"\x00" * 1024)
    wait_until(lambda: metric_sum(broker, "strom_request_bytes_inflight") >= 2.5 * MIB, 10,
               "the announced frame to be charged")
    big = kr.simple_batch([b"x" * (900 * 1024)])
    producer = broker.conn()
    producer.produce_send({(topic, 0): big})
    wait_until(lambda: metric_sum(broker, "strom_request_budget_waits_total") >= 1, 10,
               "the second large request to wait for the budget")
    # Small requests are served meanwhile.
    with broker.conn() as c:
        assert c.api_versions(0)["error_code"] == 0
        assert c.latest_offset(topic) == 0, "the waiting produce must not have been appended"
    # Releasing the hog's bytes (its connection ends mid-frame) lets the produce through.
    hog.close()
    producer.sock.settimeout(10)
    _, r = producer.recv()
    res = kr.KafkaConn.parse_produce(r)[(topic, 0)]
    assert res["error_code"] == 0 and res["base_offset"] == 0
    producer.close()
    wait_until(lambda: metric_sum(broker, "strom_request_bytes_inflight") == 0, 10, "the budget to be free again")


def admitted_conn(broker, timeout: float = 10.0, **kw) -> kr.KafkaConn:
    """A connection that got ApiVersions answered; retried while the broker still counts a
    connection that was just closed (it notices the close asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        c = kr.KafkaConn(HOST, broker.port, timeout=2, **kw)
        try:
            assert c.api_versions(0)["error_code"] == 0
            c.sock.settimeout(15)
            return c
        except (kr.ConnectionClosed, OSError):
            c.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def test_max_connections(broker_factory):
    broker = broker_factory(cores=2, settings={"max.connections": "3"})
    conns = [admitted_conn(broker) for _ in range(3)]
    extra = broker.conn()
    assert extra.wait_closed(5), "a fourth connection over max.connections=3 was kept open"
    extra.close()
    assert metric_sum(broker, "strom_connections_refused_total") >= 1
    # The open ones keep working, and a freed place is taken by the next connection.
    assert conns[0].api_versions(0)["error_code"] == 0
    conns.pop().close()
    conns.append(admitted_conn(broker))
    for c in conns:
        c.close()
    assert "max.connections = 3 reached" in broker.log_text()


def test_max_connections_per_ip(broker_factory):
    broker = broker_factory(cores=1, settings={"max.connections.per.ip": "2"})
    conns = [admitted_conn(broker) for _ in range(2)]
    extra = broker.conn()
    assert extra.wait_closed(5), "a third connection from 127.0.0.1 was kept open"
    extra.close()
    # Another address (loopback has all of 127.0.0.0/8) still gets in.
    with kr.KafkaConn(HOST, broker.port, timeout=5, source_address=("127.0.0.2", 0)) as other:
        assert other.api_versions(0)["error_code"] == 0
    for c in conns:
        c.close()
    assert "max.connections.per.ip = 2 reached" in broker.log_text()


def test_idle_connections_are_closed_but_not_while_a_request_waits(broker_factory):
    broker = broker_factory(cores=1, settings={"connections.max.idle.ms": "500"})
    topic = unique("idle")
    with broker.conn() as c:
        c.create_topic(topic)
    quiet = broker.conn()
    assert quiet.api_versions(0)["error_code"] == 0
    t0 = time.monotonic()
    assert quiet.wait_closed(10), "an idle connection was kept open"
    assert time.monotonic() - t0 >= 0.4, "closed before connections.max.idle.ms passed"
    quiet.close()
    # A long poll longer than the idle time: the connection is busy, not idle.
    poller = broker.conn()
    t0 = time.monotonic()
    poller.fetch_send({(topic, 0): 0}, max_wait_ms=2000, min_bytes=1)
    _, r = poller.recv()
    waited = time.monotonic() - t0
    assert kr.KafkaConn.parse_fetch(r)[(topic, 0)]["error_code"] == 0
    assert waited >= 1.5, f"the long poll was answered after {waited:.2f}s, before its max wait"
    assert poller.wait_closed(10)
    poller.close()
    assert metric_sum(broker, "strom_connections_idle_closed_total") >= 2


def test_stalled_request_body_closes_the_connection_and_frees_its_bytes(broker_factory):
    broker = broker_factory(cores=1, settings={"connections.max.idle.ms": "500"})
    with broker.conn() as c:
        c.send_raw(struct.pack(">i", 2 * MIB) + b"\x00" * 4096)
        wait_until(lambda: metric_sum(broker, "strom_request_bytes_inflight") >= 2 * MIB, 10,
                   "the started request to be charged")
        assert c.wait_closed(10), "a request whose body stopped arriving kept its connection"
    wait_until(lambda: metric_sum(broker, "strom_request_bytes_inflight") == 0, 10, "its bytes to be released")
    broker.assert_alive()


def test_abandoned_remote_long_poll_is_cancelled_at_once(broker_factory):
    """A fetch over partitions of both shards parks a wait on each. When data arrives on one,
    the fetch answers, and the wait on the other shard must go at once (a cancel message),
    not linger until its 30 s max wait."""
    broker = broker_factory(cores=2)
    topic = unique("longpoll")
    with broker.conn() as c:
        c.create_topic(topic, partitions=2)
    ends = {0: 0, 1: 0}
    # One connection, so one shard handles both fetches: in one round the data arrives on that
    # shard and the wait on the other shard is the abandoned one.
    with broker.conn() as poller:
        for target in (0, 1):
            poller.fetch_send({(topic, p): ends[p] for p in (0, 1)}, max_wait_ms=30000, min_bytes=1)
            wait_until(lambda: metric_sum(broker, "strom_fetch_waits") == 2, 10,
                       "a parked wait on each shard")
            with broker.conn() as c:
                assert c.produce(topic, target, kr.simple_batch([b"wake"]))["error_code"] == 0
            poller.sock.settimeout(10)
            _, r = poller.recv()
            res = kr.KafkaConn.parse_fetch(r)
            assert res[(topic, target)]["high_watermark"] == 1
            ends[target] = 1
            t0 = time.monotonic()
            wait_until(lambda: metric_sum(broker, "strom_fetch_waits") == 0, 5,
                       "the abandoned wait to be dropped")
            print(f"round {target}: waits gone {time.monotonic() - t0:.3f}s after the answer")
    assert metric_sum(broker, "strom_shard_cross_shard_cancelled_total") == 1
