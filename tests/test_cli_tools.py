"""The `strom` command-line tools (topic, produce, consume, group, cluster, completions) run
as subprocesses against a real broker, cross-checked with confluent-kafka."""

import json
import socket
import subprocess
import time

import pytest
from confluent_kafka import Consumer, Producer

from conftest import HOST, free_port, strom_bin, unique

TOOL_TIMEOUT_S = 60


def strom(broker, *args, input=None, check=True, timeout=TOOL_TIMEOUT_S, brokers=None):
    """Runs `strom ARGS -b <broker>`; returns the CompletedProcess."""
    cmd = [str(strom_bin()), *args, "-b", brokers or broker.bootstrap]
    p = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} exited {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}")
    return p


def strom_json(broker, *args, **kw):
    return json.loads(strom(broker, *args, "--format", "json", **kw).stdout)


def assert_fails(p, needle):
    """A failed tool run: non-zero exit, one clear line on stderr containing `needle`."""
    assert p.returncode != 0, p
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, f"expected one error line, got: {p.stderr!r}"
    assert lines[0].startswith("strom: error: "), lines
    assert needle in lines[0], lines


def consume_lines(broker, topic, *args):
    out = strom(broker, "consume", topic, *args).stdout
    return out.splitlines()


def group_consumer(broker, group, **extra):
    conf = {"bootstrap.servers": broker.bootstrap, "group.id": group, "auto.offset.reset": "earliest",
            "enable.auto.commit": False, "session.timeout.ms": 6000}
    conf.update(extra)
    return Consumer(conf)


# -- help and completions --

HELP_PATHS = [
    [], ["serve"], ["topic"], ["topic", "create"], ["topic", "list"], ["topic", "describe"], ["topic", "delete"],
    ["topic", "alter-config"], ["topic", "add-partitions"], ["produce"], ["consume"], ["group"], ["group", "list"],
    ["group", "describe"], ["group", "delete"], ["group", "reset-offsets"], ["cluster"], ["cluster", "info"],
    ["completions"],
]


@pytest.mark.parametrize("path", HELP_PATHS, ids=lambda p: " ".join(p) or "strom")
def test_help_everywhere(path):
    p = subprocess.run([str(strom_bin()), *path, "--help"], capture_output=True, text=True, timeout=10)
    assert p.returncode == 0, p.stderr
    assert "Usage: strom" in p.stdout


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish", "elvish", "powershell"])
def test_completions(shell):
    p = subprocess.run([str(strom_bin()), "completions", shell], capture_output=True, text=True, timeout=10)
    assert p.returncode == 0, p.stderr
    assert "strom" in p.stdout and "reset-offsets" in p.stdout


def test_unknown_subcommand_fails():
    p = subprocess.run([str(strom_bin()), "topci", "list"], capture_output=True, text=True, timeout=10)
    assert p.returncode != 0 and "topci" in p.stderr


# -- topics --

