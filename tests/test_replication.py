"""Replicated partitions in cluster mode, black-box: real `strom` nodes started with
`scripts/cluster.sh` (127.0.1.x, as in test_cluster.py), every node and every client inside a
private network namespace that has only `lo` (netns.py).

Kafka-style ISR replication: followers fetch from the leader and report what they hold durably,
the high watermark is the minimum over the ISR, acks=all is answered once the high watermark
passes the batch, `min.insync.replicas` refuses acks=all produces while the committed ISR is
smaller (NOT_ENOUGH_REPLICAS, 19), a follower behind for `replica.lag.time.max.ms` leaves the
ISR and joins again once caught up (a dead one is fenced by the controller and leaves it at
once), and replicas hold the leader's batches byte for byte. Only followers are killed here;
leader failover is test_failover.py's.

Killing both followers of a partition needs five nodes: every node is a controller voter, and
the ISR shrink to the leader alone must still be committed by a quorum.
"""

import gc
import json
import logging
import os
import signal
import subprocess
import time
import uuid
from collections import namedtuple
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaProducer

import kafka_raw
from conftest import strom_bin
from netns import ns_of, private_netns
from test_cluster import KCAT, Cluster, ip

LAG_MS = 1500
SETTINGS = ["-o", f"replica.lag.time.max.ms={LAG_MS}"]
NOT_ENOUGH_REPLICAS = 19
NOT_ENOUGH_REPLICAS_AFTER_APPEND = 20


@pytest.fixture(scope="module", autouse=True)
def netns():
    """Every test of this module, and whatever it starts, runs in a private network namespace
    with only `lo`."""
    with private_netns() as ns:
        assert ns_of("self") == ns.ns
        yield ns


# ---------------------------------------------------------------------------------------------
# The cluster


class ReplCluster(Cluster):
    """`scripts/cluster.sh up N` with a short `replica.lag.time.max.ms`, in its own directory."""

    def __init__(self, workdir: Path, nodes: int, netns_id: str):
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(workdir)
        self.nodes = nodes
        self.netns_id = netns_id

    def up(self):
        return self.script("up", str(self.nodes), *SETTINGS, timeout=90)

    def bootstrap(self, nodes=None) -> str:
        return ",".join(f"{ip(i)}:9092" for i in (range(self.nodes) if nodes is None else nodes))

    def controller(self) -> int:
        views = self.wait_for(range(self.nodes), "one active controller",
                              lambda v: len({x["controller_id"] for x in v.values()}) == 1
                              and next(iter(v.values()))["controller_id"] >= 0)
        return next(iter(views.values()))["controller_id"]

    def kill(self, i: int):
        super().kill(i)
        # The kernel tears a killed process's io_uring and listening sockets down
        # asynchronously: wait until nothing listens on the node's address any more, so that
        # `up` can start it again.
        deadline = time.monotonic() + 10
        while listening_ports(ip(i)) and time.monotonic() < deadline:
            time.sleep(0.02)

    def partition_dir(self, node: int, topic: str, partition: int) -> Path:
        return self.dir / f"node-{node}" / "data" / f"{topic}-{partition}"

    def teardown(self):
        # A client still alive would reconnect to the next cluster on these addresses and
        # auto-create its topic there.
        gc.collect()
        pids = []
        for i in range(self.nodes):
            try:
                pid = self.pid(i)
                if ns_of(pid) != self.netns_id:
                    continue  # not running any more (the pid may be someone else's by now)
                os.kill(pid, signal.SIGKILL)
                pids.append(pid)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{p}").exists() for p in pids) and time.monotonic() < deadline:
            time.sleep(0.02)


class _NodeLog:
    """What conftest's report hook needs to show a node's log when a test fails."""

    def __init__(self, cluster: ReplCluster, i: int):
        self.cluster, self.i = cluster, i
        self.name = f"{cluster.workdir.name}/node-{i}"

    def log_tail(self, n: int = 80) -> str:
        try:
            return "\n".join(self.cluster.log(self.i).splitlines()[-n:])
        except OSError as e:
            return f"(no log: {e})"


@pytest.fixture
def make_cluster(request, tmp_path, netns):
    made = []

    def make(nodes: int = 3) -> ReplCluster:
        c = ReplCluster(tmp_path / f"cluster{len(made)}", nodes, netns.ns)
        made.append(c)
        request.node._strom_brokers = [_NodeLog(m, i) for m in made for i in range(m.nodes)]
        c.up()
        for i in range(nodes):
            assert ns_of(c.pid(i)) == netns.ns, f"node {i} is not in the private namespace"
        return c

    yield make
    for c in made:
        c.teardown()


def listening_ports(address: str):
    """Ports in LISTEN state on `address` (IPv4), from this namespace's /proc/net/tcp."""
    a, b, c, d = (int(x) for x in address.split("."))
    want = f"{d:02X}{c:02X}{b:02X}{a:02X}"
    out = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            host, port = parts[1].split(":")
            if parts[3] == "0A" and host == want:
                out.add(int(port, 16))
    return out


# ---------------------------------------------------------------------------------------------
# Waiting, metadata, topics

Part = namedtuple("Part", "leader replicas isr error")


def wait_until(what, probe, timeout=15.0, interval=0.05):
    """Calls probe() until it returns (True, state), at most until `timeout`; returns the state.
    Connection errors count as not yet."""
    deadline = time.monotonic() + timeout
    state = None
    while True:
        try:
            done, state = probe()
        except (OSError, kafka_raw.ConnectionClosed, ValueError) as e:
            done, state = False, f"{state!r} (then {e!r})"
        if done:
            return state
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}; last seen: {state}")
        time.sleep(interval)


