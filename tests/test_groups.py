"""Consumer groups (classic protocol) with real clients: confluent-kafka members, rebalances on
session timeout and LeaveGroup, committed offsets with metadata across restarts and crashes,
kafka-python and kcat group consumers, AdminClient group listing/description/offsets/deletion,
OffsetDelete, and offsets of deleted topics."""

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import (Consumer, ConsumerGroupState, ConsumerGroupTopicPartitions, KafkaError,
                             KafkaException, Producer, TopicPartition)
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import _die_with_parent, unique

HELPERS = Path(__file__).resolve().parent / "group_helpers"
KCAT = shutil.which("kcat") or shutil.which("kafkacat")

# Fast group formation and short session timeouts allowed.
GROUP_SETTINGS = {"group.initial.rebalance.delay.ms": "0", "group.min.session.timeout.ms": "1000"}


@pytest.fixture
def gbroker(broker_factory):
    return broker_factory(settings=GROUP_SETTINGS)


# -- clients --

def admin(broker):
    return AdminClient({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4"})


def producer(broker, **extra):
    conf = {"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 5,
            "enable.idempotence": False, "broker.address.family": "v4", "message.timeout.ms": 30000}
    conf.update(extra)
    return Producer(conf)


def consumer_conf(broker, group, **extra):
    conf = {"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4", "group.id": group,
            "enable.auto.commit": False, "auto.offset.reset": "earliest", "enable.partition.eof": False,
            "session.timeout.ms": 6000, "heartbeat.interval.ms": 100, "log_level": 3}
    conf.update(extra)
    return conf


def create_topic(broker, topic, partitions=1):
    a = admin(broker)
    for f in a.create_topics([NewTopic(topic, partitions, 1)]).values():
        f.result(timeout=30)
    wait_for(lambda: topic in a.list_topics(topic, timeout=10).topics
             and len(a.list_topics(topic, timeout=10).topics[topic].partitions) == partitions,
             what=f"topic {topic} in metadata")


def produce(broker, topic, items, timeout=30):
    """items: (partition or None, key, value). Returns [(partition, offset, key, value)]."""
    p = producer(broker)
    reports, errors = [], []

    def cb(err, msg):
        if err is not None:
            errors.append(err)
        reports.append((msg.partition(), msg.offset(), msg.key(), msg.value()))

    for part, key, value in items:
        kw = {} if part is None else {"partition": part}
        while True:
            try:
                p.produce(topic, value=value, key=key, on_delivery=cb, **kw)
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    assert p.flush(timeout) == 0, f"not all messages delivered within {timeout}s"
    assert not errors, f"delivery errors: {errors[:5]}"
    assert len(reports) == len(items)
    return reports


def wait_for(pred, timeout=15, what="condition", interval=0.1):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Member:
    """An in-process confluent-kafka group member. Tests poll members round-robin, so that each
    one serves its rebalance callbacks while the others keep heartbeating in librdkafka's
    threads."""

    def __init__(self, broker, group, topics, name, **extra):
        self.name = name
        self.c = Consumer(consumer_conf(broker, group, **{"client.id": name, **extra}))
        self.msgs = []
        self.errors = []
        self.revoked = []  # partitions taken away by each rebalance (the client assigns by itself)
        self.closed = False
        self.c.subscribe(list(topics), on_revoke=self._on_revoke)

    def _on_revoke(self, _consumer, parts):
        self.revoked.append(sorted((tp.topic, tp.partition) for tp in parts))

    def poll(self, timeout=0.05):
        m = self.c.poll(timeout)
        if m is None:
            return
        if m.error():
            self.errors.append(m.error())
        else:
            self.msgs.append(m)

    def parts(self, topic):
        return sorted(tp.partition for tp in self.c.assignment() if tp.topic == topic)

    def close(self):
        if not self.closed:
            self.closed = True
            self.c.close()

    def __repr__(self):
        try:
            assigned = [(tp.topic, tp.partition) for tp in self.c.assignment()]
        except RuntimeError:
            assigned = "closed"
        return f"<{self.name} assignment={assigned} msgs={len(self.msgs)} " \
               f"errors={[str(e) for e in self.errors[-3:]]}>"


def poll_until(members, pred, timeout=30, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        for m in members:
            m.poll(0.05)
        if pred():
            return
        if time.monotonic() > deadline:
            what = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; members: {members}")


def poll_for(members, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for m in members:
            m.poll(0.05)


def is_partitioning(assignments, n):
    """True if the assignments are non-empty, disjoint and cover partitions 0..n-1."""
    flat = [p for a in assignments for p in a]
    return all(assignments) and len(flat) == len(set(flat)) and sorted(flat) == list(range(n))


def close_all(members):
    for m in members:
        try:
            m.close()
        except Exception:
            pass


class HelperConsumer:
    """group_helpers/consumer.py in a subprocess; its assignment is read from its JSON lines."""

    def __init__(self, broker, group, topic, client_id="helper", session_timeout_ms=6000, heartbeat_ms=100,
                 max_seconds=50):
        cmd = [sys.executable, str(HELPERS / "consumer.py"), "--bootstrap", broker.bootstrap, "--group", group,
               "--topic", topic, "--client-id", client_id, "--session-timeout-ms", str(session_timeout_ms),
               "--heartbeat-ms", str(heartbeat_ms), "--max-seconds", str(max_seconds)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, preexec_fn=_die_with_parent)
        self.lines = []
        self.partitions = None
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            with self.lock:
                self.lines.append(line.rstrip("\n"))
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if isinstance(ev, dict) and ev.get("event") == "assigned":
                    self.partitions = ev["partitions"]

    def parts(self):
        with self.lock:
            return list(self.partitions or [])

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def __repr__(self):
        with self.lock:
            return f"<helper pid={self.proc.pid} rc={self.proc.poll()} assignment={self.partitions} " \
                   f"output={self.lines[-10:]}>"


def group_offsets(a, group, partitions=None):
    """list_consumer_group_offsets: {(topic, partition): (offset, metadata)}; partitions=None
    asks for all of the group's offsets."""
    req = ConsumerGroupTopicPartitions(group, partitions)
    res = a.list_consumer_group_offsets([req], request_timeout=15)[group].result(timeout=30)
    assert res.group_id == group
    out = {}
    for tp in res.topic_partitions or []:
        assert tp.error is None, f"{tp}: {tp.error}"
        out[(tp.topic, tp.partition)] = (tp.offset, tp.metadata or "")
    return out


def list_groups(a, states=None):
    kw = {"request_timeout": 15}
    if states is not None:
        kw["states"] = states
    res = a.list_consumer_groups(**kw).result(timeout=30)
    assert not res.errors, res.errors
    return {g.group_id: g for g in res.valid}


def describe(a, group):
    return a.describe_consumer_groups([group], request_timeout=15)[group].result(timeout=30)


def group_state(a, group):
    return describe(a, group).state


def commit_sync(c, offsets):
    """Commit [TopicPartition] and return the per-partition results; raises on errors."""
    res = c.commit(offsets=offsets, asynchronous=False)
    errs = [(tp.topic, tp.partition, tp.error) for tp in res or [] if tp.error]
    assert not errs, f"commit errors: {errs}"
    return res


# -- tests --

@pytest.mark.timeout(90)
def test_three_members_split_partitions_and_consume_each_record_once(gbroker):
    topic, group = unique("grp-split"), unique("g")
    create_topic(gbroker, topic, 6)
    members = [Member(gbroker, group, [topic], f"split-{i}") for i in range(3)]
    try:
        poll_until(members, lambda: is_partitioning([m.parts(topic) for m in members], 6), timeout=30,
                   what="3 members sharing 6 partitions")
        assigned = [m.parts(topic) for m in members]
        # The range assignor (librdkafka's first choice) gives 2 partitions to each of 3 members.
        assert sorted(len(a) for a in assigned) == [2, 2, 2], assigned

        n = 600
        reports = produce(gbroker, topic, [(None, f"key-{i}".encode(), f"value-{i}".encode()) for i in range(n)])
        sent = {(p, off): (k, v) for p, off, k, v in reports}
        assert len(sent) == n
        assert len({p for p, _ in sent}) == 6, "600 keys should reach all 6 partitions"

        poll_until(members, lambda: sum(len(m.msgs) for m in members) >= n, timeout=30,
                   what=f"{n} records across the group")
        poll_for(members, 1.0)  # anything more would be a duplicate

        got = [(m.partition(), m.offset()) for mem in members for m in mem.msgs]
        dups = {x for x in got if got.count(x) > 1}
        assert not dups, f"records consumed more than once: {sorted(dups)[:10]}"
        assert set(got) == set(sent), f"missing: {sorted(set(sent) - set(got))[:10]}"
        for mem, parts in zip(members, assigned):
            assert {m.partition() for m in mem.msgs} <= set(parts), f"{mem.name} read outside its assignment"
            for m in mem.msgs:
                assert (m.key(), m.value()) == sent[(m.partition(), m.offset())]
        # No rebalance happened while consuming.
        assert [m.parts(topic) for m in members] == assigned

        d = describe(admin(gbroker), group)
        assert d.state == ConsumerGroupState.STABLE
        assert sorted(mem.client_id for mem in d.members) == ["split-0", "split-1", "split-2"]
    finally:
        close_all(members)


@pytest.mark.timeout(60)
def test_killed_member_partitions_move_after_session_timeout(gbroker):
    topic, group = unique("grp-kill"), unique("g")
    create_topic(gbroker, topic, 6)
    session_ms = 3000
    members = [Member(gbroker, group, [topic], f"kill-{i}") for i in range(2)]
    helper = HelperConsumer(gbroker, group, topic, client_id="doomed", session_timeout_ms=session_ms,
                            heartbeat_ms=300)
    try:
        poll_until(members, lambda: is_partitioning([m.parts(topic) for m in members] + [helper.parts()], 6),
                   timeout=30, what=lambda: f"2 members and the helper sharing 6 partitions; helper {helper}")
        orphaned = helper.parts()
        helper.kill()
        t0 = time.monotonic()
        poll_until(members, lambda: is_partitioning([m.parts(topic) for m in members], 6),
                   timeout=session_ms / 1000 + 10, what="the survivors to take over all 6 partitions")
        elapsed = time.monotonic() - t0
        # A classic-protocol member stays in the group until its session expires (the broker does
        # not drop members on disconnect), and must be dropped soon after.
        assert elapsed >= 1.0, f"partitions {orphaned} moved {elapsed:.2f}s after the kill, before the " \
                               f"{session_ms} ms session timeout"
        assert elapsed <= session_ms / 1000 + 5, f"partitions moved only after {elapsed:.2f}s"
        d = describe(admin(gbroker), group)
        assert d.state == ConsumerGroupState.STABLE
        assert sorted(m.client_id for m in d.members) == ["kill-0", "kill-1"]
    finally:
        helper.kill()
        close_all(members)


@pytest.mark.timeout(60)
def test_leaving_member_triggers_immediate_rebalance(gbroker):
    topic, group = unique("grp-leave"), unique("g")
    create_topic(gbroker, topic, 6)
    long_session = {"session.timeout.ms": 30000, "heartbeat.interval.ms": 100}
    members = [Member(gbroker, group, [topic], f"stay-{i}", **long_session) for i in range(2)]
    leaver = Member(gbroker, group, [topic], "leaver", **long_session)
    try:
        poll_until(members + [leaver], lambda: is_partitioning([m.parts(topic) for m in members + [leaver]], 6),
                   timeout=30, what="3 members sharing 6 partitions")
        t0 = time.monotonic()
        leaver.close()  # LeaveGroup
        poll_until(members, lambda: is_partitioning([m.parts(topic) for m in members], 6), timeout=10,
                   what="the remaining members to take over all partitions after LeaveGroup "
                        "(30 s session timeout)")
        assert time.monotonic() - t0 < 10
        d = describe(admin(gbroker), group)
        assert sorted(m.client_id for m in d.members) == ["stay-0", "stay-1"]
    finally:
        close_all(members + [leaver])


@pytest.mark.timeout(60)
def test_partitions_handed_over_at_committed_offsets(gbroker):
    """When a rebalance moves a partition, its new owner starts at the group's committed offset."""
    topic, group = unique("grp-handover"), unique("g")
    create_topic(gbroker, topic, 4)
    produce(gbroker, topic, [(p, None, f"p{p}-{i}".encode()) for p in range(4) for i in range(10)])
    first = Member(gbroker, group, [topic], "owner")
    second = None
    try:
        poll_until([first], lambda: first.parts(topic) == [0, 1, 2, 3] and len(first.msgs) >= 40, what="40 records")
        committed = {p: 3 + p for p in range(4)}
        commit_sync(first.c, [TopicPartition(topic, p, off) for p, off in committed.items()])
        second = Member(gbroker, group, [topic], "newcomer")
        poll_until([first, second], lambda: is_partitioning([first.parts(topic), second.parts(topic)], 4),
                   what="2 members sharing 4 partitions")
        moved = second.parts(topic)
        poll_until([first, second], lambda: len(second.msgs) >= sum(10 - committed[p] for p in moved),
                   what=f"the newcomer reading partitions {moved} from their committed offsets")
        poll_for([first, second], 0.5)
        for p in moved:
            offs = [m.offset() for m in second.msgs if m.partition() == p]
            assert offs == list(range(committed[p], 10)), f"partition {p}: read {offs[:3]}..., committed {committed[p]}"
        assert {m.partition() for m in second.msgs} == set(moved)
    finally:
        close_all([first] + ([second] if second else []))


@pytest.mark.timeout(60)
def test_cooperative_sticky_rebalance(gbroker):
    """librdkafka's incremental (cooperative) rebalancing over the classic protocol: a joining
    member takes partitions from the others, who keep the rest without a full revocation."""
    topic, group = unique("grp-coop"), unique("g")
    create_topic(gbroker, topic, 6)
    coop = {"partition.assignment.strategy": "cooperative-sticky"}
    members = [Member(gbroker, group, [topic], f"coop-{i}", **coop) for i in range(2)]
    try:
        poll_until(members, lambda: is_partitioning([m.parts(topic) for m in members], 6),
                   what="2 members sharing 6 partitions")
        before = [m.parts(topic) for m in members]
        seen = [len(m.revoked) for m in members]
        members.append(Member(gbroker, group, [topic], "coop-2", **coop))
        poll_until(members, lambda: is_partitioning([m.parts(topic) for m in members], 6),
                   what="3 members sharing 6 partitions")
        poll_for(members, 0.5)
        after = [m.parts(topic) for m in members]
        assert is_partitioning(after, 6), after
        assert sorted(len(a) for a in after) == [2, 2, 2], after
        for old, new, m, n in zip(before, after, members, seen):
            assert set(new) <= set(old), f"{m.name} gained partitions {sorted(set(new) - set(old))}"
            revoked = {p for r in m.revoked[n:] for _, p in r}
            assert revoked == set(old) - set(new), \
                f"{m.name} had {old}, has {new}, revocations since: {m.revoked[n:]}"
        d = describe(admin(gbroker), group)
        assert d.state == ConsumerGroupState.STABLE and d.partition_assignor == "cooperative-sticky"
        assert len(d.members) == 3
    finally:
        close_all(members)


@pytest.mark.timeout(60)
def test_static_member_rejoins_without_rebalance(gbroker):
    """KIP-345: a member with group.instance.id that restarts within its session timeout gets its
    old assignment back, and the other members are not rebalanced."""
    topic, group = unique("grp-static"), unique("g")
    create_topic(gbroker, topic, 4)

    def static(name):
        return Member(gbroker, group, [topic], name, **{"group.instance.id": name, "session.timeout.ms": 10000})

    members = [static("static-0"), static("static-1")]
    try:
        poll_until(members, lambda: is_partitioning([m.parts(topic) for m in members], 4),
                   what="2 static members sharing 4 partitions")
        before = [m.parts(topic) for m in members]
        revokes_before = len(members[0].revoked)
        d = describe(admin(gbroker), group)
        assert sorted((m.client_id, m.group_instance_id) for m in d.members) == \
            [("static-0", "static-0"), ("static-1", "static-1")]
        old_ids = {m.group_instance_id: m.member_id for m in d.members}

        members[1].close()  # a static member does not send LeaveGroup
        poll_for(members[:1], 0.5)
        d = describe(admin(gbroker), group)
        assert len(d.members) == 2, "a static member was dropped before its session timeout"

        members[1] = static("static-1")
        poll_until(members, lambda: [m.parts(topic) for m in members] == before, timeout=8,
                   what=f"the restarted static member to get its partitions {before[1]} back")
        poll_for(members, 0.5)
        assert [m.parts(topic) for m in members] == before
        assert len(members[0].revoked) == revokes_before, f"the other member was rebalanced: {members[0].revoked}"
        d = describe(admin(gbroker), group)
        assert d.state == ConsumerGroupState.STABLE
        ids = {m.group_instance_id: m.member_id for m in d.members}
        assert ids["static-0"] == old_ids["static-0"]
        assert ids["static-1"] != old_ids["static-1"], "the rejoined static member keeps no fresh member id"
    finally:
        close_all(members)


def _commit_restart_resume(broker, restart):
    topic, group = unique("grp-durable"), unique("g")
    create_topic(broker, topic, 2)
    produce(broker, topic, [(p, f"k{i}".encode(), f"p{p}-v{i}".encode()) for p in range(2) for i in range(20)])

    m = Member(broker, group, [topic], "first")
    try:
        poll_until([m], lambda: m.parts(topic) == [0, 1], what="assignment of both partitions")
        poll_until([m], lambda: len(m.msgs) >= 40, what="40 records")
        # An older commit, then the one that counts.
        commit_sync(m.c, [TopicPartition(topic, 0, 3, metadata="old"), TopicPartition(topic, 1, 2, metadata="old")])
        meta0 = "resume p0 \u00e9\u00e8 {\"k\": [1, 2]}"  # multi-byte UTF-8: string lengths are in bytes
        meta1 = "m" * 300
        commit_sync(m.c, [TopicPartition(topic, 0, 7, metadata=meta0), TopicPartition(topic, 1, 13, metadata=meta1)])
        got = m.c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=15)
        assert [(tp.offset, tp.metadata) for tp in got] == [(7, meta0), (13, meta1)]
    finally:
        m.close()

    restart()

    a = admin(broker)
    # The group is known again after the restart, with no members.
    g = wait_for(lambda: list_groups(a).get(group), timeout=15, what=f"group {group} listed after restart")
    assert g.state == ConsumerGroupState.EMPTY, g.state
    assert group_offsets(a, group) == {(topic, 0): (7, meta0), (topic, 1): (13, meta1)}

    m2 = Member(broker, group, [topic], "second")
    try:
        got = m2.c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=15)
        assert [(tp.offset, tp.metadata) for tp in got] == [(7, meta0), (13, meta1)]
        want = (20 - 7) + (20 - 13)
        poll_until([m2], lambda: len(m2.msgs) >= want, what=f"{want} records after the committed offsets")
        poll_for([m2], 0.5)
        for p, start in ((0, 7), (1, 13)):
            offs = [x.offset() for x in m2.msgs if x.partition() == p]
            assert offs == list(range(start, 20)), f"partition {p} resumed at {offs[:3]}..., committed {start}"
        assert [x.value() for x in m2.msgs if x.partition() == 0][0] == b"p0-v7"
    finally:
        m2.close()


@pytest.mark.timeout(60)
def test_committed_offsets_with_metadata_survive_restart(gbroker):
    _commit_restart_resume(gbroker, gbroker.restart)


@pytest.mark.timeout(60)
def test_committed_offsets_with_metadata_survive_sigkill(gbroker):
    _commit_restart_resume(gbroker, gbroker.crash_restart)


@pytest.mark.timeout(60)
def test_offset_metadata_size_limit(broker_factory):
    """offset.metadata.max.bytes bounds the metadata string: the limit itself is accepted, one
    byte more is OFFSET_METADATA_TOO_LARGE and changes nothing. kafka-python sends and reads the
    string as it is (confluent-kafka's Python binding sends a trailing NUL byte with it and reads
    it back as a C string, so it can neither hit the limit exactly nor read unterminated
    metadata)."""
    import kafka.errors as Errors
    from kafka import KafkaAdminClient
    from kafka import TopicPartition as KTP
    from kafka.structs import OffsetAndMetadata

    broker = broker_factory(settings={**GROUP_SETTINGS, "offset.metadata.max.bytes": "64"})
    topic, group = unique("grp-meta"), unique("g")
    create_topic(broker, topic, 1)
    tp = KTP(topic, 0)
    ka = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=30000)
    try:
        res = ka.alter_group_offsets(group, {tp: OffsetAndMetadata(1, "x" * 64, -1)})
        assert res == {tp: Errors.NoError}, res
        res = ka.alter_group_offsets(group, {tp: OffsetAndMetadata(2, "y" * 65, -1)})
        assert res == {tp: Errors.OffsetMetadataTooLargeError}, res
        got = ka.list_group_offsets(group)[group][tp]
        assert (got.offset, got.metadata) == (1, "x" * 64), f"a refused commit changed the committed offset: {got}"
    finally:
        ka.close()


@pytest.mark.timeout(60)
def test_session_timeout_outside_broker_bounds_is_refused(broker_factory):
    broker = broker_factory(settings={"group.initial.rebalance.delay.ms": "0",
                                      "group.min.session.timeout.ms": "6000",
                                      "group.max.session.timeout.ms": "20000"})
    topic, group = unique("grp-sto"), unique("g")
    create_topic(broker, topic, 1)
    for sto in (2000, 25000):
        m = Member(broker, unique("g"), [topic], f"sto-{sto}", **{"session.timeout.ms": sto})
        try:
            poll_until([m], lambda: any(e.code() == KafkaError.INVALID_SESSION_TIMEOUT for e in m.errors),
                       timeout=15, what=f"INVALID_SESSION_TIMEOUT for session.timeout.ms={sto}")
            assert m.parts(topic) == []
        finally:
            m.close()
    # Within bounds it joins.
    m = Member(broker, group, [topic], "sto-ok", **{"session.timeout.ms": 6000})
    try:
        poll_until([m], lambda: m.parts(topic) == [0], what="assignment with session.timeout.ms=6000")
    finally:
        m.close()


@pytest.mark.timeout(60)
def test_kafka_python_group_consume_commit_resume(gbroker):
    from kafka import KafkaConsumer, KafkaProducer
    from kafka import TopicPartition as KTP

    topic, group = unique("grp-kp"), unique("g")
    create_topic(gbroker, topic, 3)
    p = KafkaProducer(bootstrap_servers=gbroker.bootstrap, acks="all", linger_ms=5, enable_idempotence=False)
    for i in range(90):
        p.send(topic, key=f"k{i}".encode(), value=f"v{i}".encode(), partition=i % 3)
    p.flush(30)

    def make():
        return KafkaConsumer(topic, bootstrap_servers=gbroker.bootstrap, group_id=group, client_id="kp-member",
                             auto_offset_reset="earliest", enable_auto_commit=False, session_timeout_ms=6000,
                             heartbeat_interval_ms=200)

    def consume(c, n, timeout=30, extra=1.0):
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            for _, msgs in c.poll(timeout_ms=200).items():
                out.extend(msgs)
        end = time.monotonic() + extra
        while time.monotonic() < end:
            for _, msgs in c.poll(timeout_ms=200).items():
                out.extend(msgs)
        return out

    tps = [KTP(topic, i) for i in range(3)]
    c = make()
    try:
        msgs = consume(c, 90)
        assert sorted((m.partition, m.offset) for m in msgs) == [(q, o) for q in range(3) for o in range(30)]
        c.commit()
        assert {tp.partition: c.committed(tp) for tp in tps} == {0: 30, 1: 30, 2: 30}
    finally:
        c.close()

    for i in range(90, 105):
        p.send(topic, key=f"k{i}".encode(), value=f"v{i}".encode(), partition=i % 3)
    p.flush(30)
    p.close()

    c = make()
    try:
        msgs = consume(c, 15)
        assert sorted((m.partition, m.offset) for m in msgs) == [(q, o) for q in range(3) for o in range(30, 35)], \
            "the second run did not resume at the committed offsets"
        assert sorted(m.value for m in msgs) == sorted(f"v{i}".encode() for i in range(90, 105))
        c.commit()
    finally:
        c.close()

    # A third run finds nothing new.
    c = make()
    try:
        assert consume(c, 1, timeout=4, extra=0) == []
        assert {tp.partition: c.committed(tp) for tp in tps} == {0: 35, 1: 35, 2: 35}
    finally:
        c.close()


@pytest.mark.timeout(90)
def test_kcat_balanced_consumer_commits(gbroker):
    if not KCAT:
        pytest.fail("kcat is not installed (scripts/test-all.sh installs it with apt-get)")
    topic, group = unique("grp-kcat"), unique("g")
    create_topic(gbroker, topic, 2)
    produce(gbroker, topic, [(p, None, f"p{p}-{i}".encode()) for p in range(2) for i in range(30)])

    def kcat_group(count):
        cmd = [KCAT, "-b", gbroker.bootstrap, "-G", group, "-q", "-c", str(count), "-f", "%p %o %s\n",
               "-X", "broker.address.family=v4", "-X", "auto.offset.reset=earliest",
               "-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=100",
               "-X", "auto.commit.interval.ms=200", topic]
        p = subprocess.run(cmd, capture_output=True, timeout=40)
        out = p.stdout.decode(errors="replace")
        assert p.returncode == 0, f"{cmd} exited {p.returncode}\nstdout:\n{out}\nstderr:\n{p.stderr.decode()}"
        rows = [ln.split(" ", 2) for ln in out.splitlines() if ln.strip()]
        return sorted((int(part), int(off), val) for part, off, val in rows)

    rows = kcat_group(60)
    assert rows == sorted((p, i, f"p{p}-{i}") for p in range(2) for i in range(30))
    a = admin(gbroker)
    wait_for(lambda: {k: v[0] for k, v in group_offsets(a, group).items()} == {(topic, 0): 30, (topic, 1): 30},
             timeout=10, what="kcat's committed offsets 30/30")

    produce(gbroker, topic, [(p, None, f"p{p}-{i}".encode()) for p in range(2) for i in range(30, 35)])
    rows = kcat_group(10)
    assert rows == sorted((p, i, f"p{p}-{i}") for p in range(2) for i in range(30, 35)), \
        "the second kcat run did not resume at the committed offsets"
    wait_for(lambda: {k: v[0] for k, v in group_offsets(a, group).items()} == {(topic, 0): 35, (topic, 1): 35},
             timeout=10, what="committed offsets 35/35")
    assert group_state(a, group) == ConsumerGroupState.EMPTY


@pytest.mark.timeout(60)
def test_admin_list_describe_offsets_and_lag(gbroker):
    topic, group = unique("grp-admin"), unique("g")
    create_topic(gbroker, topic, 4)
    a = admin(gbroker)
    members = [Member(gbroker, group, [topic], f"admin-{i}") for i in range(2)]
    try:
        poll_until(members, lambda: is_partitioning([m.parts(topic) for m in members], 4), timeout=30,
                   what="2 members sharing 4 partitions")
        groups = list_groups(a)
        assert group in groups, sorted(groups)
        assert groups[group].state == ConsumerGroupState.STABLE
        assert groups[group].is_simple_consumer_group is False
        assert group in list_groups(a, states={ConsumerGroupState.STABLE})
        assert group not in list_groups(a, states={ConsumerGroupState.EMPTY})

        d = describe(a, group)
        assert d.group_id == group
        assert d.state == ConsumerGroupState.STABLE
        assert d.is_simple_consumer_group is False
        assert d.partition_assignor == "range"  # librdkafka's default list is "range,roundrobin"
        assert d.coordinator.port == gbroker.port and d.coordinator.host == "127.0.0.1"
        by_client = {mem.client_id: mem for mem in d.members}
        assert sorted(by_client) == ["admin-0", "admin-1"]
        assert len({mem.member_id for mem in d.members}) == 2 and all(mem.member_id for mem in d.members)
        for m in members:
            desc = by_client[m.name]
            assert "127.0.0.1" in desc.host, desc.host
            assigned = sorted((tp.topic, tp.partition) for tp in desc.assignment.topic_partitions)
            assert assigned == [(topic, p) for p in m.parts(topic)], (m.name, assigned)

        # Produce M = 40 (10 per partition), consume all, commit, then produce 20 more.
        produce(gbroker, topic, [(p, None, f"a{p}-{i}".encode()) for p in range(4) for i in range(10)])
        poll_until(members, lambda: sum(len(m.msgs) for m in members) >= 40, what="40 records")
        for m in members:
            m.c.commit(asynchronous=False)
        offs = group_offsets(a, group)
        assert {k: v[0] for k, v in offs.items()} == {(topic, p): 10 for p in range(4)}
        assert group_offsets(a, group, [TopicPartition(topic, 2)]) == {(topic, 2): (10, "")}
        produce(gbroker, topic, [(p, None, f"b{p}-{i}".encode()) for p in range(4) for i in range(p + 2)])
        lag = {}
        for p in range(4):
            lo, hi = members[0].c.get_watermark_offsets(TopicPartition(topic, p), timeout=15)
            lag[p] = hi - offs[(topic, p)][0]
        assert lag == {0: 2, 1: 3, 2: 4, 3: 5}
    finally:
        close_all(members)
    wait_for(lambda: group_state(a, group) == ConsumerGroupState.EMPTY, timeout=10,
             what="state Empty after all members left")
    d = describe(a, group)
    assert d.members == []
    assert list_groups(a)[group].state == ConsumerGroupState.EMPTY
    assert group in list_groups(a, states={ConsumerGroupState.EMPTY})
    assert {k: v[0] for k, v in group_offsets(a, group).items()} == {(topic, p): 10 for p in range(4)}


@pytest.mark.timeout(60)
def test_delete_groups(gbroker):
    topic, group = unique("grp-del"), unique("g")
    create_topic(gbroker, topic, 2)
    produce(gbroker, topic, [(p, None, b"x") for p in range(2) for _ in range(5)])
    a = admin(gbroker)
    m = Member(gbroker, group, [topic], "del")
    try:
        poll_until([m], lambda: m.parts(topic) == [0, 1] and len(m.msgs) >= 10, what="assignment and 10 records")
        m.c.commit(asynchronous=False)
        with pytest.raises(KafkaException) as ei:
            a.delete_consumer_groups([group], request_timeout=15)[group].result(timeout=30)
        assert ei.value.args[0].code() == KafkaError.NON_EMPTY_GROUP, ei.value
        assert {k: v[0] for k, v in group_offsets(a, group).items()} == {(topic, 0): 5, (topic, 1): 5}
    finally:
        m.close()
    wait_for(lambda: group_state(a, group) == ConsumerGroupState.EMPTY, timeout=10, what="state Empty")
    a.delete_consumer_groups([group], request_timeout=15)[group].result(timeout=30)
    assert group not in list_groups(a)
    assert group_offsets(a, group) == {}
    c = Consumer(consumer_conf(gbroker, group))
    try:
        got = c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=15)
        assert [tp.offset for tp in got] == [-1001, -1001]
    finally:
        c.close()
    # Deleting it again: the group does not exist.
    with pytest.raises(KafkaException) as ei:
        a.delete_consumer_groups([group], request_timeout=15)[group].result(timeout=30)
    assert ei.value.args[0].code() == KafkaError.GROUP_ID_NOT_FOUND, ei.value
    # A new member of the same group id starts over.
    m = Member(gbroker, group, [topic], "again")
    try:
        poll_until([m], lambda: len(m.msgs) >= 10, what="10 records from the beginning")
        assert sorted((x.partition(), x.offset()) for x in m.msgs) == [(p, o) for p in range(2) for o in range(5)]
    finally:
        m.close()