def test_topic_lifecycle(broker):
    t = unique("cli-topic")
    out = strom(broker, "topic", "create", t, "-p", "3", "-c", "retention.ms=3600000").stdout
    assert t in out and "created" in out
    assert_fails(strom(broker, "topic", "create", t, check=False), "already exists")
    assert "exists" in strom(broker, "topic", "create", t, "--if-not-exists").stdout

    listed = strom_json(broker, "topic", "list")
    assert {"name": t, "partitions": 3, "replicas": 1, "internal": False} in listed
    assert t in strom(broker, "topic", "list").stdout

    d = strom_json(broker, "topic", "describe", t)
    assert d["name"] == t and len(d["partitions"]) == 3
    assert [p["partition"] for p in d["partitions"]] == [0, 1, 2]
    assert all(p["high_watermark"] == 0 and p["log_start_offset"] == 0 for p in d["partitions"])
    assert d["configs"]["retention.ms"] == {"value": "3600000", "source": "topic"}
    assert d["id"] != "00000000-0000-0000-0000-000000000000"
    table = strom(broker, "topic", "describe", t).stdout
    assert "HIGH-WATERMARK" in table and "retention.ms" in table
    assert "cleanup.policy" in strom_json(broker, "topic", "describe", t, "--all-configs")["configs"]

    strom(broker, "topic", "alter-config", t, "--set", "cleanup.policy=compact", "--delete", "retention.ms")
    configs = strom_json(broker, "topic", "describe", t)["configs"]
    assert configs == {"cleanup.policy": {"value": "compact", "source": "topic"}}
    assert_fails(strom(broker, "topic", "alter-config", t, "--set", "retention.ms=banana", check=False), t)
    assert_fails(strom(broker, "topic", "alter-config", t, check=False), "nothing to change")

    assert "3 -> 5" in strom(broker, "topic", "add-partitions", t, "-n", "2").stdout
    assert len(strom_json(broker, "topic", "describe", t)["partitions"]) == 5
    strom(broker, "topic", "add-partitions", t, "--total", "6")
    assert len(strom_json(broker, "topic", "describe", t)["partitions"]) == 6
    assert_fails(strom(broker, "topic", "add-partitions", t, "--total", "2", check=False), t)

    assert "deleted" in strom(broker, "topic", "delete", t).stdout
    assert t not in [x["name"] for x in strom_json(broker, "topic", "list")]
    assert_fails(strom(broker, "topic", "describe", t, check=False), f"topic {t} does not exist")
    assert_fails(strom(broker, "topic", "delete", t, check=False), f"topic {t} does not exist")


def test_topic_create_bad_config_is_an_error(broker):
    t = unique("cli-badcfg")
    assert_fails(strom(broker, "topic", "create", t, "-c", "cleanup.policy=sometimes", check=False), "cleanup.policy")
    assert_fails(strom(broker, "topic", "create", t, "-c", "novalue", check=False), "KEY=VALUE")


# -- produce and consume --

def test_produce_keys_headers_and_cross_client_read(broker):
    t = unique("cli-produce")
    strom(broker, "topic", "create", t, "-p", "4")
    lines = [f"key{i}\tvalue {i}" for i in range(40)] + ["no separator here"]
    p = strom(broker, "produce", t, "-k", "\t", "-H", "source=cli", "-H", "n=1", input="\n".join(lines) + "\n")
    assert "produced 41 record(s)" in p.stderr

    # Keys go where Kafka's default partitioner puts them: compare with librdkafka's murmur2.
    ref = Producer({"bootstrap.servers": broker.bootstrap, "partitioner": "murmur2_random"})
    ref_topic = unique("cli-ref")
    strom(broker, "topic", "create", ref_topic, "-p", "4")
    expected = {}

    def delivered(err, msg):
        assert err is None, err
        expected[msg.key().decode()] = msg.partition()

    for i in range(40):
        ref.produce(ref_topic, key=f"key{i}", value=b"x", on_delivery=delivered)
    assert ref.flush(30) == 0

    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique("g"), "auto.offset.reset": "earliest"})
    c.subscribe([t])
    got = []
    deadline = time.time() + 30
    while len(got) < 41 and time.time() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            got.append(m)
    c.close()
    assert len(got) == 41
    for m in got:
        assert dict(m.headers()) == {"source": b"cli", "n": b"1"}
        if m.key() is None:
            assert m.value() == b"no separator here"
        else:
            k = m.key().decode()
            assert m.value() == f"value {k[3:]}".encode()
            assert m.partition() == expected[k], k


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_produce_compression_and_acks(broker, codec):
    t = unique("cli-z")
    strom(broker, "topic", "create", t, "-p", "1")
    for acks in ["all", "1", "0"]:
        strom(broker, "produce", t, "-z", codec, "--acks", acks, "-q", input="".join(f"{acks}-{i}\n" for i in range(50)))
    deadline = time.time() + 10
    while time.time() < deadline:
        d = strom_json(broker, "topic", "describe", t)
        if d["partitions"][0]["high_watermark"] == 150:
            break
        time.sleep(0.1)
    vals = consume_lines(broker, t, "-e")
    assert vals == [f"{a}-{i}" for a in ["all", "1", "0"] for i in range(50)]