def layout(node: int, topic: str):
    """{partition: Part(leader, sorted replicas, sorted isr, error)} in `node`'s Metadata."""
    with kafka_raw.KafkaConn(ip(node), 9092, timeout=5) as c:
        md = c.metadata([topic], version=4, allow_auto_topic_creation=False)
    t = md["topics"].get(topic)
    if t is None or t["error_code"] != 0:
        return None
    return {p: Part(x["leader"], sorted(x["replicas"]), sorted(x["isr"]), x["error_code"])
            for p, x in sorted(t["partitions"].items())}


def wait_layout(nodes, topic, check, what, timeout=15.0):
    """Waits until every node in `nodes` answers the same layout of `topic` and check(layout)
    holds; returns it."""
    def probe():
        views = {n: layout(n, topic) for n in nodes}
        first = views[nodes[0]]
        ok = first is not None and all(v == first for v in views.values()) and check(first)
        return ok, views if not ok else first
    return wait_until(f"{what} (topic {topic}, nodes {list(nodes)})", probe, timeout)


def fully_replicated(rf):
    def check(lay):
        return lay and all(p.error == 0 and len(p.replicas) == rf and p.leader in p.replicas
                           and p.isr == p.replicas for p in lay.values())
    return check


def create_topic(via: int, topic: str, partitions: int, rf: int = 3, config=None):
    admin = AdminClient({"bootstrap.servers": f"{ip(via)}:9092"})
    fut = admin.create_topics([NewTopic(topic, partitions, rf, config=dict(config or {}))],
                              operation_timeout=20)[topic]
    fut.result(timeout=30)


def new_topic(nodes, via: int, topic: str, partitions: int, rf: int = 3, config=None):
    """Creates the topic through node `via`, waits until every node in `nodes` shows it with
    every replica in the ISR and until each leader serves its partitions (Metadata can name a
    leader a moment before it has opened the log); returns the layout."""
    create_topic(via, topic, partitions, rf, config)
    lay = wait_layout(nodes, topic, fully_replicated(rf), f"{rf} replica(s) in sync")

    def served():
        errors = {}
        for part, p in lay.items():
            with kafka_raw.KafkaConn(ip(p.leader), 9092, timeout=5) as c:
                errors[part] = c.list_offsets(topic, part)["error_code"]
        return not any(errors.values()), errors
    wait_until(f"the leaders of {topic} serving it", served)
    return lay


NOT_READY = (kafka_raw.UNKNOWN_TOPIC_OR_PARTITION, kafka_raw.LEADER_NOT_AVAILABLE, 6)


def produce_raw(conn, topic, partition, values, acks=-1, timeout_ms=30000, retry_s=10.0):
    """One batch of `values`, hand-encoded, its partition's answer returned as is -- except
    that a leader which has not taken up the partition yet (UNKNOWN_TOPIC_OR_PARTITION,
    LEADER_NOT_AVAILABLE, NOT_LEADER_OR_FOLLOWER: nothing appended) is asked again, for up to
    `retry_s`."""
    deadline = time.monotonic() + retry_s
    while True:
        res = conn.produce(topic, partition, kafka_raw.simple_batch(values), acks=acks,
                           timeout_ms=timeout_ms)
        if res["error_code"] not in NOT_READY or time.monotonic() > deadline:
            return res
        time.sleep(0.05)


def high_watermark(leader: int, topic: str, partition: int) -> int:
    with kafka_raw.KafkaConn(ip(leader), 9092, timeout=10) as c:
        return c.latest_offset(topic, partition)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------------------------------------
# Clients


def produce_confluent(bootstrap, topic, values, partition_of, flush_s=60.0, **conf):
    """Produces `values` (partition_of(n) picks the partition, None: the partitioner) with
    acks=all; returns the delivery reports [(error, partition, offset, key, value)] and the
    number of messages still queued after flush."""
    reports = []
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5, **conf})
    for n, v in enumerate(values):
        kw = {}
        part = partition_of(n) if partition_of else None
        if part is not None:
            kw["partition"] = part
        p.produce(topic, value=v,
                  on_delivery=lambda e, m: reports.append((e, m.partition(), m.offset(), m.key(),
                                                           m.value())), **kw)
        p.poll(0)
    left = p.flush(flush_s)
    return reports, left


def acked_of(reports):
    errors = [(e, v) for e, _, _, _, v in reports if e is not None]
    return {(part, off): v for e, part, off, _, v in reports if e is None}, errors


