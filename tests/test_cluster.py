"""Three real `strom` processes as a cluster on loopback (127.0.1.1-3), started the way a user
does: `scripts/cluster.sh up 3`. The controller quorum forms, every broker registers, clients
(confluent-kafka, kafka-python, kcat) see every broker and the active controller; a killed
controller is replaced and a killed broker is fenced, then rejoins from its controller log.

Topics live in the controller quorum: created on any node, their partitions are spread over the
brokers (one replica each until partitions replicate), clients produce to and consume from the
leaders, and a node that restarts keeps its partitions.
"""

import gc
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka.admin import KafkaAdminClient

import kafka_raw
from conftest import REPO, strom_bin

SCRIPT = REPO / "scripts" / "cluster.sh"
NODES = 3
KCAT = shutil.which("kcat") or shutil.which("kafkacat")


def ip(i: int) -> str:
    return f"127.0.1.{i + 1}"


class Cluster:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.dir = workdir / "strom-cluster"
        self.env = dict(os.environ, STROM_BIN=str(strom_bin()), NO_COLOR="1")

    def script(self, *args, timeout=60) -> str:
        res = subprocess.run(["bash", str(SCRIPT), *args], cwd=self.workdir, env=self.env,
                             capture_output=True, text=True, timeout=timeout)
        assert res.returncode == 0, f"cluster.sh {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}"
        return res.stdout

    def pid(self, i: int) -> int:
        return int((self.dir / f"node-{i}" / "pid").read_text())

    def log(self, i: int) -> str:
        return (self.dir / f"node-{i}" / "strom.log").read_text(errors="replace")

    def status(self, i: int):
        with urllib.request.urlopen(f"http://{ip(i)}:9644/v1/status", timeout=2) as r:
            return json.load(r)["cluster"]

    def views(self, nodes):
        out = {}
        for i in nodes:
            try:
                out[i] = self.status(i)
            except OSError:
                out[i] = None
        return out

    def wait_for(self, nodes, what, check, timeout=20.0):
        """Polls the nodes' /v1/status until `check(views)` holds."""
        deadline = time.monotonic() + timeout
        while True:
            views = self.views(nodes)
            if all(v is not None for v in views.values()) and check(views):
                return views
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}: {json.dumps(views, indent=1)[:3000]}")
            time.sleep(0.05)

    def kill(self, i: int):
        pid = self.pid(i)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    def teardown(self):
        # Clients the test left unreferenced go now: a librdkafka client that lives on keeps
        # reconnecting to these addresses and would auto-create its topics in the next test's
        # cluster.
        gc.collect()
        subprocess.run(["bash", str(SCRIPT), "down"], cwd=self.workdir, env=self.env,
                       capture_output=True, timeout=60)
        for i in range(NODES):
            try:
                os.kill(self.pid(i), signal.SIGKILL)
            except (OSError, ValueError):
                pass


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.teardown()


def live(view):
    return sorted(b["node_id"] for b in view["brokers"] if not b["fenced"])


def test_up_forms_a_cluster_every_client_sees(cluster):
    out = cluster.script("up", str(NODES))
    bootstrap = ",".join(f"{ip(i)}:9092" for i in range(NODES))
    assert f"bootstrap: {bootstrap}" in out, out
    views = cluster.wait_for(range(NODES), "one controller and three live brokers",
                             lambda v: len({x["controller_id"] for x in v.values()}) == 1
                             and all(live(x) == [0, 1, 2] for x in v.values()))
    controller = views[0]["controller_id"]
    assert controller in (0, 1, 2)

    # confluent-kafka (librdkafka 2.x) through any node.
    for i in range(NODES):
        md = AdminClient({"bootstrap.servers": f"{ip(i)}:9092"}).list_topics(timeout=10)
        assert sorted(md.brokers) == [0, 1, 2]
        assert {b.host for b in md.brokers.values()} == {ip(n) for n in range(NODES)}
        assert md.controller_id == controller
    # kafka-python: DescribeCluster.
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    try:
        described = admin.describe_cluster()
        assert sorted(b["broker_id"] for b in described["brokers"]) == [0, 1, 2]
        assert described["controller_id"] == controller
    finally:
        admin.close()
    # Debian's kcat (librdkafka 2.0).
    if KCAT:
        res = subprocess.run([KCAT, "-L", "-b", f"{ip(2)}:9092"], capture_output=True, text=True,
                             timeout=30)
        assert " 3 brokers:" in res.stdout, res.stdout + res.stderr
        assert f"broker {controller} at {ip(controller)}:9092 (controller)" in res.stdout

    # /metrics of the active controller.
    with urllib.request.urlopen(f"http://{ip(controller)}:9644/metrics", timeout=5) as r:
        text = r.read().decode()
    assert "strom_cluster_controller_active 1" in text, text[-2000:]
    assert 'strom_cluster_brokers{state="live"} 3' in text, text[-2000:]

    status = cluster.script("status")
    assert status.count("running") == NODES, status
    assert cluster.script("down").startswith("cluster down: 3 node(s) stopped")