def test_produce_to_partition_json_summary(broker):
    t = unique("cli-part")
    strom(broker, "topic", "create", t, "-p", "3")
    s = strom_json(broker, "produce", t, "-p", "2", input="a\nb\nc\n")
    assert s["records"] == 3
    assert s["partitions"] == [{"partition": 2, "records": 3, "first_offset": 0, "last_offset": 2}]
    assert_fails(strom(broker, "produce", t, "-p", "7", input="x\n", check=False), "no partition 7")
    assert_fails(strom(broker, "produce", t, "--acks", "2", input="x\n", check=False), "--acks")
    assert_fails(strom(broker, "produce", t, "-z", "brotli", input="x\n", check=False), "unknown compression")


def test_consume_positions_templates_and_json(broker):
    t = unique("cli-consume")
    strom(broker, "topic", "create", t, "-p", "2")
    strom(broker, "produce", t, "-p", "0", "-k", "=", "-H", "h=1", input="".join(f"k{i}=v{i}\n" for i in range(10)))
    # One millisecond past now: the records above may carry this very millisecond (the produce
    # can finish within it), and a timestamp lookup finds records at or after the time.
    before = int(time.time() * 1000) + 1
    time.sleep(0.05)
    strom(broker, "produce", t, "-p", "1", input="late0\nlate1\n")

    assert consume_lines(broker, t, "-p", "0", "-e") == [f"v{i}" for i in range(10)]
    assert consume_lines(broker, t, "-p", "0", "-o", "7", "-e") == ["v7", "v8", "v9"]
    assert consume_lines(broker, t, "-p", "0", "-o", "-2", "-e") == ["v8", "v9"]
    assert consume_lines(broker, t, "-o", "end", "-e") == []
    assert consume_lines(broker, t, "-n", "3", "-p", "0") == ["v0", "v1", "v2"]
    assert sorted(consume_lines(broker, t, "--from-timestamp", str(before), "-e")) == ["late0", "late1"]
    assert sorted(consume_lines(broker, t, "-o", f"@{before}", "-e")) == ["late0", "late1"]

    out = consume_lines(broker, t, "-p", "0", "-n", "2", "-f", "%t|%p|%o|%k|%v|%h|%K|%S\\n")
    assert out == [f"{t}|0|0|k0|v0|h=1|2|2", f"{t}|0|1|k1|v1|h=1|2|2"]
    ts = consume_lines(broker, t, "-p", "1", "-n", "1", "-f", "%T\\n")
    assert int(ts[0]) >= before

    recs = [json.loads(l) for l in strom(broker, "consume", t, "-p", "0", "-n", "2", "--format", "json").stdout.splitlines()]
    assert recs[1] == {"topic": t, "partition": 0, "offset": 1, "timestamp": recs[1]["timestamp"], "key": "k1",
                       "value": "v1", "headers": [{"key": "h", "value": "1"}]}
    assert_fails(strom(broker, "consume", t, "-o", "soon", check=False), "bad --offset")
    assert_fails(strom(broker, "consume", t, "-p", "0", "-o", "99", "-n", "1", check=False), "out of range")


# -- groups --

def committed_by_partition(broker, group):
    d = strom_json(broker, "group", "describe", group)[0]
    return {p["partition"]: p for p in d["partitions"]}, d