def consume_group(bootstrap, topic, group, expect: int, timeout=30.0):
    """A confluent-kafka group member reading `topic` from the beginning until it holds
    `expect` records (or `timeout`); returns {(partition, offset): (key, value)}."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    got = {}
    try:
        c.subscribe([topic])
        deadline = time.monotonic() + timeout
        while len(got) < expect and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None or m.error() is not None:
                continue
            got[(m.partition(), m.offset())] = (m.key(), m.value())
        c.commit(asynchronous=False)
    finally:
        c.close()
    return got


def kcat_consume(bootstrap, topic):
    res = subprocess.run([KCAT, "-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-q",
                          "-X", "socket.timeout.ms=10000", "-f", "%p %o %s\n"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    got = {}
    for line in res.stdout.splitlines():
        part, off, value = line.split(" ", 2)
        assert (int(part), int(off)) not in got, f"kcat got {part}/{off} twice"
        got[(int(part), int(off))] = value.encode()
    return got


def run_cli(*args):
    return subprocess.run([str(strom_bin()), *args], capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, NO_COLOR="1"))


# -- Fetch v12 (flexible), hand-encoded: replica_id is the field under test ---------------------


def fetch_v12(host, topic, partition, offset, replica_id=-1, max_wait_ms=0,
              current_leader_epoch=-1, last_fetched_epoch=-1):
    """One Fetch v12 on host:9092, sessionless. Returns {"error_code": top level,
    "partitions": {index: {"error_code", "high_watermark", "records"}}}, or None if the broker
    closed the connection instead of answering."""
    w = kafka_raw.VWriter(True)
    w.int32(replica_id).int32(max_wait_ms).int32(1).int32(1 << 20).int8(0)
    w.int32(0).int32(-1)  # session id, session epoch -1: a full fetch without a session
    w.arr([topic], lambda w, t: (w.str_(t), w.arr([partition], lambda w, p: (
        w.int32(p).int32(current_leader_epoch).int64(offset).int32(last_fetched_epoch)
        .int64(-1).int32(1 << 20).tags())), w.tags()))
    w.arr([], None)  # forgotten topics
    w.str_("")  # rack id
    w.tags()
    try:
        with kafka_raw.KafkaConn(host, 9092, timeout=10) as c:
            corr = c.send(kafka_raw.API_FETCH, 12, w.done(), header_version=2)
            got, r = c.recv(1)
    except (kafka_raw.ConnectionClosed, ConnectionResetError, BrokenPipeError):
        return None
    assert got == corr
    out = {"throttle_time_ms": r.int32(), "error_code": r.int16(), "session_id": r.int32(),
           "partitions": {}}

    def part(r):
        p = {"partition": r.int32(), "error_code": r.int16(), "high_watermark": r.int64(),
             "last_stable_offset": r.int64(), "log_start_offset": r.int64()}
        r.compact_array(lambda r: (r.int64(), r.int64(), r.tagged_fields()))
        p["preferred_read_replica"] = r.int32()
        n = r.uvarint()
        p["records"] = None if n == 0 else bytes(r._take(n - 1))
        # Tagged fields: DivergingEpoch (0) and CurrentLeader (1, KIP-951).
        for _ in range(r.uvarint()):
            tag, size = r.uvarint(), r.uvarint()
            t = kafka_raw.Reader(bytes(r._take(size)))
            if tag == 0:
                p["diverging_epoch"] = (t.int32(), t.int64())
            elif tag == 1:
                p["current_leader"] = (t.int32(), t.int32())
        out["partitions"][p["partition"]] = p

    r.compact_array(lambda r: (r.compact_string(), r.compact_array(part), r.tagged_fields()))
    r.tagged_fields()
    assert r.remaining() == 0, f"{r.remaining()} trailing bytes in the Fetch v12 response"
    return out


def codes(answers):
    """The distinct outcomes of Fetch answers: "closed" or the (top-level, else partition)
    error code."""
    return sorted({"closed" if a is None else a["error_code"] or a["partitions"].get(0, {}).get("error_code")
                   for a in answers}, key=str)


def refused(res, partition):
    """A Fetch answer that gives the asker nothing: closed, or an error code."""
    if res is None:
        return True
    p = res["partitions"].get(partition)
    return res["error_code"] != 0 or p is None or p["error_code"] != 0


# ---------------------------------------------------------------------------------------------
# Tests


def test_single_replica_topics_and_the_fetch_v12_encoder(make_cluster):
    """One replica each. With min.insync.replicas=2 acks=all is refused (NOT_ENOUGH_REPLICAS,
    nothing appended) and acks=1 appended; with the default, acks=all is answered and a
    consumer's Fetch v12 (the encoder the replica-fetch test uses) reads exactly its records."""
    make_cluster(3)
    strict, plain = unique("strict"), unique("plain")
    lay = new_topic([0, 1, 2], 0, strict, 1, rf=1, config={"min.insync.replicas": "2"})
    with kafka_raw.KafkaConn(ip(lay[0].leader), 9092, timeout=15) as conn:
        res = produce_raw(conn, strict, 0, [b"refused"], acks=-1, timeout_ms=3000)
        assert res["error_code"] == NOT_ENOUGH_REPLICAS, res
        res = produce_raw(conn, strict, 0, [b"taken"], acks=1)
        assert (res["error_code"], res["base_offset"]) == (0, 0), res

    lay = new_topic([0, 1, 2], 1, plain, 1, rf=1)
    leader = lay[0].leader
    with kafka_raw.KafkaConn(ip(leader), 9092, timeout=15) as conn:
        res = produce_raw(conn, plain, 0, [b"one", b"two"], acks=-1)
        assert (res["error_code"], res["base_offset"]) == (0, 0), res
    fetched = fetch_v12(ip(leader), plain, 0, 0)
    assert fetched is not None and fetched["error_code"] == 0, fetched
    part = fetched["partitions"][0]
    assert (part["error_code"], part["high_watermark"]) == (0, 2), fetched
    values = [r.value for r in kafka_raw.records_of(part["records"])]
    assert values == [b"one", b"two"], values
    # Another node does not lead it.
    other = next(n for n in range(3) if n != leader)
    assert fetch_v12(ip(other), plain, 0, 0)["partitions"][0]["error_code"] == 6


