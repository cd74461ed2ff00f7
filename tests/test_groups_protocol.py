"""Consumer groups (classic protocol) driven by hand with the raw client: the join/sync/heartbeat
handshake, rebalances, fencing by member id, generation and group instance id, offset commits
and fetches, group listing, description and deletion, session expiry, malformed requests,
offsets across restarts and crashes, and groups spread over several shards.

Apache Kafka's behaviour and error codes are the reference. Every broker here runs with
group.initial.rebalance.delay.ms=0 (unless a test is about that delay), so that a join completes
as soon as every known member has joined."""

import struct
import time
from typing import Dict, List, Optional, Sequence, Tuple

import pytest

import kafka_raw as kr
from conftest import HOST, unique

NO_DELAY = {"group.initial.rebalance.delay.ms": "0"}

# API versions this file relies on: the classic non-flexible versions most clients use, and one
# flexible version of each API.
USED_VERSIONS = {
    kr.API_FIND_COORDINATOR: (0, 1, 4),
    kr.API_JOIN_GROUP: (0, 5, 7),
    kr.API_SYNC_GROUP: (0, 3, 5),
    kr.API_HEARTBEAT: (0, 3, 4),
    kr.API_LEAVE_GROUP: (0, 3, 4),
    kr.API_OFFSET_COMMIT: (2, 7, 8),
    kr.API_OFFSET_FETCH: (1, 5, 7),
    kr.API_LIST_GROUPS: (0, 4),
    kr.API_DESCRIBE_GROUPS: (0, 4, 5),
    kr.API_DELETE_GROUPS: (1, 2),
    kr.API_OFFSET_DELETE: (0,),
}


@pytest.fixture
def gb(broker_factory):
    """A broker whose groups rebalance without the initial delay."""
    return broker_factory(settings=dict(NO_DELAY))


def protocols(topics: Sequence[str], names: Sequence[str] = ("range",), user_data: Optional[bytes] = None):
    sub = kr.consumer_subscription(list(topics), user_data)
    return [(n, sub) for n in names]