def test_a_killed_controller_is_replaced_and_rejoins_from_its_log(cluster):
    cluster.script("up", str(NODES))
    views = cluster.wait_for(range(NODES), "a controller",
                             lambda v: all(x["controller_id"] >= 0 for x in v.values()))
    old = views[0]["controller_id"]
    others = [i for i in range(NODES) if i != old]
    killed_at = time.monotonic()
    cluster.kill(old)
    views = cluster.wait_for(others, "a new controller and the old one fenced",
                             lambda v: all(x["controller_id"] not in (-1, old) for x in v.values())
                             and len({x["controller_id"] for x in v.values()}) == 1
                             and all(live(x) == others for x in v.values()))
    print(f"new controller {views[others[0]]['controller_id']} after "
          f"{time.monotonic() - killed_at:.2f} s (broker.session.timeout.ms 1000)")
    # Clients no longer get the dead broker.
    md = AdminClient({"bootstrap.servers": f"{ip(others[0])}:9092"}).list_topics(timeout=10)
    assert sorted(md.brokers) == others

    # `up` again starts the missing node; it replays its controller log and is unfenced.
    cluster.script("up", str(NODES))
    cluster.wait_for(range(NODES), "the restarted node back",
                     lambda v: all(live(x) == [0, 1, 2] for x in v.values())
                     and len({x["applied_index"] for x in v.values()}) == 1)
    replayed = re.findall(r"controller node \d+ starting: (\d+) record\(s\) replayed", cluster.log(old))
    assert len(replayed) == 2 and int(replayed[1]) > 0, replayed


def test_a_killed_follower_is_fenced_and_the_controller_stays(cluster):
    cluster.script("up", str(NODES))
    views = cluster.wait_for(range(NODES), "a controller",
                             lambda v: all(x["controller_id"] >= 0 for x in v.values()))
    controller = views[0]["controller_id"]
    follower = next(i for i in range(NODES) if i != controller)
    cluster.kill(follower)
    rest = [i for i in range(NODES) if i != follower]
    views = cluster.wait_for(rest, "the follower fenced",
                             lambda v: all(live(x) == rest for x in v.values()))
    assert all(x["controller_id"] == controller for x in views.values())
    # The whole cluster stopped and started again keeps its registrations (from the log).
    cluster.script("down")
    cluster.script("up", str(NODES))
    cluster.wait_for(range(NODES), "all back", lambda v: all(live(x) == [0, 1, 2] for x in v.values()))


def leaders(bootstrap, topic):
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10)
    return {p.id: (p.leader, list(p.replicas), list(p.isrs))
            for p in md.topics[topic].partitions.values()}