def test_rf3_topic_through_a_non_controller_round_trips_through_every_client(make_cluster):
    """Replication factor 3 and min.insync.replicas=2, created through a node that is not the
    active controller: every node shows three replicas in sync and one leader per node;
    confluent-kafka, kafka-python and kcat produce with acks=all, a consumer group and kcat read
    back exactly what was acknowledged."""
    c = make_cluster(3)
    assert KCAT, "kcat is not installed (scripts/test-all.sh installs it with apt-get)"
    controller = c.controller()
    via = next(i for i in range(3) if i != controller)
    topic = unique("replicated")
    # Every node answers the same layout: three replicas, all in sync, one leader per node.
    lay = new_topic([0, 1, 2], via, topic, 3, config={"min.insync.replicas": "2"})
    assert all(p.replicas == [0, 1, 2] and p.isr == [0, 1, 2] for p in lay.values()), lay
    assert sorted(p.leader for p in lay.values()) == [0, 1, 2], lay
    # librdkafka sees the same.
    md = AdminClient({"bootstrap.servers": f"{ip(controller)}:9092"}).list_topics(topic, timeout=10)
    for p in md.topics[topic].partitions.values():
        assert (p.leader, sorted(p.replicas), sorted(p.isrs)) == (lay[p.id].leader, [0, 1, 2],
                                                                  [0, 1, 2]), p

    bootstrap = c.bootstrap()
    acked = {}
    # confluent-kafka, acks=all.
    reports, left = produce_confluent(bootstrap, topic, [b"ck-%d" % n for n in range(300)],
                                      lambda n: n % 3)
    got, errors = acked_of(reports)
    assert left == 0 and not errors and len(got) == 300, (left, errors[:3])
    acked.update(got)
    # kafka-python, acks='all'.
    kp = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, request_timeout_ms=30000)
    try:
        futures = [(b"kp-%d" % n, kp.send(topic, value=b"kp-%d" % n, partition=n % 3))
                   for n in range(150)]
        kp.flush(30)
        for v, f in futures:
            md_ = f.get(timeout=30)
            assert (md_.partition, md_.offset) not in acked
            acked[(md_.partition, md_.offset)] = v
    finally:
        kp.close(5)
    # kcat, acks=all, one request in flight (so its records keep their order): each partition's
    # high watermark moves by exactly its records.
    for part in range(3):
        before = high_watermark(lay[part].leader, topic, part)
        values = [f"kc-{part}-{n}" for n in range(40)]
        res = subprocess.run([KCAT, "-P", "-b", bootstrap, "-t", topic, "-p", str(part),
                              "-X", "acks=all", "-X", "max.in.flight=1", "-X", "message.timeout.ms=30000"],
                             input="\n".join(values) + "\n", capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        after = high_watermark(lay[part].leader, topic, part)
        assert after - before == len(values), (part, before, after)
        for n, v in enumerate(values):
            acked[(part, before + n)] = v.encode()
    assert len(acked) == 300 + 150 + 120

    consumed = consume_group(bootstrap, topic, unique("readers"), len(acked))
    assert {k: v for k, (_, v) in consumed.items()} == acked
    assert kcat_consume(f"{ip(via)}:9092", topic) == acked


@pytest.mark.parametrize("nodes", [3, 5])
def test_followers_die_and_the_isr_shrinks_refuses_and_rejoins_byte_identical(make_cluster, nodes):
    """A partition on three of `nodes` nodes. One follower SIGKILLed: acks=all still answered,
    the ISR shrinks to two. The second: the ISR is the leader alone, acks=all refused
    (NOT_ENOUGH_REPLICAS, nothing appended, nothing acknowledged), acks=1 appended. Both
    restarted: back in the ISR, the three logs byte-identical, every acknowledged record there
    once at its offset.

    With three nodes, every one a controller voter, the second kill also takes the controller's
    majority: the shrink to the leader alone cannot commit (Metadata keeps the last committed
    ISR), yet the leader refuses acks=all from the moment it proposes it. With five nodes the
    shrink commits and Metadata and `strom topic describe` show it."""
    c = make_cluster(nodes)
    controller = c.controller()
    # A one-partition topic whose followers do not include the active controller if the
    # placement allows (killing the controller works too; it only adds an election).
    for attempt in range(6):
        topic = unique(f"durable{attempt}")
        lay = new_topic(list(range(nodes)), attempt % nodes, topic, 1, config={"min.insync.replicas": "2"})
        leader, replicas = lay[0].leader, lay[0].replicas
        f1, f2 = [r for r in replicas if r != leader]
        if controller not in (f1, f2):
            break
    if controller in (f1, f2):  # the killed controller should be the second to go
        f1, f2 = (f2, f1) if f1 == controller else (f1, f2)
    print(f"\nleader {leader}, followers {f1} then {f2}, controller {controller}")
    bootstrap = c.bootstrap()
    acked = {}  # offset -> value, partition 0

    def produce(prefix, n):
        # Idempotent, so that a retried request cannot store a record twice.
        return produce_confluent(bootstrap, topic, [b"%s-%d" % (prefix, i) for i in range(n)],
                                 lambda _: 0, **{"enable.idempotence": True})

    reports, left = produce(b"before", 100)
    got, errors = acked_of(reports)
    assert left == 0 and not errors, errors[:3]
    acked.update({off: v for (_, off), v in got.items()})

    # First follower down: acks=all keeps working (the acks wait for the ISR shrink).
    killed_at = time.monotonic()
    c.kill(f1)
    reports, left = produce(b"one-down", 100)
    got, errors = acked_of(reports)
    assert left == 0 and not errors, errors[:3]
    acked.update({off: v for (_, off), v in got.items()})
    alive = [i for i in range(nodes) if i != f1]
    wait_layout(alive, topic, lambda lay: lay[0].leader == leader and lay[0].isr == sorted([leader, f2]),
                "the ISR without the first follower", timeout=20)
    print(f"ISR shrank to {sorted([leader, f2])} {time.monotonic() - killed_at:.2f} s after the "
          f"SIGKILL (replica.lag.time.max.ms {LAG_MS})")

    # Second follower down. A batch appended now reaches the leader only (the dead follower is
    # still in the ISR, caught up until this batch): once the leader drops it, below
    # min.insync.replicas, the waiting produce fails with NOT_ENOUGH_REPLICAS_AFTER_APPEND and
    # the batch stays in the log, unacknowledged (NOT_ENOUGH_REPLICAS if the shrink came first,
    # and then it must not be in the log).
    killed_at = time.monotonic()
    c.kill(f2)
    alive = [i for i in alive if i != f2]
    refused_values = []
    unacked_in_log = {}
    end = max(acked) + 1
    with kafka_raw.KafkaConn(ip(leader), 9092, timeout=30) as conn:
        res = produce_raw(conn, topic, 0, [b"after-append"], acks=-1, timeout_ms=15000)
        print(f"acks=all appended after the second SIGKILL: error {res['error_code']} after "
              f"{time.monotonic() - killed_at:.2f} s")
        assert res["error_code"] in (NOT_ENOUGH_REPLICAS_AFTER_APPEND, NOT_ENOUGH_REPLICAS), res
        if res["error_code"] == NOT_ENOUGH_REPLICAS_AFTER_APPEND:
            unacked_in_log[end] = b"after-append"
            end += 1
        else:
            refused_values.append(b"after-append")
    if nodes > 3:
        # The ISR is the leader alone.
        wait_layout(alive, topic, lambda lay: lay[0].leader == leader and lay[0].isr == [leader],
                    "the ISR down to the leader", timeout=20)
        print(f"ISR shrank to [{leader}] {time.monotonic() - killed_at:.2f} s after the "
              "second SIGKILL")
        # ... and stays so while the followers are down.
        stable_until = time.monotonic() + LAG_MS / 1000
        samples = 0
        while time.monotonic() < stable_until and samples < 100:
            samples += 1
            for n in alive:
                isr = layout(n, topic)[0].isr
                assert isr == [leader], f"ISR {isr} on node {n} while nodes {f1} and {f2} are down"
            time.sleep(0.05)
    with kafka_raw.KafkaConn(ip(leader), 9092, timeout=15) as conn:
        res = produce_raw(conn, topic, 0, [b"refused-raw"], acks=-1, timeout_ms=3000)
        assert res["error_code"] == NOT_ENOUGH_REPLICAS, res
        refused_values.append(b"refused-raw")
        res = produce_raw(conn, topic, 0, [b"acks-one"], acks=1)
        assert (res["error_code"], res["base_offset"]) == (0, end), (res, end)
        acked[end] = b"acks-one"
    # A client's acks=all produces in the window are all refused, none acknowledged.
    window = [b"window-%d" % i for i in range(20)]
    reports, left = produce_confluent(bootstrap, topic, window, lambda _: 0, flush_s=20,
                                      **{"message.timeout.ms": 3000})
    got, errors = acked_of(reports)
    assert left == 0 and not got and len(errors) == len(window), (left, got)
    refused_values += window
    # The command line shows the shrunken ISR (once the controller could commit it).
    res = run_cli("topic", "describe", topic, "-b", f"{ip(leader)}:9092", "--format", "json")
    assert res.returncode == 0, res.stderr
    (described,) = json.loads(res.stdout)["partitions"]
    isr_now = [leader] if nodes > 3 else sorted([leader, f2])
    assert (described["leader"], sorted(described["replicas"]), described["isr"]) == (
        leader, replicas, isr_now), described

    # Both back: the ISR is whole again, every replica holds the same bytes.
    restarted_at = time.monotonic()
    c.up()
    live_at = time.monotonic()
    wait_layout(list(range(nodes)), topic, fully_replicated(3), "the followers back in the ISR", timeout=30)
    print(f"ISR back to {replicas} {time.monotonic() - restarted_at:.2f} s after `up` "
          f"({time.monotonic() - live_at:.2f} s after the nodes were live)")
    end = max(list(acked) + list(unacked_in_log)) + 1
    wait_until(f"the high watermark at {end}",
               lambda: (lambda hw: (hw == end, hw))(high_watermark(leader, topic, 0)), timeout=20)

    def sizes():
        s = {}
        for n in replicas:
            s[n] = sum(f.stat().st_size for f in c.partition_dir(n, topic, 0).glob("*.log"))
        return s

    wait_until("every replica's log as long as the leader's",
               lambda: (lambda s: (len(set(s.values())) == 1, s))(sizes()), timeout=20)

    def log_bytes(n):
        files = sorted(c.partition_dir(n, topic, 0).glob("*.log"), key=lambda f: int(f.stem))
        return b"".join(f.read_bytes() for f in files)

    logs = {n: log_bytes(n) for n in replicas}
    for n in replicas:
        if logs[n] != logs[leader]:
            at = next((i for i, (a, b) in enumerate(zip(logs[n], logs[leader])) if a != b),
                      min(len(logs[n]), len(logs[leader])))
            pytest.fail(f"node {n}'s log differs from the leader {leader}'s at byte {at} "
                        f"({len(logs[n])} vs {len(logs[leader])} bytes)")
    assert len(logs[leader]) > 0
    assert [r.offset for r in kafka_raw.records_of(logs[leader])] == list(range(end))

    # Everything acknowledged is there once, at its offset, next to the batch appended before
    # the ISR fell below min.insync.replicas; nothing refused is.
    consumed = consume_group(bootstrap, topic, unique("after"), end)
    assert {off: v for (_, off), (_, v) in consumed.items()} == {**acked, **unacked_in_log}
    stored = [r.value for r in kafka_raw.records_of(logs[leader])]
    assert not set(refused_values) & set(stored), set(refused_values) & set(stored)


def test_idempotent_producer_across_a_follower_pause_writes_each_record_once(make_cluster):
    """Produce requests time out (REQUEST_TIMED_OUT after request.timeout.ms 300) while a paused
    follower is still in the ISR (it is fenced, and leaves the ISR, after
    `broker.session.timeout.ms`; a killed one would be fenced at once, its port refusing
    connections), so librdkafka sends again batches the leader already holds: each
    acknowledged value is stored once, at its acknowledged offset, per key in order."""
    c = make_cluster(3)
    controller = c.controller()
    topic = unique("exactly")
    lay = new_topic([0, 1, 2], 0, topic, 2, config={"min.insync.replicas": "2"})
    idle = [n for n in range(3) if n not in {p.leader for p in lay.values()}]
    assert idle, lay
    victim = next((n for n in idle if n != controller), idle[0])
    alive = [n for n in range(3) if n != victim]
    bootstrap = c.bootstrap()
    # The offsets topic (replication factor 3) is created on the first FindCoordinator, while
    # all three brokers are up: like Kafka's, it is not created with fewer brokers than that.
    def coordinator_known():
        with kafka_raw.KafkaConn(ip(0), 9092, timeout=10) as conn:
            found = conn.find_coordinator("exactly-warm-up")
        return found["error_code"] == 0, found
    wait_until("the offsets topic", coordinator_known, timeout=20)

    keys = [b"key-%d" % k for k in range(12)]
    total = 1500
    reports = []
    lines = _Lines()
    log = logging.getLogger(unique("rdkafka"))
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.addHandler(lines)
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                  "linger.ms": 2, "request.timeout.ms": 300, "message.timeout.ms": 60000,
                  "debug": "msg", "logger": log})
    killed = False
    for n in range(total):
        k = keys[n % len(keys)]
        p.produce(topic, key=k, value=b"%s:%d" % (k, n // len(keys)),
                  on_delivery=lambda e, m: reports.append((e, m.partition(), m.offset(), m.key(),
                                                           m.value())))
        p.poll(0)
        if n == total // 3:
            p.flush(30)
            os.kill(c.pid(victim), signal.SIGSTOP)  # no waiting: the producer keeps going
            killed = True
        if killed and n % 20 == 0:
            time.sleep(0.05)  # spread the rest over the fence (about 1 s) and after
    assert p.flush(60) == 0
    # librdkafka's "msg" debug lines tell which batches came back with an error and were sent
    # again ("Request timed out (actions Retry,MsgPossiblyPersisted)").
    retried = [line for line in lines.lines if "encountered error" in line and "Retry" in line]
    print(f"\n{len(retried)} batch(es) sent again after an error, e.g. {retried[:1]}")
    assert retried, "no produce request was retried: the test did not exercise the duplicates"
    errors = [e for e, *_ in reports if e is not None]
    assert not errors, errors[:3]
    acked = {(part, off): (k, v) for _, part, off, k, v in reports}
    assert len(acked) == total, "two deliveries reported the same offset"
    wait_layout(alive, topic, lambda lay: all(p.isr == alive for p in lay.values()),
                "the ISR without the paused follower", timeout=20)

    # A group whose coordinator is alive.
    group = None
    for g in range(40):
        with kafka_raw.KafkaConn(ip(alive[0]), 9092, timeout=10) as conn:
            found = conn.find_coordinator(f"exactly-readers-{g}")
        if found["error_code"] == 0 and found["node_id"] != victim:
            group = f"exactly-readers-{g}"
            break
    assert group, "no group with a live coordinator among 40"
    consumed = consume_group(bootstrap, topic, group, total)
    assert consumed == acked
    ends = sum(high_watermark(lay[part].leader, topic, part) for part in lay)
    assert ends == total, f"{ends} records stored for {total} produced"
    per_key = {}
    for (part, off) in sorted(consumed):
        k, v = consumed[(part, off)]
        per_key.setdefault(k, []).append(int(v.split(b":")[1]))
    for k in keys:
        assert per_key.get(k) == list(range(total // len(keys))), (k, per_key.get(k, [])[:20])


class _Lines(logging.Handler):
    """Collects the messages of a logger (librdkafka's, through confluent-kafka's `logger`)."""

    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def parse_tables(text):
    """The CLI's tables: blocks separated by blank lines, columns starting where their header
    does. Returns [[{header: cell}]]."""
    tables = []
    for block in text.strip().split("\n\n"):
        lines = [line for line in block.splitlines() if line.strip()]
        headers = lines[0].split()
        starts, pos = [], 0
        for h in headers:
            starts.append(lines[0].index(h, pos))
            pos = starts[-1] + len(h)
        rows = []
        for line in lines[1:]:
            cells = [line[s:e].strip() for s, e in zip(starts, starts[1:] + [None])]
            rows.append(dict(zip(headers, cells)))
        tables.append(rows)
    return tables


def test_topic_describe_shows_replicas_and_isr(make_cluster):
    """`strom topic describe`, as a table and as JSON: the leader, the three replicas and the
    ISR of every partition, the high watermarks, and min.insync.replicas as a topic config."""
    c = make_cluster(3)
    topic = unique("described")
    lay = new_topic([0, 1, 2], 1, topic, 3, config={"min.insync.replicas": "2"})
    reports, left = produce_confluent(c.bootstrap(), topic, [b"d-%d" % n for n in range(30)],
                                      lambda n: n % 3)
    assert left == 0 and not acked_of(reports)[1]

    res = run_cli("topic", "describe", topic, "-b", f"{ip(2)}:9092")
    assert res.returncode == 0, res.stderr
    summary, parts, configs = parse_tables(res.stdout)
    assert summary[0]["NAME"] == topic and summary[0]["PARTITIONS"] == "3", summary
    assert len(parts) == 3, res.stdout
    for row in parts:
        p = int(row["PARTITION"])
        assert int(row["LEADER"]) == lay[p].leader, (row, lay)
        assert sorted(json.loads(row["REPLICAS"])) == [0, 1, 2], row
        assert sorted(json.loads(row["ISR"])) == [0, 1, 2], row
        assert (row["LOG-START-OFFSET"], row["HIGH-WATERMARK"]) == ("0", "10"), row
    assert {r["CONFIG"]: (r["VALUE"], r["SOURCE"]) for r in configs}.get("min.insync.replicas") == (
        "2", "topic"), configs

    res = run_cli("topic", "describe", topic, "-b", f"{ip(0)}:9092", "--format", "json")
    assert res.returncode == 0, res.stderr
    for part in json.loads(res.stdout)["partitions"]:
        assert part["leader"] == lay[part["partition"]].leader, part
        assert sorted(part["replicas"]) == [0, 1, 2] and sorted(part["isr"]) == [0, 1, 2], part
        assert part["high_watermark"] == 10, part

    # `strom cluster info`: every broker holds a replica of each of the three partitions and
    # leads one; none is under-replicated. With a follower gone, its partitions are.
    def info(node):
        res = run_cli("cluster", "info", "-b", f"{ip(node)}:9092", "--format", "json")
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    got = info(0)
    assert got["under_replicated_partitions"] == 0 and got["offline_partitions"] == 0, got
    assert got["replicas"] == {"0": 3, "1": 3, "2": 3}, got
    assert sorted(got["leaders"].values()) == [1, 1, 1], got
    res = run_cli("cluster", "info", "-b", f"{ip(0)}:9092", "--no-api-versions")
    assert "UNDER-REPLICATED" in res.stdout and "LEADERS" in res.stdout, res.stdout
    leader = lay[0].leader
    follower = next(n for n in range(3) if n != leader)
    c.kill(follower)
    reports, left = produce_confluent(c.bootstrap(), topic, [b"more-%d" % n for n in range(6)],
                                      lambda n: 0)
    assert left == 0 and not acked_of(reports)[1]
    wait_until("partition 0 under-replicated in cluster info",
               lambda: (lambda g: (g["under_replicated_partitions"] >= 1, g))(info(leader)),
               timeout=20)


def test_a_client_posing_as_a_replica_changes_neither_isr_nor_high_watermark(make_cluster):
    """Fetch with replica_id set, on the client listener: answered with an error (or the
    connection closed), never taken as a follower's position -- neither to stall or lower the
    high watermark nor to bring a dead follower back into the ISR."""
    c = make_cluster(3)
    controller = c.controller()
    topic = unique("posing")
    lay = new_topic([0, 1, 2], 0, topic, 1, config={"min.insync.replicas": "2"})
    leader = lay[0].leader
    followers = [n for n in range(3) if n != leader]
    fake = next((n for n in followers if n != controller), followers[0])
    other = next(n for n in followers if n != fake)
    end = 0
    with kafka_raw.KafkaConn(ip(leader), 9092, timeout=15) as conn:
        res = produce_raw(conn, topic, 0, [b"a-%d" % i for i in range(20)], acks=-1)
        assert (res["error_code"], res["base_offset"]) == (0, 0), res
        end = 20

        # All alive: "follower" fetches at offset 0 (a follower that lost everything) interleaved
        # with acks=all produces, for longer than replica.lag.time.max.ms.
        answers = []
        deadline = time.monotonic() + LAG_MS / 1000 * 1.5
        rounds = 0
        while time.monotonic() < deadline and rounds < 200:
            rounds += 1
            for replica_id in (fake, other):
                answers.append(fetch_v12(ip(leader), topic, 0, 0, replica_id=replica_id))
            res = produce_raw(conn, topic, 0, [b"b-%d" % rounds], acks=-1, timeout_ms=5000)
            assert (res["error_code"], res["base_offset"]) == (0, end), (res, end)
            end += 1
            assert conn.latest_offset(topic, 0) == end
            time.sleep(0.1)
    assert all(refused(a, 0) for a in answers), [a for a in answers if not refused(a, 0)][:2]
    assert layout(leader, topic)[0].isr == [0, 1, 2], layout(leader, topic)
    print(f"\n{len(answers)} replica fetches on the client listener, all refused: {codes(answers)}")

    # A follower dead and out of the ISR: posing as it, caught up, does not bring it back.
    # (A record the dead follower never gets makes it lag; the acks=all produce is answered
    # once the ISR has shrunk to the two live nodes, still min.insync.replicas.)
    killed_at = time.monotonic()
    c.kill(fake)
    alive = [n for n in range(3) if n != fake]
    with kafka_raw.KafkaConn(ip(leader), 9092, timeout=30) as conn:
        res = produce_raw(conn, topic, 0, [b"c-0"], acks=-1, timeout_ms=20000)
        assert (res["error_code"], res["base_offset"]) == (0, end), (res, end)
        end += 1
    wait_layout(alive, topic, lambda lay: lay[0].isr == sorted([leader, other]),
                "the ISR without the paused follower", timeout=20)
    print(f"ISR shrank {time.monotonic() - killed_at:.2f} s after the SIGKILL")
    answers = []
    deadline = time.monotonic() + LAG_MS / 1000 * 2
    rounds = 0
    while time.monotonic() < deadline and rounds < 200:
        rounds += 1
        answers.append(fetch_v12(ip(leader), topic, 0, end, replica_id=fake))
        for n in alive:
            isr = layout(n, topic)[0].isr
            assert fake not in isr, f"the posing client brought node {fake} back: ISR {isr} on node {n}"
        time.sleep(0.05)
    assert all(refused(a, 0) for a in answers), [a for a in answers if not refused(a, 0)][:2]
    print(f"{len(answers)} fetches posing as the dead follower, all refused: {codes(answers)}")
    assert high_watermark(leader, topic, 0) == end


def test_a_fetch_sent_to_a_follower_names_the_leader(make_cluster):
    """Fetch v12 to a replica that does not lead the partition: NOT_LEADER_OR_FOLLOWER with
    the leader and its epoch (KIP-951 `current_leader`), so a client needs no Metadata round
    trip; sent to the leader, the records and no hint."""
    make_cluster(3)
    topic = unique("hint")
    lay = new_topic([0, 1, 2], 0, topic, 1)
    leader, epoch = lay[0].leader, 0  # a new partition: its first leader, epoch 0
    with kafka_raw.KafkaConn(ip(leader), 9092, timeout=15) as conn:
        assert produce_raw(conn, topic, 0, [b"x"], acks=-1)["error_code"] == 0
    follower = next(r for r in lay[0].replicas if r != leader)
    res = fetch_v12(ip(follower), topic, 0, 0)
    p = res["partitions"][0]
    assert (p["error_code"], p.get("current_leader")) == (6, (leader, epoch)), p
    res = fetch_v12(ip(leader), topic, 0, 0)
    p = res["partitions"][0]
    assert p["error_code"] == 0 and p["records"] and "current_leader" not in p, p


def test_committed_offsets_live_in_the_replicated_offsets_topic(make_cluster):
    """A group's offsets go to its partition of `__consumer_offsets` (replication factor 3),
    led by its coordinator: every replica holds the same bytes, a follower's death does not
    stop commits, and a coordinator that restarts serves them from its replica."""
    c = make_cluster(3)
    topic = unique("tracked")
    new_topic([0, 1, 2], 0, topic, 1)
    group = unique("readers")

    def coordinator():
        with kafka_raw.KafkaConn(ip(0), 9092, timeout=10) as conn:
            found = conn.find_coordinator(group)
        return found["error_code"] == 0, found

    coord = wait_until("the group's coordinator", coordinator, timeout=20)["node_id"]
    partition = kafka_raw.crc32c(group.encode()) % 50
    lay = wait_layout([0, 1, 2], "__consumer_offsets", fully_replicated(3), "the offsets topic")
    assert lay[partition].leader == coord, (partition, lay[partition], coord)
    followers = [r for r in lay[partition].replicas if r != coord]
    bootstrap = c.bootstrap()

    def commit(offset):
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                             "enable.auto.commit": False})
        try:
            consumer.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
        finally:
            consumer.close()

    def committed():
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
        try:
            return consumer.committed([TopicPartition(topic, 0)], timeout=20)[0].offset
        finally:
            consumer.close()

    commit(11)
    assert committed() == 11
    c.kill(followers[0])
    commit(22)  # acks=all on the offsets topic: waits out the ISR shrink, then succeeds
    assert committed() == 22

    def offsets_logs_equal():
        logs = {}
        for n in lay[partition].replicas:
            files = sorted(c.partition_dir(n, "__consumer_offsets", partition).glob("*.log"),
                           key=lambda f: int(f.stem))
            logs[n] = b"".join(f.read_bytes() for f in files)
        return len(set(logs.values())) == 1 and len(logs[coord]) > 0, {n: len(b) for n, b in logs.items()}

    c.up()
    wait_layout([0, 1, 2], "__consumer_offsets",
                lambda lay: len(lay[partition].isr) == 3, "the follower back in the offsets ISR")
    wait_until("byte-identical replicas of the group's offsets partition", offsets_logs_equal)
    # The coordinator restarts: it loads the group's offsets from its replica.
    c.kill(coord)
    c.up()
    assert committed() == 22


def test_strom_bench_routes_each_partition_to_its_leader(make_cluster, tmp_path):
    """strom-bench given the bootstrap list sends each partition's Produce, Fetch and ListOffsets
    to its leader: every record produced to three partitions led by three nodes is consumed,
    with no error."""
    make_cluster(3)
    topic = unique("bench")
    lay = new_topic([0, 1, 2], 0, topic, 3)
    assert len({p.leader for p in lay.values()}) > 1, lay
    report = tmp_path / "bench.json"
    bench = strom_bin().parent / "strom-bench"
    res = subprocess.run([str(bench), "run", "-b", ",".join(f"{ip(i)}:9092" for i in range(3)),
                          "--topic", topic, "--producers", "1", "--consumers", "1",
                          "--consume-from", "earliest", "--rate", "2000", "--acks", "-1",
                          "--message-bytes", "100", "--max-messages", "3000", "--warmup-s", "0",
                          "--duration-s", "10", "--quiet", "--json-out", str(report)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    r = json.loads(report.read_text())["result"]
    produced, consumed = r["produced"], r["consumed"]
    print(f"\nproduced {produced['messages']}, consumed {consumed['messages']}")
    assert (produced["messages"], produced["errors"]) == (3000, 0), produced
    assert (consumed["messages"], consumed["errors"]) == (3000, 0), consumed
    ends = sum(high_watermark(p.leader, topic, i) for i, p in lay.items())
    assert ends == 3000, ends


def test_kafkajs_round_trip_over_replicated_partitions(make_cluster):
    """kafkajs creates a topic with replication factor 3, produces (idempotent, acks=all) and
    reads every record back once with a consumer group."""
    make_cluster(3)
    topic = unique("kafkajs")
    node_dir = Path(__file__).parent / "node"
    env = dict(os.environ, STROM_BOOTSTRAP=",".join(f"{ip(i)}:9092" for i in range(3)),
               STROM_TOPIC=topic, STROM_COUNT="300", NODE_PATH=str(node_dir / "node_modules"))
    res = subprocess.run(["node", str(node_dir / "cluster_roundtrip.js")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert all(len(p["replicas"]) == 3 and len(p["isr"]) == 3 for p in out["partitions"]), out
    values = sorted(v for _, _, v in out["read"])
    assert values == sorted(f"v{i}" for i in range(300)), values[:10]
    for p in {p for p, _, _ in out["read"]}:
        offsets = sorted(o for q, o, _ in out["read"] if q == p)
        assert offsets == list(range(len(offsets))), (p, offsets[:10])