def wait_for(pred, what: str, timeout: float = 5.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Member:
    """One group member with a connection of its own (JoinGroup and SyncGroup block)."""

    def __init__(self, broker, group: str, topics: Sequence[str] = (), version: int = 5,
                 client_id: str = "strom-raw-test", instance: Optional[str] = None,
                 session_timeout_ms: int = 10000, rebalance_timeout_ms: int = 30000,
                 protos=None, protocol_type: str = "consumer"):
        self.conn = kr.KafkaConn(HOST, broker.port, timeout=20.0, client_id=client_id)
        self.group = group
        self.version = version
        self.instance = instance
        self.session_timeout_ms = session_timeout_ms
        self.rebalance_timeout_ms = rebalance_timeout_ms
        self.protocols = protos if protos is not None else protocols(topics)
        self.protocol_type = protocol_type
        self.member_id = ""
        self.generation = -1
        self.leader = None
        self.protocol_name = None
        self.members: List[dict] = []

    def close(self):
        self.conn.close()

    @property
    def is_leader(self) -> bool:
        return self.leader == self.member_id

    def join_send(self) -> kr.PendingResponse:
        return self.conn.join_group_send(self.group, self.member_id, self.protocols, self.version,
                                         protocol_type=self.protocol_type,
                                         session_timeout_ms=self.session_timeout_ms,
                                         rebalance_timeout_ms=self.rebalance_timeout_ms,
                                         group_instance_id=self.instance)

    def joined(self, res: dict) -> dict:
        """Record a JoinGroup answer; returns it."""
        if res["error_code"] == 0:
            assert res["member_id"], res
            assert self.member_id in ("", res["member_id"]) or self.instance is not None, \
                f"member id changed from {self.member_id} to {res['member_id']}"
            self.member_id = res["member_id"]
            self.generation = res["generation_id"]
            self.leader = res["leader"]
            self.protocol_name = res["protocol_name"]
            self.members = res["members"] or []
        return res

    def join_first(self) -> dict:
        """The first JoinGroup of a dynamic member of v4+: MEMBER_ID_REQUIRED with a member id."""
        res = self.join_send().result()
        assert res["error_code"] == kr.MEMBER_ID_REQUIRED, res
        assert res["member_id"], res
        self.member_id = res["member_id"]
        return res

    def join(self) -> dict:
        """Join (or rejoin) and wait for the answer, with the MEMBER_ID_REQUIRED round of v4+
        when the member has no id yet."""
        if not self.member_id and self.version >= 4 and self.instance is None:
            self.join_first()
        return self.joined(self.join_send().result())

    def sync_send(self, assignments: Optional[Dict[str, bytes]] = None, version: int = 3) -> kr.PendingResponse:
        return self.conn.sync_group_send(self.group, self.generation, self.member_id, assignments or {},
                                         version=version, group_instance_id=self.instance if version >= 3 else None)

    def sync(self, assignments: Optional[Dict[str, bytes]] = None, version: int = 3) -> dict:
        return self.sync_send(assignments, version).result()

    def heartbeat(self, generation: Optional[int] = None, member_id: Optional[str] = None, version: int = 3) -> int:
        return self.conn.heartbeat(self.group, self.generation if generation is None else generation,
                                   self.member_id if member_id is None else member_id, version=version,
                                   group_instance_id=self.instance if version >= 3 else None)["error_code"]

    def commit(self, offsets, version: int = 2, generation: Optional[int] = None,
               member_id: Optional[str] = None) -> Dict[Tuple[str, int], int]:
        return self.conn.offset_commit(self.group, offsets,
                                       self.generation if generation is None else generation,
                                       self.member_id if member_id is None else member_id, version=version,
                                       group_instance_id=self.instance if version >= 7 else None)


def join_and_sync(m: Member, assignment: Optional[bytes] = None) -> bytes:
    """A lone member joins and, as leader, assigns `assignment` (default: every topic it
    subscribes to, partition 0) to itself."""
    res = m.join()
    assert res["error_code"] == 0, res
    assert m.is_leader, res
    if assignment is None:
        assignment = kr.consumer_assignment({})
    s = m.sync({m.member_id: assignment})
    assert s["error_code"] == 0, s
    assert s["assignment"] == assignment
    return assignment


def ensure_topic(conn: kr.KafkaConn, name: str, partitions: int = 1) -> str:
    err, msg = conn.create_topics([(name, partitions, 1, {})])[name]
    assert err in (0, kr.TOPIC_ALREADY_EXISTS), (err, msg)
    conn.wait_topic(name, partitions)
    return name


def add_second_member(first: Member, second: Member) -> Tuple[Member, Member, Dict[str, bytes]]:
    """`first` is a synced member; `second` joins, `first` learns of the rebalance from its
    heartbeat and rejoins. Both sync. Returns (leader, follower, assignments)."""
    gen_before = first.generation
    if second.version >= 4 and second.instance is None:
        second.join_first()
    pending_second = second.join_send()
    # The second member's join moves the group to PreparingRebalance; the first member hears of
    # it in its heartbeat.
    wait_for(lambda: first.heartbeat() == kr.REBALANCE_IN_PROGRESS,
             "REBALANCE_IN_PROGRESS in the first member's heartbeat")
    assert describe(first.conn, first.group)["state"] == "PreparingRebalance"
    # While the group prepares the rebalance, SyncGroup is refused but offsets of the current
    # generation can still be committed.
    assert first.sync({first.member_id: b""})["error_code"] == kr.REBALANCE_IN_PROGRESS
    shared = ensure_topic(first.conn, "groups-shared-topic")
    assert first.commit({(shared, 0): (1, "")}) == {(shared, 0): 0}
    r1 = first.joined(first.join_send().result())
    r2 = second.joined(pending_second.result())
    assert r1["error_code"] == 0 and r2["error_code"] == 0, (r1, r2)
    assert r1["generation_id"] == r2["generation_id"] == gen_before + 1, (r1, r2)
    assert r1["leader"] == r2["leader"] and r1["leader"] in (first.member_id, second.member_id)
    assert r1["protocol_name"] == r2["protocol_name"]
    leader, follower = (first, second) if first.is_leader else (second, first)
    assert sorted(m["member_id"] for m in leader.members) == sorted([first.member_id, second.member_id])
    assert follower.members == [], "only the leader receives the member list"
    # Joined but not yet synced: heartbeats are fine, commits are refused.
    assert describe(leader.conn, leader.group)["state"] == "CompletingRebalance"
    assert leader.heartbeat() == 0
    assert leader.commit({(shared, 0): (1, "")}) == {(shared, 0): kr.REBALANCE_IN_PROGRESS}
    assignments = {leader.member_id: kr.consumer_assignment({"t": [0]}, b"leader"),
                   follower.member_id: kr.consumer_assignment({"t": [1]}, b"follower")}
    pending_follower = follower.sync_send()
    ls = leader.sync(assignments)
    fs = pending_follower.result()
    assert ls["error_code"] == 0 and fs["error_code"] == 0, (ls, fs)
    assert ls["assignment"] == assignments[leader.member_id]
    assert fs["assignment"] == assignments[follower.member_id]
    return leader, follower, assignments


def describe(conn: kr.KafkaConn, group: str, version: int = 0) -> dict:
    g = conn.describe_groups([group], version=version)[group]
    assert g["error_code"] == 0, g
    return g


def fetch_offsets(conn: kr.KafkaConn, group: str, parts, version: int = 1) -> Dict[Tuple[str, int], Tuple[int, Optional[str]]]:
    res = conn.offset_fetch(group, parts, version=version)
    assert res["error_code"] == 0, res
    out = {}
    for tp, p in res["partitions"].items():
        assert p["error_code"] == 0, (tp, p)
        out[tp] = (p["offset"], p["metadata"])
    return out


def assert_no_offset(conn: kr.KafkaConn, group: str, parts, version: int = 1):
    got = conn.offset_fetch(group, parts, version=version)
    for tp in parts:
        p = got["partitions"][tp]
        assert p["error_code"] == 0 and p["offset"] == -1, (tp, p)
        assert p["metadata"] in ("", None), (tp, p)


def served(broker):
    broker.assert_alive()
    with broker.conn(timeout=5) as c:
        assert c.api_versions(3)["error_code"] == 0
        fc = c.find_coordinator(unique("probe"), version=1)
        assert fc["error_code"] == 0, fc


# ---------------------------------------------------------------------------------------------
# ApiVersions and FindCoordinator


def test_group_apis_advertised(gb):
    with gb.conn() as c:
        keys = c.api_versions(3)["api_keys"]
        missing = []
        for api, versions in USED_VERSIONS.items():
            lo, hi = keys.get(api, (1, 0))
            missing += [(api, v) for v in versions if not lo <= v <= hi]
        assert not missing, f"(api key, version) not advertised: {missing}; advertised: " \
                            f"{ {k: keys.get(k) for k in USED_VERSIONS} }"


def test_find_coordinator(gb):
    with gb.conn() as c:
        node = c.metadata([], version=1)["brokers"][0]["node_id"]
        group = unique("fc")
        for version in (0, 1, 2, 3):
            res = c.find_coordinator(group, version=version)
            assert res["error_code"] == 0, (version, res)
            assert (res["node_id"], res["host"], res["port"]) == (node, HOST, gb.port), (version, res)
        res = c.find_coordinator("", version=4, keys=[group, unique("fc2"), unique("fc3")])
        assert len(res["coordinators"]) == 3
        for co in res["coordinators"]:
            assert co["error_code"] == 0 and (co["node_id"], co["host"], co["port"]) == (node, HOST, gb.port), co


# ---------------------------------------------------------------------------------------------
# The handshake


def test_join_sync_heartbeat_v5(gb):
    topic = unique("hs")
    group = unique("g-hs")
    with gb.conn() as c:
        c.create_topic(topic, partitions=2)
        protos = protocols([topic], user_data=b"user-data")
        first = c.join_group(group, "", protos, version=5)
        assert first["error_code"] == kr.MEMBER_ID_REQUIRED, first
        mid = first["member_id"]
        assert mid, first
        assert first["generation_id"] == -1 and first["members"] == [], first

        res = c.join_group(group, mid, protos, version=5)
        assert res["error_code"] == 0, res
        assert res["member_id"] == mid
        assert res["generation_id"] == 1
        assert res["leader"] == mid
        assert res["protocol_name"] == "range"
        assert res["members"] == [{"member_id": mid, "group_instance_id": None, "metadata": protos[0][1]}]

        assignment = kr.consumer_assignment({topic: [0, 1]}, b"assignment-user-data")
        s = c.sync_group(group, 1, mid, {mid: assignment}, version=3)
        assert s["error_code"] == 0, s
        assert s["assignment"] == assignment
        assert kr.parse_consumer_assignment(s["assignment"]) == {topic: [0, 1]}
        for version in (0, 3):
            assert c.heartbeat(group, 1, mid, version=version)["error_code"] == 0

        g = describe(c, group)
        assert g["state"] == "Stable" and g["protocol_type"] == "consumer" and g["protocol_data"] == "range", g
        assert [m["member_id"] for m in g["members"]] == [mid]


def test_join_v0_needs_no_member_id_round(gb):
    group = unique("g-v0")
    with gb.conn() as c:
        protos = protocols(["some-topic"])
        res = c.join_group(group, "", protos, version=0, session_timeout_ms=10000)
        assert res["error_code"] == 0, res
        mid = res["member_id"]
        assert mid and res["leader"] == mid and res["generation_id"] == 1
        assert res["protocol_name"] == "range"
        assert [(m["member_id"], m["metadata"]) for m in res["members"]] == [(mid, protos[0][1])]
        s = c.sync_group(group, 1, mid, {mid: b"opaque-assignment"}, version=0)
        assert s["error_code"] == 0 and s["assignment"] == b"opaque-assignment", s
        assert c.heartbeat(group, 1, mid, version=0)["error_code"] == 0
        assert describe(c, group)["state"] == "Stable"


@pytest.mark.parametrize("join_version", [6, 7, 8, 9])
def test_flexible_versions(gb, join_version):
    """JoinGroup v6+ (compact strings and arrays, tagged fields), SyncGroup v5 with protocol type
    and name, Heartbeat v4, OffsetCommit v8, OffsetFetch v7, DescribeGroups v5, ListGroups v4,
    LeaveGroup v4, DeleteGroups v2."""
    topic = unique("flex")
    group = unique("g-flex")
    with gb.conn() as c:
        lo, hi = c.api_versions(3)["api_keys"].get(kr.API_JOIN_GROUP, (1, 0))
        if not lo <= join_version <= hi and join_version != 7:
            pytest.skip(f"JoinGroup v{join_version} not advertised ({lo}..{hi})")
        c.create_topic(topic, partitions=2)
        protos = protocols([topic], names=("cooperative-sticky", "range"), user_data="ü".encode())
        first = c.join_group(group, "", protos, version=join_version)
        assert first["error_code"] == kr.MEMBER_ID_REQUIRED and first["member_id"], first
        mid = first["member_id"]
        res = c.join_group(group, mid, protos, version=join_version)
        assert res["error_code"] == 0, res
        assert (res["member_id"], res["leader"], res["generation_id"]) == (mid, mid, 1), res
        # A lone member's first choice wins.
        assert res["protocol_name"] == "cooperative-sticky"
        if join_version >= 7:
            assert res["protocol_type"] == "consumer", res
        if join_version >= 9:
            assert res["skip_assignment"] is False
        assert [(m["member_id"], m["metadata"]) for m in res["members"]] == [(mid, protos[0][1])]

        assignment = kr.consumer_assignment({topic: [0, 1]})
        # SyncGroup v5 checks protocol type and name against the group's.
        bad = c.sync_group(group, 1, mid, {mid: assignment}, version=5, protocol_type="consumer",
                           protocol_name="range")
        assert bad["error_code"] == kr.INCONSISTENT_GROUP_PROTOCOL, bad
        bad = c.sync_group(group, 1, mid, {mid: assignment}, version=5, protocol_type="connect",
                           protocol_name="cooperative-sticky")
        assert bad["error_code"] == kr.INCONSISTENT_GROUP_PROTOCOL, bad
        s = c.sync_group(group, 1, mid, {mid: assignment}, version=5, protocol_type="consumer",
                         protocol_name="cooperative-sticky")
        assert s["error_code"] == 0, s
        assert (s["protocol_type"], s["protocol_name"], s["assignment"]) == ("consumer", "cooperative-sticky", assignment)
        assert c.heartbeat(group, 1, mid, version=4)["error_code"] == 0

        errs = c.offset_commit(group, {(topic, 0): (11, "flex-ü", 4), (topic, 1): (12, "")}, 1, mid, version=8)
        assert errs == {(topic, 0): 0, (topic, 1): 0}
        got = c.offset_fetch(group, [(topic, 0), (topic, 1)], version=7, require_stable=True)
        assert got["error_code"] == 0
        p0, p1 = got["partitions"][(topic, 0)], got["partitions"][(topic, 1)]
        assert (p0["offset"], p0["metadata"], p0["leader_epoch"], p0["error_code"]) == (11, "flex-ü", 4, 0)
        assert (p1["offset"], p1["metadata"], p1["leader_epoch"], p1["error_code"]) == (12, "", -1, 0)

        g = describe(c, group, version=5)
        assert (g["state"], g["protocol_type"], g["protocol_data"]) == ("Stable", "consumer", "cooperative-sticky")
        assert [(m["member_id"], m["metadata"], m["assignment"]) for m in g["members"]] == \
            [(mid, protos[0][1], assignment)]
        listed = c.list_groups(version=4)
        assert listed["error_code"] == 0
        assert listed["groups"][group] == {"group_id": group, "protocol_type": "consumer", "group_state": "Stable"}

        left = c.leave_group(group, [(mid, None)], version=4)
        assert left["error_code"] == 0 and [(m["member_id"], m["error_code"]) for m in left["members"]] == [(mid, 0)]
        assert describe(c, group, version=5)["state"] == "Empty"
        assert c.delete_groups([group], version=2) == {group: 0}
        assert_no_offset(c, group, [(topic, 0), (topic, 1)], version=7)


def test_protocol_selection_uses_common_protocol(gb):
    group = unique("g-sel")
    a = Member(gb, group, protos=protocols(["t"], names=("roundrobin", "range")))
    b = Member(gb, group, protos=protocols(["t"], names=("range",)))
    try:
        join_and_sync(a)
        assert a.protocol_name == "roundrobin"
        add_second_member(a, b)
        assert a.protocol_name == b.protocol_name == "range"
        with gb.conn() as c:
            assert describe(c, group)["protocol_data"] == "range"
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------------------------------------------
# Rebalances


def test_second_member_triggers_rebalance(gb):
    topic = unique("rb")
    group = unique("g-rb")
    with gb.conn() as c:
        c.create_topic(topic, partitions=2)
    m1 = Member(gb, group, [topic])
    m2 = Member(gb, group, [topic], client_id="second")
    try:
        join_and_sync(m1)
        assert m1.generation == 1
        assert m1.heartbeat() == 0
        leader, follower, assignments = add_second_member(m1, m2)
        assert m1.generation == m2.generation == 2
        by_id = {m["member_id"]: m["metadata"] for m in leader.members}
        assert by_id == {m1.member_id: m1.protocols[0][1], m2.member_id: m2.protocols[0][1]}
        assert m1.heartbeat() == 0 and m2.heartbeat() == 0
        with gb.conn() as c:
            g = describe(c, group)
            assert g["state"] == "Stable"
            assert {m["member_id"]: m["assignment"] for m in g["members"]} == assignments
        # The follower rejoining with unchanged metadata gets the current generation back and
        # does not start a rebalance.
        res = follower.join()
        assert res["error_code"] == 0 and res["generation_id"] == 2 and res["members"] == [], res
        assert leader.heartbeat() == 0 and follower.heartbeat() == 0
        assert follower.sync()["assignment"] == assignments[follower.member_id]
    finally:
        m1.close()
        m2.close()


def test_member_that_does_not_rejoin_is_dropped_after_rebalance_timeout(gb):
    group = unique("g-rbto")
    m1 = Member(gb, group, ["t"], rebalance_timeout_ms=2000)
    m2 = Member(gb, group, ["t"], rebalance_timeout_ms=2000)
    try:
        join_and_sync(m1)
        m2.join_first()
        # m1 never rejoins: once the rebalance timeout has passed, the join completes without it.
        res = m2.joined(m2.join_send().result())
        assert res["error_code"] == 0, res
        assert (m2.generation, m2.leader) == (2, m2.member_id), res
        assert [m["member_id"] for m in m2.members] == [m2.member_id]
        assert m2.sync({m2.member_id: b"all"})["assignment"] == b"all"
        assert m1.heartbeat() == kr.UNKNOWN_MEMBER_ID
        with gb.conn() as c:
            g = describe(c, group)
            assert g["state"] == "Stable" and [m["member_id"] for m in g["members"]] == [m2.member_id]
    finally:
        m1.close()
        m2.close()


def test_members_left_out_of_the_assignment_get_empty_bytes(gb):
    group = unique("g-noassign")
    m1 = Member(gb, group, ["t"])
    m2 = Member(gb, group, ["t"])
    try:
        join_and_sync(m1)
        m2.join_first()
        pending = m2.join_send()
        wait_for(lambda: m1.heartbeat() == kr.REBALANCE_IN_PROGRESS, "the rebalance")
        m1.joined(m1.join_send().result())
        m2.joined(pending.result())
        leader, follower = (m1, m2) if m1.is_leader else (m2, m1)
        pending = follower.sync_send()
        assert leader.sync({leader.member_id: b"only-the-leader"})["assignment"] == b"only-the-leader"
        res = pending.result()
        assert res["error_code"] == 0 and res["assignment"] == b"", res
    finally:
        m1.close()
        m2.close()


def test_unknown_member_and_stale_generation_are_fenced(gb):
    topic = unique("fence")
    group = unique("g-fence")
    parts = [(topic, 0), (topic, 1)]
    with gb.conn() as c:
        c.create_topic(topic, partitions=2)
    m = Member(gb, group, [topic])
    try:
        join_and_sync(m)
        assert m.commit({(topic, 0): (5, "first")}) == {(topic, 0): 0}
        # Rejoin with a changed subscription: a new generation.
        m.protocols = protocols([topic, "other-topic"])
        res = m.join()
        assert res["error_code"] == 0 and m.generation == 2, res
        assignment = kr.consumer_assignment({topic: [0, 1]})
        assert m.sync({m.member_id: assignment})["error_code"] == 0
        assert m.heartbeat() == 0

        ghost = "ghost-" + m.member_id
        for version in (0, 5):
            res = m.conn.join_group(group, ghost, m.protocols, version=version)
            assert res["error_code"] == kr.UNKNOWN_MEMBER_ID, (version, res)
        assert m.heartbeat(member_id=ghost) == kr.UNKNOWN_MEMBER_ID
        assert m.heartbeat(member_id=ghost, version=0) == kr.UNKNOWN_MEMBER_ID
        s = m.conn.sync_group(group, 2, ghost, {ghost: b"x"}, version=3)
        assert s["error_code"] == kr.UNKNOWN_MEMBER_ID, s
        assert m.commit({(topic, 0): (999, "ghost"), (topic, 1): (999, "ghost")}, member_id=ghost) == \
            {(topic, 0): kr.UNKNOWN_MEMBER_ID, (topic, 1): kr.UNKNOWN_MEMBER_ID}
        assert m.commit({(topic, 1): (998, "ghost-v7")}, member_id=ghost, version=7) == \
            {(topic, 1): kr.UNKNOWN_MEMBER_ID}
        # No member id and no generation: only accepted while the group has no members.
        assert m.commit({(topic, 1): (997, "anonymous")}, generation=-1, member_id="") == \
            {(topic, 1): kr.UNKNOWN_MEMBER_ID}

        for stale in (1, 3, 99):
            assert m.heartbeat(generation=stale) == kr.ILLEGAL_GENERATION, stale
        s = m.conn.sync_group(group, 1, m.member_id, {m.member_id: b"x"}, version=3)
        assert s["error_code"] == kr.ILLEGAL_GENERATION, s
        assert m.commit({(topic, 0): (888, "stale"), (topic, 1): (888, "stale")}, generation=1) == \
            {(topic, 0): kr.ILLEGAL_GENERATION, (topic, 1): kr.ILLEGAL_GENERATION}
        assert m.commit({(topic, 0): (887, "stale-v8")}, generation=1, version=8) == \
            {(topic, 0): kr.ILLEGAL_GENERATION}

        # None of that changed the group.
        with gb.conn() as c:
            g = describe(c, group)
            assert g["state"] == "Stable"
            assert [(x["member_id"], x["assignment"]) for x in g["members"]] == [(m.member_id, assignment)]
            assert fetch_offsets(c, group, parts) in ({(topic, 0): (5, "first"), (topic, 1): (-1, "")},
                                                      {(topic, 0): (5, "first"), (topic, 1): (-1, None)})
        assert m.heartbeat() == 0
        assert m.commit({(topic, 0): (7, "valid"), (topic, 1): (8, "valid")}) == {(topic, 0): 0, (topic, 1): 0}
        with gb.conn() as c:
            assert fetch_offsets(c, group, parts) == {(topic, 0): (7, "valid"), (topic, 1): (8, "valid")}
            assert fetch_offsets(c, group, None, version=5) == {(topic, 0): (7, "valid"), (topic, 1): (8, "valid")}
    finally:
        m.close()


# ---------------------------------------------------------------------------------------------
# Offset commits


def test_commit_unknown_topic_fails_only_that_partition(gb):
    topic = unique("known")
    missing = unique("missing")
    group = unique("g-unk")
    with gb.conn() as c:
        c.create_topic(topic, partitions=2)
        for version in (2, 8):
            errs = c.offset_commit(group, {(topic, 0): (10 + version, "a"), (missing, 0): (5, "b"),
                                           (topic, 1): (20 + version, "c")}, version=version)
            assert errs == {(topic, 0): 0, (missing, 0): kr.UNKNOWN_TOPIC_OR_PARTITION, (topic, 1): 0}, (version, errs)
            assert fetch_offsets(c, group, [(topic, 0), (topic, 1)]) == \
                {(topic, 0): (10 + version, "a"), (topic, 1): (20 + version, "c")}
        # A partition the topic does not have is unknown as well.
        errs = c.offset_commit(group, {(topic, 0): (30, "a"), (topic, 2): (31, "b")}, version=2)
        assert errs == {(topic, 0): 0, (topic, 2): kr.UNKNOWN_TOPIC_OR_PARTITION}, errs
        # Committing offsets does not create the topic.
        md = c.metadata([missing], version=4, allow_auto_topic_creation=False)
        assert md["topics"][missing]["error_code"] == kr.UNKNOWN_TOPIC_OR_PARTITION
        all_committed = fetch_offsets(c, group, None, version=5)
        assert all_committed == {(topic, 0): (30, "a"), (topic, 1): (28, "c")}


def test_commit_unknown_topic_is_reported_whatever_the_member(gb):
    """Kafka checks that the topics exist before it looks at the group: an unknown topic's
    partitions get UNKNOWN_TOPIC_OR_PARTITION even when the member id is unknown."""
    topic = unique("known")
    missing = unique("missing")
    with gb.conn() as c:
        c.create_topic(topic)
    m = Member(gb, unique("g-unk-managed"), [topic])
    try:
        join_and_sync(m)
        errs = m.commit({(topic, 0): (1, ""), (missing, 0): (1, "")})
        assert errs == {(topic, 0): 0, (missing, 0): kr.UNKNOWN_TOPIC_OR_PARTITION}, errs
        errs = m.commit({(topic, 0): (2, ""), (missing, 0): (2, "")}, member_id="ghost")
        assert errs == {(topic, 0): kr.UNKNOWN_MEMBER_ID, (missing, 0): kr.UNKNOWN_TOPIC_OR_PARTITION}, errs
    finally:
        m.close()


def test_commit_metadata_too_large(gb):
    topic = unique("meta")
    group = unique("g-meta")
    with gb.conn() as c:
        c.create_topic(topic, partitions=2)
        assert c.offset_commit(group, {(topic, 0): (1, "m" * 4096)}) == {(topic, 0): 0}
        assert fetch_offsets(c, group, [(topic, 0)]) == {(topic, 0): (1, "m" * 4096)}
        for version in (2, 7, 8):
            errs = c.offset_commit(group, {(topic, 0): (2, "x" * 4097), (topic, 1): (3, "fits")}, version=version)
            assert errs == {(topic, 0): kr.OFFSET_METADATA_TOO_LARGE, (topic, 1): 0}, (version, errs)
        assert fetch_offsets(c, group, [(topic, 0), (topic, 1)]) == {(topic, 0): (1, "m" * 4096), (topic, 1): (3, "fits")}


def test_commit_metadata_limit_setting(broker_factory):
    b = broker_factory(settings=dict(NO_DELAY, **{"offset.metadata.max.bytes": "100"}))
    topic = unique("meta100")
    group = unique("g-meta100")
    with b.conn() as c:
        c.create_topic(topic)
        assert c.offset_commit(group, {(topic, 0): (1, "k" * 100)}) == {(topic, 0): 0}
        assert c.offset_commit(group, {(topic, 0): (2, "k" * 101)}) == {(topic, 0): kr.OFFSET_METADATA_TOO_LARGE}
        assert fetch_offsets(c, group, [(topic, 0)]) == {(topic, 0): (1, "k" * 100)}


def test_commit_metadata_round_trips(gb):
    topic = unique("rt")
    group = unique("g-rt")
    texts = ["", "plain", "ünïcødé ✓ 日本語 🚀", " spaces and\ttabs\nnewline ", "{\"json\": [1, 2]}", "\u0000nul"]
    parts = [(topic, i) for i in range(len(texts))]
    with gb.conn() as c:
        c.create_topic(topic, partitions=len(texts))
        keys = c.api_versions(3)["api_keys"]
        fetch_versions = [v for v in (1, 5, 7, 8) if v <= keys[kr.API_OFFSET_FETCH][1]]
        for commit_version in (2, 7, 8):
            offsets = {(topic, i): (100 * commit_version + i, t) for i, t in enumerate(texts)}
            assert c.offset_commit(group, offsets, version=commit_version) == {tp: 0 for tp in parts}
            for fv in fetch_versions:
                got = fetch_offsets(c, group, parts, version=fv)
                assert got == {tp: (o, t) for tp, (o, t) in offsets.items()}, (commit_version, fv)
        # The leader epoch (v6+) is kept and returned (OffsetFetch v5+); older commits have none.
        assert c.offset_commit(group, {(topic, 0): (1000, "e", 17)}, version=7) == {(topic, 0): 0}
        assert c.offset_commit(group, {(topic, 1): (1001, "no-epoch")}, version=2) == {(topic, 1): 0}
        got = c.offset_fetch(group, [(topic, 0), (topic, 1)], version=5)["partitions"]
        assert (got[(topic, 0)]["offset"], got[(topic, 0)]["leader_epoch"]) == (1000, 17)
        assert (got[(topic, 1)]["offset"], got[(topic, 1)]["leader_epoch"]) == (1001, -1)
        # A partition with no commit reads as offset -1.
        c.create_topic(topic + "-b")
        assert_no_offset(c, group, [(topic + "-b", 0)])


def test_simple_commit_without_members(gb):
    topic = unique("simple")
    group = unique("g-simple")
    with gb.conn() as c:
        c.create_topic(topic, partitions=3)
        assert_no_offset(c, group, [(topic, 0)])
        nothing = c.offset_fetch(group, None, version=5)
        assert nothing["error_code"] == 0 and nothing["partitions"] == {}
        errs = c.offset_commit(group, {(topic, p): (p * 10, f"p{p}") for p in range(3)}, -1, "", version=2)
        assert errs == {(topic, p): 0 for p in range(3)}
        assert fetch_offsets(c, group, [(topic, p) for p in range(3)]) == {(topic, p): (p * 10, f"p{p}") for p in range(3)}
        # Overwrite one, then commit with v8 too.
        assert c.offset_commit(group, {(topic, 1): (11, "again")}, version=8) == {(topic, 1): 0}
        assert fetch_offsets(c, group, None, version=7) == {(topic, 0): (0, "p0"), (topic, 1): (11, "again"),
                                                           (topic, 2): (20, "p2")}
        g = describe(c, group)
        assert g["state"] == "Empty" and g["members"] == [], g
        assert c.list_groups(version=4)["groups"][group]["group_state"] == "Empty"


# ---------------------------------------------------------------------------------------------
# Invalid joins


def test_inconsistent_group_protocol(gb):
    group = unique("g-incons")
    m = Member(gb, group, ["t"])
    others = []
    try:
        join_and_sync(m)
        for kw in (dict(protocol_type="connect"),
                   dict(protos=protocols(["t"], names=("roundrobin",))),
                   dict(protos=[])):
            for version in (0, 5):
                o = Member(gb, group, ["t"], version=version, **kw)
                others.append(o)
                res = o.join_send().result()
                if res["error_code"] == kr.MEMBER_ID_REQUIRED:
                    o.member_id = res["member_id"]
                    res = o.join_send().result()
                assert res["error_code"] == kr.INCONSISTENT_GROUP_PROTOCOL, (kw, version, res)
        assert m.heartbeat() == 0
        with gb.conn() as c:
            g = describe(c, group)
            assert g["state"] == "Stable" and [x["member_id"] for x in g["members"]] == [m.member_id]
        # An empty group needs a protocol type and at least one protocol.
        for kw in (dict(protocol_type=""), dict(protos=[])):
            o = Member(gb, unique("g-new"), ["t"], version=0, **kw)
            others.append(o)
            assert o.join_send().result()["error_code"] == kr.INCONSISTENT_GROUP_PROTOCOL, kw
    finally:
        m.close()
        for o in others:
            o.close()


def test_invalid_session_timeout(gb):
    with gb.conn() as c:
        for timeout in (0, 1000, 5999, 1800001):
            for version in (0, 5):
                res = c.join_group(unique("g-sess"), "", protocols(["t"]), version=version, session_timeout_ms=timeout)
                assert res["error_code"] == kr.INVALID_SESSION_TIMEOUT, (timeout, version, res)
        for timeout in (6000, 1800000):
            res = c.join_group(unique("g-sess"), "", protocols(["t"]), version=0, session_timeout_ms=timeout,
                               rebalance_timeout_ms=6000)
            assert res["error_code"] == 0, (timeout, res)


def test_empty_group_id(gb):
    with gb.conn() as c:
        got = {f"JoinGroup v{v}": c.join_group("", "", protocols(["t"]), version=v)["error_code"] for v in (0, 5, 7)}
        got["SyncGroup v3"] = c.sync_group("", 1, "m", {"m": b""}, version=3)["error_code"]
        got["Heartbeat v3"] = c.heartbeat("", 1, "m", version=3)["error_code"]
        got["LeaveGroup v0"] = c.leave_group("", [("m", None)], version=0)["error_code"]
        got["LeaveGroup v3"] = c.leave_group("", [("m", None)], version=3)["error_code"]
        assert got == {k: kr.INVALID_GROUP_ID for k in got}
    served(gb)


# ---------------------------------------------------------------------------------------------
# ListGroups, DescribeGroups, DeleteGroups, OffsetDelete


def test_list_and_describe_groups(gb):
    topic = unique("ld")
    stable, empty = unique("g-stable"), unique("g-empty")
    unknown = unique("g-unknown")
    with gb.conn() as c:
        c.create_topic(topic, partitions=2)
        assert c.offset_commit(empty, {(topic, 0): (1, "")}) == {(topic, 0): 0}
    a = Member(gb, stable, [topic], client_id="client-a")
    b = Member(gb, stable, [topic], client_id="client-b", version=0)
    try:
        join_and_sync(a)
        _, _, assignments = add_second_member(a, b)
        with gb.conn() as c:
            for version in (0, 4):
                listed = c.list_groups(version=version)
                assert listed["error_code"] == 0
                assert listed["groups"][stable]["protocol_type"] == "consumer"
                assert listed["groups"][empty]["protocol_type"] == ""
                assert unknown not in listed["groups"]
                if version >= 4:
                    assert listed["groups"][stable]["group_state"] == "Stable"
                    assert listed["groups"][empty]["group_state"] == "Empty"
            if c.api_versions(3)["api_keys"][kr.API_LIST_GROUPS][1] >= 5:
                listed = c.list_groups(version=5)["groups"]
                assert listed[stable]["group_type"] == "classic", listed[stable]
                assert listed[stable]["group_state"] == "Stable"
            only_stable = c.list_groups(version=4, states_filter=["Stable"])["groups"]
            assert stable in only_stable and empty not in only_stable
            only_empty = c.list_groups(version=4, states_filter=["Empty"])["groups"]
            assert empty in only_empty and stable not in only_empty

            for version in (0, 4, 5):
                res = c.describe_groups([stable, empty, unknown], version=version)
                assert set(res) == {stable, empty, unknown}
                s = res[stable]
                assert (s["error_code"], s["state"], s["protocol_type"], s["protocol_data"]) == \
                    (0, "Stable", "consumer", "range"), s
                members = {m["member_id"]: m for m in s["members"]}
                assert set(members) == {a.member_id, b.member_id}
                for m, client in ((a, "client-a"), (b, "client-b")):
                    d = members[m.member_id]
                    assert d["client_id"] == client
                    assert "127.0.0.1" in d["client_host"], d
                    assert d["metadata"] == m.protocols[0][1]
                    assert d["assignment"] == assignments[m.member_id]
                    if version >= 4:
                        assert d["group_instance_id"] is None
                e = res[empty]
                assert (e["error_code"], e["state"], e["members"]) == (0, "Empty", []), e
                u = res[unknown]
                assert (u["error_code"], u["state"], u["protocol_type"], u["protocol_data"], u["members"]) == \
                    (0, "Dead", "", "", []), u
    finally:
        a.close()
        b.close()


def test_delete_groups(gb):
    topic = unique("del")
    active, unknown, simple, left = (unique(p) for p in ("g-active", "g-unknown", "g-simple", "g-left"))
    parts = [(topic, 0), (topic, 1)]
    with gb.conn() as c:
        c.create_topic(topic, partitions=2)
        assert c.offset_commit(simple, {(topic, 0): (3, "s"), (topic, 1): (4, "s")}) == {(topic, 0): 0, (topic, 1): 0}
    m = Member(gb, active, [topic])
    n = Member(gb, left, [topic])
    try:
        join_and_sync(m)
        join_and_sync(n)
        assert n.commit({(topic, 0): (9, "left")}) == {(topic, 0): 0}
        assert n.conn.leave_group(left, [(n.member_id, None)], version=3)["error_code"] == 0
        with gb.conn() as c:
            assert describe(c, left)["state"] == "Empty"
            res = c.delete_groups([active, unknown, simple, left], version=1)
            assert res == {active: kr.NON_EMPTY_GROUP, unknown: kr.GROUP_ID_NOT_FOUND, simple: 0, left: 0}, res
            for g in (simple, left):
                assert_no_offset(c, g, parts)
                assert describe(c, g)["state"] == "Dead"
                assert g not in c.list_groups(version=0)["groups"]
            assert c.delete_groups([simple], version=0) == {simple: kr.GROUP_ID_NOT_FOUND}
            # The active group is untouched and the deleted ones can be used afresh.
            assert describe(c, active)["state"] == "Stable"
            assert c.offset_commit(simple, {(topic, 1): (40, "new")}) == {(topic, 1): 0}
            assert fetch_offsets(c, simple, parts) in ({(topic, 0): (-1, ""), (topic, 1): (40, "new")},
                                                       {(topic, 0): (-1, None), (topic, 1): (40, "new")})
        assert m.heartbeat() == 0
    finally:
        m.close()
        n.close()


def test_offset_delete(gb):
    sub, other = unique("od-sub"), unique("od-other")
    group, connect_group = unique("g-od"), unique("g-od-connect")
    with gb.conn() as c:
        c.create_topic(sub, partitions=2)
        c.create_topic(other)
    m = Member(gb, group, [sub])
    k = Member(gb, connect_group, protocol_type="connect", protos=[("default", b"\x00\x01opaque")])
    try:
        join_and_sync(m, kr.consumer_assignment({sub: [0, 1]}))
        offsets = {(sub, 0): (5, "a"), (sub, 1): (6, "b"), (other, 0): (7, "c")}
        assert m.commit(offsets) == {tp: 0 for tp in offsets}
        with gb.conn() as c:
            res = c.offset_delete(group, [(sub, 0), (other, 0)])
            assert res["error_code"] == 0, res
            assert res["partitions"] == {(sub, 0): kr.GROUP_SUBSCRIBED_TO_TOPIC, (other, 0): 0}, res
            assert fetch_offsets(c, group, [(sub, 0), (sub, 1)]) == {(sub, 0): (5, "a"), (sub, 1): (6, "b")}
            assert_no_offset(c, group, [(other, 0)])
            assert c.offset_delete(unique("g-none"), [(sub, 0)])["error_code"] == kr.GROUP_ID_NOT_FOUND
        # Once the member is gone, the subscribed topic's offsets can go too.
        assert m.conn.leave_group(group, [(m.member_id, None)], version=3)["error_code"] == 0
        with gb.conn() as c:
            res = c.offset_delete(group, [(sub, 0)])
            assert res["error_code"] == 0 and res["partitions"] == {(sub, 0): 0}, res
            assert_no_offset(c, group, [(sub, 0)])
            assert fetch_offsets(c, group, [(sub, 1)]) == {(sub, 1): (6, "b")}
        # A group of another protocol type with members: NON_EMPTY_GROUP.
        join_and_sync(k, b"connect-assignment")
        assert k.commit({(other, 0): (1, "")}) == {(other, 0): 0}
        with gb.conn() as c:
            res = c.offset_delete(connect_group, [(other, 0)])
            assert res["error_code"] == kr.NON_EMPTY_GROUP, res
            assert fetch_offsets(c, connect_group, [(other, 0)]) == {(other, 0): (1, "")}
    finally:
        m.close()
        k.close()


# ---------------------------------------------------------------------------------------------
# Leaving, expiring


def test_leave_group(gb):
    group = unique("g-leave")
    m1 = Member(gb, group, ["t"])
    m2 = Member(gb, group, ["t"])
    try:
        join_and_sync(m1)
        add_second_member(m1, m2)
        gen = m1.generation
        res = m2.conn.leave_group(group, [(m2.member_id, None)], version=3)
        assert res["error_code"] == 0
        assert res["members"] == [{"member_id": m2.member_id, "group_instance_id": None, "error_code": 0}], res
        assert m1.heartbeat() == kr.REBALANCE_IN_PROGRESS
        assert m2.heartbeat() == kr.UNKNOWN_MEMBER_ID
        r = m1.join()
        assert r["error_code"] == 0 and m1.generation == gen + 1 and m1.is_leader, r
        assert [m["member_id"] for m in m1.members] == [m1.member_id]
        assert m1.sync({m1.member_id: b""})["error_code"] == 0
        assert m1.heartbeat() == 0

        with gb.conn() as c:
            ghost = c.leave_group(group, [("ghost", None)], version=3)
            assert ghost["error_code"] == 0 and ghost["members"][0]["error_code"] == kr.UNKNOWN_MEMBER_ID, ghost
            assert c.leave_group(group, [("ghost", None)], version=0)["error_code"] == kr.UNKNOWN_MEMBER_ID
            assert describe(c, group)["state"] == "Stable"
            assert m1.conn.leave_group(group, [(m1.member_id, None)], version=0)["error_code"] == 0
            g = describe(c, group)
            assert (g["state"], g["members"]) == ("Empty", []), g
        assert m1.heartbeat() == kr.UNKNOWN_MEMBER_ID
    finally:
        m1.close()
        m2.close()


def test_session_expiry_removes_member(broker_factory):
    b = broker_factory(settings={"group.min.session.timeout.ms": "500", "group.initial.rebalance.delay.ms": "0"})
    group = unique("g-expire")
    m = Member(b, group, ["t"], session_timeout_ms=1000, rebalance_timeout_ms=1000)
    try:
        join_and_sync(m)
        # Heartbeats keep it in the group well past its session timeout...
        end = time.monotonic() + 2.5
        while time.monotonic() < end:
            assert m.heartbeat() == 0
            time.sleep(0.2)
        with b.conn() as c:
            assert describe(c, group)["state"] == "Stable"
            # ...and without them it is removed.
            t0 = time.monotonic()
            wait_for(lambda: describe(c, group)["state"] == "Empty", "the silent member to be removed",
                     timeout=3.5, interval=0.1)
            assert describe(c, group)["members"] == []
            assert time.monotonic() - t0 >= 0.5
        assert m.heartbeat() == kr.UNKNOWN_MEMBER_ID
    finally:
        m.close()


def test_initial_rebalance_delay_is_honoured(broker_factory):
    b = broker_factory(settings={"group.initial.rebalance.delay.ms": "1000"})
    group = unique("g-delay")
    m = Member(b, group, ["t"], rebalance_timeout_ms=10000)
    try:
        m.join_first()
        t0 = time.monotonic()
        res = m.joined(m.join_send().result())
        took = time.monotonic() - t0
        assert res["error_code"] == 0 and res["generation_id"] == 1, res
        assert took >= 0.9, f"the first join completed after {took:.3f}s, before the 1 s initial delay"
    finally:
        m.close()


# ---------------------------------------------------------------------------------------------
# Malformed requests


def _frame(api: int, version: int, body: bytes) -> bytes:
    flexible = kr.is_flexible(api, version)
    w = kr.Writer().int16(api).int16(version).int32(77).string("malformed")
    if flexible:
        w.tagged_fields()
    frame = w.done() + body
    return struct.pack(">i", len(frame)) + frame


def _cut(body: bytes, keep: float) -> bytes:
    return body[:max(1, int(len(body) * keep))]


_JOIN5 = kr.encode_join_group(5, "g-malformed", "", protocols(["t"]))
_JOIN7 = kr.encode_join_group(7, "g-malformed", "", protocols(["t"]))
MALFORMED = {
    "join-v5-truncated": (kr.API_JOIN_GROUP, 5, _cut(_JOIN5, 0.6)),
    "join-v7-truncated": (kr.API_JOIN_GROUP, 7, _cut(_JOIN7, 0.8)),
    "join-v5-huge-protocol-count": (kr.API_JOIN_GROUP, 5, kr.Writer().string("g-malformed").int32(10000)
                                    .int32(30000).string("").string(None).string("consumer")
                                    .int32(0x7FFFFFFF).string("range").done()),
    "join-v7-huge-compact-string": (kr.API_JOIN_GROUP, 7, kr.Writer().uvarint(0x7FFFFFF0).raw(b"abc").done()),
    "sync-v3-assignment-past-end": (kr.API_SYNC_GROUP, 3, kr.Writer().string("g-malformed").int32(1)
                                    .string("m").string(None).int32(1).string("m").int32(1 << 30).raw(b"xx").done()),
    "heartbeat-v3-truncated": (kr.API_HEARTBEAT, 3, kr.Writer().string("g-malformed").int16(7).done()),
    "commit-v2-truncated": (kr.API_OFFSET_COMMIT, 2, _cut(kr.encode_offset_commit(2, "g-malformed", {("t", 0): (1, "m")}), 0.7)),
    "commit-v8-truncated": (kr.API_OFFSET_COMMIT, 8, _cut(kr.encode_offset_commit(8, "g-malformed", {("t", 0): (1, "m")}), 0.9)),
    "fetch-v1-truncated": (kr.API_OFFSET_FETCH, 1, _cut(kr.encode_offset_fetch(1, "g-malformed", [("t", 0)]), 0.5)),
    "describe-v0-huge-count": (kr.API_DESCRIBE_GROUPS, 0, kr.Writer().int32(0x7FFFFFFF).string("g").done()),
    "leave-v3-truncated": (kr.API_LEAVE_GROUP, 3, _cut(kr.encode_leave_group(3, "g-malformed", [("m", None)]), 0.8)),
    "delete-v1-empty-body": (kr.API_DELETE_GROUPS, 1, b""),
    "offset-delete-truncated": (kr.API_OFFSET_DELETE, 0, _cut(kr.encode_offset_delete(0, "g-malformed", [("t", 0)]), 0.6)),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_group_request_closes_connection(gb, case):
    api, version, body = MALFORMED[case]
    group = unique("g-bystander")
    m = Member(gb, group, ["t"])
    try:
        join_and_sync(m)
        with gb.conn() as c:
            c.send_raw(_frame(api, version, body))
            assert c.wait_closed(5.0), f"the broker kept the connection open after {case}"
        served(gb)
        # The group on another connection is unaffected, and new groups still form.
        assert m.heartbeat() == 0
        other = Member(gb, unique("g-after"), ["t"])
        try:
            join_and_sync(other)
        finally:
            other.close()
    finally:
        m.close()


# ---------------------------------------------------------------------------------------------
# Static membership


def test_static_member_rejoin_fences_old_member_id(gb):
    group = unique("g-static")
    inst = "instance-1"
    first = Member(gb, group, ["t"], instance=inst)
    second = Member(gb, group, ["t"], instance=inst)
    try:
        res = first.join_send().result()
        # A static member needs no MEMBER_ID_REQUIRED round.
        assert res["error_code"] == 0, res
        first.joined(res)
        assert first.is_leader and first.generation == 1
        assert first.members == [{"member_id": first.member_id, "group_instance_id": inst,
                                  "metadata": first.protocols[0][1]}]
        assignment = kr.consumer_assignment({"t": [0]})
        assert first.sync({first.member_id: assignment})["assignment"] == assignment
        assert first.heartbeat() == 0
        old_id = first.member_id

        # The same instance restarts and joins with no member id.
        res = second.join_send().result()
        assert res["error_code"] == 0, res
        second.joined(res)
        assert second.member_id and second.member_id != old_id
        assert first.heartbeat() == kr.FENCED_INSTANCE_ID
        assert first.heartbeat(version=0) == kr.UNKNOWN_MEMBER_ID
        assert first.sync({})["error_code"] == kr.FENCED_INSTANCE_ID
        assert first.join_send().result()["error_code"] == kr.FENCED_INSTANCE_ID
        topic = ensure_topic(first.conn, unique("static"))
        assert first.commit({(topic, 0): (1, "")}, version=7) == {(topic, 0): kr.FENCED_INSTANCE_ID}

        s = second.sync({second.member_id: assignment} if second.is_leader else {})
        assert s["error_code"] == 0 and s["assignment"] == assignment, s
        assert second.heartbeat() == 0

        # Once more with JoinGroup v9: the rejoining static leader of a stable group gets the
        # members but is told to skip the assignment (KIP-814); the group keeps its generation.
        third = Member(gb, group, ["t"], instance=inst, version=9)
        try:
            res = third.join_send().result()
            assert res["error_code"] == 0, res
            third.joined(res)
            assert third.member_id not in (old_id, second.member_id)
            assert (res["generation_id"], res["leader"], res["skip_assignment"]) == (1, third.member_id, True), res
            assert [(m["member_id"], m["group_instance_id"]) for m in res["members"]] == [(third.member_id, inst)]
            assert second.heartbeat() == kr.FENCED_INSTANCE_ID
            s = third.sync({})
            assert s["error_code"] == 0 and s["assignment"] == assignment, s
            assert third.heartbeat() == 0
        finally:
            third.close()

        with gb.conn() as c:
            g = describe(c, group, version=4)
            assert g["state"] == "Stable"
            assert [(m["member_id"], m["group_instance_id"], m["assignment"]) for m in g["members"]] == \
                [(third.member_id, inst, assignment)]
            left = c.leave_group(group, [(old_id, inst)], version=3)
            assert left["members"][0]["error_code"] == kr.FENCED_INSTANCE_ID, left
            left = c.leave_group(group, [(third.member_id, inst)], version=3)
            assert left["error_code"] == 0 and left["members"][0]["error_code"] == 0, left
            assert describe(c, group)["state"] == "Empty"
    finally:
        first.close()
        second.close()


# ---------------------------------------------------------------------------------------------
# Durability


def test_committed_offsets_survive_restart_and_crash(gb):
    topic = unique("dur")
    simple, managed, deleted = unique("g-dur-simple"), unique("g-dur-managed"), unique("g-dur-deleted")
    parts = [(topic, p) for p in range(3)]
    with gb.conn() as c:
        c.create_topic(topic, partitions=3)
        assert c.offset_commit(simple, {tp: (tp[1] + 1, f"s{tp[1]}") for tp in parts}) == {tp: 0 for tp in parts}
        assert c.offset_commit(deleted, {(topic, 0): (5, "gone")}) == {(topic, 0): 0}
        assert c.delete_groups([deleted]) == {deleted: 0}
    m = Member(gb, managed, [topic])
    try:
        join_and_sync(m)
        assert m.commit({(topic, 0): (100, "ü-managed"), (topic, 1): (101, "")}, version=7) == {(topic, 0): 0, (topic, 1): 0}
        # A later commit overwrites an earlier one; an OffsetDelete removes one.
        assert m.commit({(topic, 1): (102, "later")}) == {(topic, 1): 0}
        assert m.conn.leave_group(managed, [(m.member_id, None)], version=3)["error_code"] == 0
    finally:
        m.close()
    with gb.conn() as c:
        assert c.offset_commit(simple, {(topic, 2): (30, "removed")}) == {(topic, 2): 0}
        assert c.offset_delete(simple, [(topic, 2)])["partitions"] == {(topic, 2): 0}

    expect_simple = {(topic, 0): (1, "s0"), (topic, 1): (2, "s1")}
    expect_managed = {(topic, 0): (100, "ü-managed"), (topic, 1): (102, "later")}

    def check(what):
        with gb.conn() as c:
            assert fetch_offsets(c, simple, [(topic, 0), (topic, 1)]) == expect_simple, what
            assert_no_offset(c, simple, [(topic, 2)])
            assert fetch_offsets(c, managed, sorted(expect_managed), version=5) == expect_managed, what
            assert_no_offset(c, deleted, [(topic, 0)])
            assert fetch_offsets(c, simple, None, version=5) == expect_simple, what

    check("before restart")
    gb.restart()
    check("after restart")
    with gb.conn() as c:
        assert describe(c, simple)["state"] == "Empty"
        assert c.offset_commit(simple, {(topic, 0): (7, "after-restart")}, version=8) == {(topic, 0): 0}
        expect_simple[(topic, 0)] = (7, "after-restart")
        assert c.offset_commit(managed, {(topic, 2): (9, "x" * 300)}) == {(topic, 2): 0}
        expect_managed[(topic, 2)] = (9, "x" * 300)
    check("after new commits")
    gb.crash_restart()
    check("after SIGKILL and restart")
    with gb.conn() as c:
        assert fetch_offsets(c, managed, [(topic, 2)]) == {(topic, 2): (9, "x" * 300)}
    gb.crash_restart()
    check("after a second SIGKILL")


def test_group_membership_survives_restart(broker_factory):
    """Group metadata is stored with the offsets: after a restart (clean or SIGKILL) the member
    carries on with its id and generation; one that never comes back still expires."""
    b = broker_factory(settings={"group.min.session.timeout.ms": "500", "group.initial.rebalance.delay.ms": "0"})
    group, gone = unique("g-keep"), unique("g-gone")
    m = Member(b, group, ["t"], session_timeout_ms=10000)
    q = Member(b, gone, ["t"], session_timeout_ms=1000, rebalance_timeout_ms=1000)
    try:
        assignment = join_and_sync(m, b"kept-assignment")
        join_and_sync(q)
        for restart in (b.restart, b.crash_restart):
            m.close()
            restart()
            m.conn = b.conn(timeout=20)
            assert m.heartbeat() == 0
            with b.conn() as c:
                g = describe(c, group)
                assert g["state"] == "Stable" and [(x["member_id"], x["assignment"]) for x in g["members"]] == \
                    [(m.member_id, assignment)], g
        with b.conn() as c:
            wait_for(lambda: describe(c, gone)["state"] == "Empty", "the member that never came back to expire",
                     timeout=4.0, interval=0.1)
    finally:
        m.close()
        q.close()


# ---------------------------------------------------------------------------------------------
# Several shards


def test_groups_on_several_shards(broker_factory):
    b = broker_factory(cores=2, settings=dict(NO_DELAY))
    topic = unique("shards")
    groups = [unique(f"g-shard{i}") for i in range(8)]
    with b.conn() as c:
        c.create_topic(topic, partitions=2)
    members = []
    try:
        for i, g in enumerate(groups):
            m1 = Member(b, g, [topic], version=5 if i % 2 else 0)
            m2 = Member(b, g, [topic])
            members += [m1, m2]
            join_and_sync(m1)
            add_second_member(m1, m2)
        with b.conn() as c:
            for version in (0, 4):
                listed = c.list_groups(version=version)["groups"]
                missing = [g for g in groups if g not in listed]
                assert not missing, f"ListGroups v{version} misses {missing}"
                for g in groups:
                    assert listed[g]["protocol_type"] == "consumer"
                    if version >= 4:
                        assert listed[g]["group_state"] == "Stable"
            described = c.describe_groups(groups + [unique("g-none")], version=4)
            for g in groups:
                assert described[g]["state"] == "Stable" and len(described[g]["members"]) == 2, described[g]
            node = c.metadata([], version=1)["brokers"][0]["node_id"]
            res = c.find_coordinator("", version=4, keys=groups)
            assert sorted(co["key"] for co in res["coordinators"]) == sorted(groups)
            assert all(co["error_code"] == 0 and co["node_id"] == node for co in res["coordinators"])
        for i, m in enumerate(members):
            assert m.heartbeat() == 0
            assert m.commit({(topic, i % 2): (1000 + i, m.group)}) == {(topic, i % 2): 0}
        with b.conn() as c:
            for gi, g in enumerate(groups):
                got = fetch_offsets(c, g, [(topic, 0), (topic, 1)])
                assert got == {(topic, 0): (1000 + 2 * gi, g), (topic, 1): (1000 + 2 * gi + 1, g)}, got
        for m in members:
            assert m.conn.leave_group(m.group, [(m.member_id, None)], version=3)["error_code"] == 0
        with b.conn() as c:
            # After the first member of each group left, the second was in a rebalance and left
            # too; every group is now empty and can be deleted in one request.
            described = c.describe_groups(groups, version=0)
            assert all(described[g]["state"] == "Empty" for g in groups), described
            assert c.delete_groups(groups) == {g: 0 for g in groups}
            listed = c.list_groups(version=0)["groups"]
            assert not set(groups) & set(listed)
    finally:
        for m in members:
            m.close()