def test_topics_are_spread_over_the_nodes_and_every_record_comes_back(cluster):
    cluster.script("up", str(NODES))
    bootstrap = ",".join(f"{ip(i)}:9092" for i in range(NODES))
    admin = AdminClient({"bootstrap.servers": f"{ip(1)}:9092"})
    admin.create_topics([NewTopic("spread", 6, 1)])["spread"].result(timeout=20)
    # More replicas than brokers is refused, saying so.
    fut = admin.create_topics([NewTopic("replicated", 1, 4)])["replicated"]
    with pytest.raises(Exception) as err:
        fut.result(timeout=20)
    assert "INVALID_REPLICATION_FACTOR" in str(err.value) and "3 available brokers" in str(err.value), err.value
    # Every node answers with the same layout: each broker leads two of the six partitions.
    layouts = [leaders(f"{ip(i)}:9092", "spread") for i in range(NODES)]
    assert layouts[0] == layouts[1] == layouts[2], layouts
    per_node = {}
    for leader, replicas, isr in layouts[0].values():
        assert replicas == [leader] and isr == [leader]
        per_node[leader] = per_node.get(leader, 0) + 1
    assert per_node == {0: 2, 1: 2, 2: 2}, layouts[0]

    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    acked = []
    for n in range(300):
        p.produce("spread", key=b"k%d" % (n % 17), value=b"v%d" % n,
                  on_delivery=lambda e, m: acked.append((e, m.partition(), m.offset(), m.value())))
    assert p.flush(30) == 0
    assert all(e is None for e, *_ in acked), [e for e, *_ in acked if e][:3]
    assert {part for _, part, _, _ in acked} == set(range(6))

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "cluster-readers",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe(["spread"])
    got = {}
    deadline = time.monotonic() + 60
    while len(got) < 300 and time.monotonic() < deadline:
        m = c.poll(1.0)
        if m is not None and m.error() is None:
            got[(m.partition(), m.offset())] = m.value()
    c.commit(asynchronous=False)
    c.close()
    assert got == {(part, off): v for _, part, off, v in acked}

    # Debian's kcat reads a partition from its leader, whichever broker it bootstraps from.
    if KCAT:
        res = subprocess.run([KCAT, "-C", "-b", f"{ip(0)}:9092", "-t", "spread", "-p", "1",
                              "-o", "beginning", "-e", "-q", "-f", "%s\n"],
                             capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stderr
        assert sorted(res.stdout.split()) == sorted(
            v.decode() for _, part, _, v in acked if part == 1)

    # The command-line tools follow the leaders too.
    res = subprocess.run([str(strom_bin()), "topic", "describe", "spread", "-b", f"{ip(2)}:9092",
                          "--format", "json"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    described = json.loads(res.stdout)
    for part in described["partitions"]:
        leader, replicas, isr = layouts[0][part["partition"]]
        assert (part["leader"], part["replicas"], part["isr"]) == (leader, replicas, isr), part
    assert sum(part["high_watermark"] for part in described["partitions"]) == 300, described
    res = subprocess.run([str(strom_bin()), "cluster", "info", "-b", f"{ip(0)}:9092",
                          "--format", "json"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert sorted(b["node_id"] for b in info["brokers"]) == [0, 1, 2], info
    assert info["controller"] in (0, 1, 2), info

    # A broker asked for a partition it does not lead says so (NOT_LEADER_OR_FOLLOWER, 6).
    led, (leader, _, _) = next(iter(layouts[0].items()))
    other = next(i for i in range(NODES) if i != leader)
    with kafka_raw.KafkaConn(ip(other), 9092, timeout=15) as conn:
        res = conn.produce("spread", led, kafka_raw.simple_batch([b"x"]), acks=-1)
        assert res["error_code"] == 6, res
        # DeleteRecords too: only the leader moves the log start.
        assert conn.delete_records({("spread", led): 1})[("spread", led)]["error_code"] == 6


def test_partitions_stay_with_their_node_across_restarts_and_deletion(cluster):
    cluster.script("up", str(NODES))
    bootstrap = ",".join(f"{ip(i)}:9092" for i in range(NODES))
    # Auto-creation through Metadata works too (num.partitions = 1).
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    p.produce("auto", b"first")
    assert p.flush(30) == 0
    (leader, _, _), = leaders(f"{ip(0)}:9092", "auto").values()
    cluster.kill(leader)
    rest = [i for i in range(NODES) if i != leader]
    cluster.wait_for(rest, "the leader fenced", lambda v: all(live(x) == rest for x in v.values()))
    md = AdminClient({"bootstrap.servers": f"{ip(rest[0])}:9092"}).list_topics("auto", timeout=10)
    part = md.topics["auto"].partitions[0]
    assert part.leader == -1 and part.error is not None, part
    cluster.script("up", str(NODES))
    cluster.wait_for(range(NODES), "all back", lambda v: all(live(x) == [0, 1, 2] for x in v.values()))
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "auto-readers",
                  "auto.offset.reset": "earliest"})
    c.assign([TopicPartition("auto", 0, 0)])
    m = None
    deadline = time.monotonic() + 30
    while m is None and time.monotonic() < deadline:
        m = c.poll(1.0)
        if m is not None and m.error() is not None:
            m = None
    c.close()
    assert m is not None and m.value() == b"first"

    admin = AdminClient({"bootstrap.servers": f"{ip(2)}:9092"})
    admin.delete_topics(["auto"])["auto"].result(timeout=20)
    directory = cluster.dir / f"node-{leader}" / "data" / "auto-0"
    deadline = time.monotonic() + 20
    while directory.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not directory.exists()
    for i in range(NODES):
        assert "auto" not in AdminClient({"bootstrap.servers": f"{ip(i)}:9092"}).list_topics(
            timeout=10).topics
    # Created again under the same name: a new topic, with none of the old records.
    admin.create_topics([NewTopic("auto", 1, 1)])["auto"].result(timeout=20)
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    p.produce("auto", b"second")
    assert p.flush(30) == 0
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "auto-readers-2",
                  "auto.offset.reset": "earliest"})
    c.assign([TopicPartition("auto", 0, 0)])
    values = []
    deadline = time.monotonic() + 30
    while not values and time.monotonic() < deadline:
        m = c.poll(1.0)
        if m is not None and m.error() is None:
            values.append((m.offset(), m.value()))
    c.close()
    assert values == [(0, b"second")], values


def test_producer_ids_are_unique_across_the_cluster(cluster):
    """InitProducerId on any node takes ids from blocks the controller quorum hands out, so no
    two nodes ever give the same id, also after a node restarts."""
    cluster.script("up", str(NODES))
    cluster.wait_for(range(NODES), "a controller",
                     lambda v: all(x["controller_id"] >= 0 for x in v.values()))

    def ids_from(i, n=3):
        with kafka_raw.KafkaConn(ip(i), 9092, timeout=15) as c:
            return [c.new_producer()[0] for _ in range(n)]

    seen = []
    for i in range(NODES):
        seen += ids_from(i)
    cluster.kill(1)
    cluster.script("up", str(NODES))
    seen += ids_from(1)
    assert len(set(seen)) == len(seen), seen
    # Blocks of 1000: each node's ids come from its own block.
    assert len({pid // 1000 for pid in seen}) == NODES + 1, seen


def test_every_node_names_the_same_group_coordinator(cluster):
    """A group's coordinator is the leader of its partition of the replicated offsets topic,
    created on the first FindCoordinator (COORDINATOR_NOT_AVAILABLE, 15, until then): every node
    names the same one, the others refuse the group's requests."""
    cluster.script("up", str(NODES))
    cluster.wait_for(range(NODES), "three live brokers",
                     lambda v: all(live(x) == [0, 1, 2] for x in v.values()))

    def find(i, group):
        with kafka_raw.KafkaConn(ip(i), 9092, timeout=15) as c:
            return c.find_coordinator(group)

    first = find(0, "orders-readers")
    assert first["error_code"] in (0, 15), first
    deadline = time.monotonic() + 20
    while find(0, "orders-readers")["error_code"] != 0:
        assert time.monotonic() < deadline, "the offsets topic was not created"
        time.sleep(0.05)
    md = AdminClient({"bootstrap.servers": f"{ip(0)}:9092"}).list_topics(timeout=10)
    offsets = md.topics["__consumer_offsets"].partitions
    assert len(offsets) == 50 and all(len(p.replicas) == 3 for p in offsets.values()), offsets
    leaders = {p.id: p.leader for p in offsets.values()}
    for group in ("orders-readers", "audit", "g-17"):
        answers = [find(i, group) for i in range(NODES)]
        assert all(a["error_code"] == 0 for a in answers), answers
        nodes = {a["node_id"] for a in answers}
        assert len(nodes) == 1, answers
        coordinator = nodes.pop()
        assert answers[0]["host"] == ip(coordinator)
        assert coordinator in leaders.values()
        # Another broker refuses the group's requests, sending the client back to
        # FindCoordinator (NOT_COORDINATOR, 16); the coordinator serves them once it has loaded
        # the partition (COORDINATOR_LOAD_IN_PROGRESS, 14, until then).
        for i in range(NODES):
            deadline = time.monotonic() + 10
            while True:
                with kafka_raw.KafkaConn(ip(i), 9092, timeout=15) as c:
                    joined = c.join_group(group, protocols=[("range", b"")])
                if joined["error_code"] != 14 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            if i == coordinator:
                assert joined["error_code"] in (0, 79), joined  # 79: MEMBER_ID_REQUIRED
            else:
                assert joined["error_code"] == 16, joined


def run_strom(tmp_path, *args, timeout=30):
    return subprocess.run([str(strom_bin()), *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, NO_COLOR="1"))


def test_cluster_settings_are_checked_at_startup(tmp_path):
    voters = "0@127.0.1.1:9093,1@127.0.1.2:9093,2@127.0.1.3:9093"
    listeners = "PLAINTEXT://127.0.1.1:9092,CONTROLLER://127.0.1.1:9093,REPLICATION://127.0.1.1:9094"
    res = run_strom(tmp_path, "-o", "node.id=7", "-o", f"controller.quorum.voters={voters}",
                    "-o", f"listeners={listeners}")
    assert res.returncode != 0 and "node.id" in res.stderr, res.stderr
    res = run_strom(tmp_path, "-o", "node.id=0", "-o", f"controller.quorum.voters={voters}",
                    "-o", "listeners=PLAINTEXT://127.0.1.1:9092")
    assert res.returncode != 0 and "CONTROLLER" in res.stderr, res.stderr
    res = run_strom(tmp_path, "-o", "unclean.leader.election.enable=true")
    assert res.returncode != 0 and "unclean" in res.stderr, res.stderr


def test_cluster_mode_refuses_a_single_node_data_directory(broker_factory, tmp_path):
    single = broker_factory()
    admin = AdminClient({"bootstrap.servers": single.bootstrap})
    admin.create_topics([NewTopic("kept", 1, 1)])["kept"].result(timeout=20)
    single.stop()
    voters = "0@127.0.1.1:9093"
    res = run_strom(tmp_path, "--data-dir", str(single.data_dir), "-o", "node.id=0",
                    "-o", f"controller.quorum.voters={voters}",
                    "-o", "listeners=PLAINTEXT://127.0.1.1:9092,CONTROLLER://127.0.1.1:9093,"
                          "REPLICATION://127.0.1.1:9094",
                    "-o", "admin.listeners=127.0.1.1:9644")
    assert res.returncode != 0, res.stderr
    assert "1 topic(s) of a single node" in res.stderr, res.stderr
    # The data is untouched: the single node still serves it.
    single.start()
    md = AdminClient({"bootstrap.servers": single.bootstrap}).list_topics(timeout=10)
    assert "kept" in md.topics


def test_a_cluster_data_directory_is_refused_by_a_single_node(cluster, tmp_path):
    cluster.script("up", "1")
    cluster.script("down")
    data = cluster.dir / "node-0" / "data"
    res = run_strom(tmp_path, "--data-dir", str(data), "--listen", "127.0.1.1:9092",
                    "-o", "admin.listeners=127.0.1.1:9644")
    assert res.returncode != 0, res.stderr
    assert "data directory of a cluster node" in res.stderr, res.stderr


def test_readme_cluster_block():
    """The README's cluster commands exactly as a user types them, from the checkout: `up 3`
    prints the bootstrap string, a topic with three replicas is created and described with its
    replicas and ISR, `status` shows three running nodes, `down` stops them."""
    from test_readme import block, sh_commands

    commands = sh_commands(block("A local cluster (in development)", "sh"))
    cli = ["target/release/strom", "topic", "-b", "127.0.1.1:9092"]
    assert [c.split("#")[0].split() for c in commands] == [
        ["scripts/cluster.sh", "up", "3"], cli + ["create", "orders", "-p", "3", "-r", "3"],
        cli + ["describe", "orders"], ["scripts/cluster.sh", "status"],
        ["scripts/cluster.sh", "down"]], commands
    env = dict(os.environ, NO_COLOR="1")
    workdir = REPO / "strom-cluster"
    try:
        outputs = []
        for cmd in commands:
            res = subprocess.run(["bash", "-c", cmd], cwd=REPO, env=env, capture_output=True,
                                 text=True, timeout=900)
            assert res.returncode == 0, f"{cmd}:\n{res.stdout}\n{res.stderr}"
            outputs.append(res.stdout)
        assert "bootstrap: 127.0.1.1:9092,127.0.1.2:9092,127.0.1.3:9092" in outputs[0], outputs[0]
        assert "orders" in outputs[1] and "created" in outputs[1], outputs[1]
        rows = [line.split() for line in outputs[2].splitlines() if line[:1].isdigit()]
        partitions = [r for r in rows if len(r) >= 9]  # PARTITION LEADER EPOCH [a, b, c] [a, b, c] ...
        assert len(partitions) == 3, outputs[2]
        for r in partitions:
            replicas = " ".join(r[3:6])
            assert replicas.count(",") == 2 and " ".join(r[6:9]) == replicas, outputs[2]
        assert outputs[3].count(": running, controller=") == 3, outputs[3]
        assert outputs[4].startswith("cluster down: 3 node(s) stopped"), outputs[4]
    finally:
        subprocess.run(["bash", str(SCRIPT), "down"], cwd=REPO, env=env, capture_output=True,
                       timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)


def produce_v10(host, topic, partition, batch):
    """Produce v10 (flexible, KIP-951) of one batch with acks=all; returns the partition's
    (error, current_leader tag or None) and the response's node endpoints tag."""
    w = kafka_raw.VWriter(True)
    w.str_(None).int16(-1).int32(10000)
    w.arr([topic], lambda w, t: (w.str_(t), w.arr([partition], lambda w, p: (
        w.int32(p).blob(batch).tags())), w.tags()))
    w.tags()
    with kafka_raw.KafkaConn(host, 9092, timeout=15) as c:
        corr = c.send(0, 10, w.done(), header_version=2)
        got, r = c.recv(1)
        assert got == corr
    out = {}

    def tags(r):
        found = {}
        for _ in range(r.uvarint()):
            tag = r.uvarint()
            size = r.uvarint()
            found[tag] = kafka_raw.Reader(bytes(r._take(size)))
        return found

    def part(r):
        p, err = r.int32(), r.int16()
        r.int64(), r.int64(), r.int64()  # base offset, append time, log start
        r.compact_array(lambda r: (r.int32(), r.compact_string(), r.tagged_fields()))
        r.compact_string()
        leader = tags(r).get(0)
        out[p] = (err, None if leader is None else (leader.int32(), leader.int32()))

    r.compact_array(lambda r: (r.compact_string(), r.compact_array(part), r.tagged_fields()))
    r.int32()  # throttle
    endpoints = tags(r).get(0)
    nodes = []
    if endpoints is not None:
        nodes = endpoints.compact_array(lambda e: (e.int32(), e.compact_string(), e.int32(),
                                                   e.compact_string(), e.tagged_fields())[:3])
    return out[partition], nodes


def test_kip951_leader_hints_in_produce_v10(cluster):
    """A Produce v10 sent to a broker that does not lead the partition answers
    NOT_LEADER_OR_FOLLOWER with the leader, its epoch and its endpoint, so the client needs no
    metadata round trip; the leader itself appends."""
    cluster.script("up", str(NODES))
    admin = AdminClient({"bootstrap.servers": f"{ip(0)}:9092"})
    admin.create_topics([NewTopic("hinted", 3, 1)])["hinted"].result(timeout=20)
    layout = leaders(f"{ip(0)}:9092", "hinted")
    partition, (leader, _, _) = next(iter(layout.items()))
    other = next(i for i in range(NODES) if i != leader)
    batch = kafka_raw.simple_batch([b"x"])
    (err, hint), nodes = produce_v10(ip(other), "hinted", partition, batch)
    assert err == 6 and hint == (leader, 0), (err, hint)
    assert nodes == [(leader, ip(leader), 9092)], nodes
    (err, hint), nodes = produce_v10(ip(leader), "hinted", partition, batch)
    assert (err, hint, nodes) == (0, None, []), (err, hint, nodes)