def test_group_describe_lag_and_reset_offsets(broker):
    t = unique("cli-grp")
    g = unique("cli-g")
    strom(broker, "topic", "create", t, "-p", "2")
    strom(broker, "produce", t, "-p", "0", input="".join(f"a{i}\n" for i in range(6)))
    strom(broker, "produce", t, "-p", "1", input="".join(f"b{i}\n" for i in range(4)))

    first = consume_lines(broker, t, "-g", g, "-n", "7")
    assert len(first) == 7
    parts, d = committed_by_partition(broker, g)
    assert d["state"] == "Empty" and d["members"] == 0
    assert sum(p["current_offset"] for p in parts.values()) == 7
    assert all(p["log_end_offset"] == {0: 6, 1: 4}[n] for n, p in parts.items())
    assert d["total_lag"] == 3 and sum(p["lag"] for p in parts.values()) == 3
    table = strom(broker, "group", "describe", g).stdout
    assert "LAG" in table and "TOTAL-LAG" in table and t in table

    # The next member of the group reads exactly the rest.
    rest = consume_lines(broker, t, "-g", g, "-e")
    assert sorted(first + rest) == sorted([f"a{i}" for i in range(6)] + [f"b{i}" for i in range(4)])
    assert committed_by_partition(broker, g)[1]["total_lag"] == 0

    # Dry run shows the plan and changes nothing.
    plan = strom_json(broker, "group", "reset-offsets", g, "-t", t, "--to-earliest", "--dry-run")
    assert plan["dry_run"] and {p["new_offset"] for p in plan["partitions"]} == {0}
    assert committed_by_partition(broker, g)[1]["total_lag"] == 0
    assert consume_lines(broker, t, "-g", g, "-e") == []

    strom(broker, "group", "reset-offsets", g, "-t", t, "--to-earliest")
    assert committed_by_partition(broker, g)[1]["total_lag"] == 10
    assert len(consume_lines(broker, t, "-g", g, "-e")) == 10

    strom(broker, "group", "reset-offsets", g, "-t", f"{t}:0", "--to-offset", "4")
    assert consume_lines(broker, t, "-g", g, "-e") == ["a4", "a5"]

    strom(broker, "group", "reset-offsets", g, "--all-topics", "--shift-by", "-1")
    assert sorted(consume_lines(broker, t, "-g", g, "-e")) == ["a5", "b3"]

    # Offsets beyond the log are clamped to it, as Kafka's tool does.
    plan = strom_json(broker, "group", "reset-offsets", g, "-t", t, "--to-offset", "1000", "--dry-run")
    assert {p["partition"]: p["new_offset"] for p in plan["partitions"]} == {0: 6, 1: 4}

    time.sleep(0.05)
    cut = int(time.time() * 1000)
    time.sleep(0.05)
    strom(broker, "produce", t, "-p", "1", input="after\n")
    strom(broker, "group", "reset-offsets", g, "-t", t, "--to-datetime", str(cut))
    assert consume_lines(broker, t, "-g", g, "-e") == ["after"]
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(cut / 1000 - 3600))
    strom(broker, "group", "reset-offsets", g, "-t", t, "--to-datetime", iso)
    assert len(consume_lines(broker, t, "-g", g, "-e")) == 11

    strom(broker, "group", "reset-offsets", g, "-t", t, "--to-latest")
    assert committed_by_partition(broker, g)[1]["total_lag"] == 0


def test_group_with_active_member_list_describe_delete(broker):
    t = unique("cli-active")
    g = unique("cli-ga")
    strom(broker, "topic", "create", t, "-p", "2")
    strom(broker, "produce", t, input="x\ny\n")
    c = group_consumer(broker, g, **{"client.id": "cli-test-client"})
    c.subscribe([t])
    deadline = time.time() + 30
    while not c.assignment() and time.time() < deadline:
        c.poll(0.2)
    assert c.assignment()
    try:
        d = strom_json(broker, "group", "describe", g)[0]
        assert d["state"] == "Stable" and d["members"] == 1 and d["protocol"]
        assert {p["partition"] for p in d["partitions"]} == {0, 1}
        assert all(p["client_id"] == "cli-test-client" for p in d["partitions"])
        listed = strom_json(broker, "group", "list")
        assert any(x["group"] == g and x["state"] == "Stable" and x["protocol_type"] == "consumer" for x in listed)
        assert_fails(strom(broker, "group", "reset-offsets", g, "-t", t, "--to-earliest", check=False), "active member")
        assert_fails(strom(broker, "group", "delete", g, check=False), "still has members")
    finally:
        c.close()
    strom(broker, "group", "delete", g)
    assert g not in [x["group"] for x in strom_json(broker, "group", "list")]
    assert_fails(strom(broker, "group", "delete", g, check=False), "does not exist")