@pytest.mark.timeout(60)
def test_offsets_of_deleted_topic_are_removed(gbroker):
    gone, kept, group = unique("grp-gone"), unique("grp-kept"), unique("g")
    create_topic(gbroker, gone, 2)
    create_topic(gbroker, kept, 1)
    a = admin(gbroker)
    m = Member(gbroker, group, [gone, kept], "deltopic")
    try:
        poll_until([m], lambda: m.parts(gone) == [0, 1] and m.parts(kept) == [0], what="assignment")
        commit_sync(m.c, [TopicPartition(gone, 0, 4, metadata="g0"), TopicPartition(gone, 1, 5),
                          TopicPartition(kept, 0, 6, metadata="k0")])
    finally:
        m.close()
    assert group_offsets(a, group) == {(gone, 0): (4, "g0"), (gone, 1): (5, ""), (kept, 0): (6, "k0")}

    for f in a.delete_topics([gone]).values():
        f.result(timeout=30)
    wait_for(lambda: gone not in a.list_topics(timeout=10).topics, what="topic deletion")

    def valid_offsets():
        return {k: v for k, v in group_offsets(a, group).items() if v[0] >= 0}

    wait_for(lambda: valid_offsets() == {(kept, 0): (6, "k0")}, timeout=10,
             what=f"offsets of the deleted topic to disappear (have {valid_offsets()})")

    # Re-creating the topic does not bring its old offsets back.
    create_topic(gbroker, gone, 2)
    c = Consumer(consumer_conf(gbroker, group))
    try:
        got = c.committed([TopicPartition(gone, 0), TopicPartition(gone, 1), TopicPartition(kept, 0)], timeout=15)
        assert [tp.offset for tp in got] == [-1001, -1001, 6]
    finally:
        c.close()
    assert valid_offsets() == {(kept, 0): (6, "k0")}