def test_group_consumers_share_partitions(broker):
    """A `strom consume -g` member takes part in a group with a librdkafka member."""
    t = unique("cli-share")
    g = unique("cli-gs")
    strom(broker, "topic", "create", t, "-p", "2")
    strom(broker, "produce", t, "-p", "0", input="".join(f"p0-{i}\n" for i in range(5)))
    strom(broker, "produce", t, "-p", "1", input="".join(f"p1-{i}\n" for i in range(5)))
    c = group_consumer(broker, g)
    c.subscribe([t])
    deadline = time.time() + 30
    while not c.assignment() and time.time() < deadline:
        c.poll(0.2)
    proc = subprocess.Popen([str(strom_bin()), "consume", t, "-g", g, "-b", broker.bootstrap],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            c.poll(0.2)
            if len(c.assignment()) == 1:
                break
        assert len(c.assignment()) == 1, "the CLI member should have taken one partition"
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        c.close()
    out = proc.stdout.read().splitlines()
    assert len(out) == 5 and len({l.split("-")[0] for l in out}) == 1, out
    assert proc.returncode in (0, -15)


# -- cluster --

def test_cluster_info(broker):
    t = unique("cli-info")
    strom(broker, "topic", "create", t, "-p", "2")
    info = strom_json(broker, "cluster", "info")
    assert info["brokers"] == [{"node_id": 0, "host": HOST, "port": broker.port, "rack": None}]
    assert info["controller"] == 0 and info["cluster_id"]
    assert info["topics"] >= 1 and info["partitions"] >= 2
    assert info["api_versions"]["Produce"]["max"] >= 9 and "Fetch" in info["api_versions"]
    table = strom(broker, "cluster", "info").stdout
    assert "CONTROLLER" in table and "MAX-VERSION" in table and str(broker.port) in table


# -- errors --

def test_unknown_topic_errors(broker):
    t = unique("cli-missing")
    for args in (["produce", t], ["consume", t, "-n", "1"], ["topic", "describe", t], ["topic", "delete", t],
                 ["topic", "add-partitions", t, "-n", "1"]):
        p = strom(broker, *args, input="x\n", check=False, timeout=30)
        assert_fails(p, f"topic {t} does not exist")
    # Nothing was created on the way.
    assert t not in [x["name"] for x in strom_json(broker, "topic", "list")]


def test_unreachable_broker_fails_fast():
    port = free_port()
    for args in (["topic", "list"], ["cluster", "info"], ["produce", "t"], ["consume", "t"], ["group", "list"]):
        t0 = time.time()
        p = subprocess.run([str(strom_bin()), *args, "-b", f"{HOST}:{port}", "--timeout-ms", "2000"], input="x\n",
                           capture_output=True, text=True, timeout=30)
        assert time.time() - t0 < 10
        assert_fails(p, "cannot reach any broker")
        assert "Connection refused" in p.stderr


def test_silent_broker_times_out():
    """A peer that accepts connections but never answers ends in a clear timeout."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        s.listen(16)
        port = s.getsockname()[1]
        t0 = time.time()
        p = subprocess.run([str(strom_bin()), "topic", "list", "-b", f"{HOST}:{port}", "--timeout-ms", "1000"],
                           capture_output=True, text=True, timeout=30)
        elapsed = time.time() - t0
    assert elapsed < 10
    assert_fails(p, "no ApiVersions response within 1000 ms")


def test_second_bootstrap_address_is_used(broker):
    dead = f"{HOST}:{free_port()}"
    out = strom(broker, "cluster", "info", "--format", "json", brokers=f"{dead},{broker.bootstrap}").stdout
    assert json.loads(out)["brokers"][0]["port"] == broker.port