@pytest.mark.timeout(60)
def test_offset_delete(gbroker):
    import kafka.errors as Errors
    from kafka import KafkaAdminClient
    from kafka import TopicPartition as KTP

    sub, other, group = unique("grp-od-sub"), unique("grp-od-other"), unique("g")
    create_topic(gbroker, sub, 2)
    create_topic(gbroker, other, 1)
    a = admin(gbroker)
    ka = KafkaAdminClient(bootstrap_servers=gbroker.bootstrap, request_timeout_ms=30000)
    m = Member(gbroker, group, [sub], "od")
    try:
        poll_until([m], lambda: m.parts(sub) == [0, 1], what="assignment")
        # A member may commit offsets of any partition, also of topics it is not subscribed to.
        commit_sync(m.c, [TopicPartition(sub, 0, 3), TopicPartition(sub, 1, 4), TopicPartition(other, 0, 5)])
        assert {k: v[0] for k, v in group_offsets(a, group).items()} == {(sub, 0): 3, (sub, 1): 4, (other, 0): 5}

        # While the group is active: offsets of subscribed topics are protected, others can go.
        res = ka.delete_group_offsets(group, [KTP(sub, 0), KTP(other, 0)])
        assert res == {KTP(sub, 0): Errors.GroupSubscribedToTopicError, KTP(other, 0): Errors.NoError}, res
        assert {k: v[0] for k, v in group_offsets(a, group).items()} == {(sub, 0): 3, (sub, 1): 4}
    finally:
        m.close()
    wait_for(lambda: group_state(a, group) == ConsumerGroupState.EMPTY, timeout=10, what="state Empty")

    # Empty group: deletion succeeds.
    res = ka.delete_group_offsets(group, [KTP(sub, 0)])
    assert res == {KTP(sub, 0): Errors.NoError}, res
    assert {k: v[0] for k, v in group_offsets(a, group).items()} == {(sub, 1): 4}
    c = Consumer(consumer_conf(gbroker, group))
    try:
        got = c.committed([TopicPartition(sub, 0), TopicPartition(sub, 1)], timeout=15)
        assert [tp.offset for tp in got] == [-1001, 4]
    finally:
        c.close()

    # Unknown group.
    with pytest.raises(Errors.GroupIdNotFoundError):
        ka.delete_group_offsets(unique("no-such-group"), [KTP(sub, 1)])
    ka.close()
