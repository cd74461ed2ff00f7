"""strom-bench against a real broker: short bounded runs whose reports must be well-formed.
These check the tool, not performance: no figure is compared with a threshold."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, strom_bin, unique


def bench_bin() -> Path:
    return strom_bin().parent / "strom-bench"


def bench(*args, timeout=90, check=True):
    p = subprocess.run([str(bench_bin()), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"strom-bench {' '.join(map(str, args))} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def latency_ok(lat):
    assert lat["count"] > 0
    assert 0 < lat["min_us"] <= lat["p50_us"] <= lat["p90_us"] <= lat["p99_us"] <= lat["p999_us"] <= lat["max_us"]


def load(path: Path):
    report = json.loads(path.read_text())
    assert report["format"] == 1 and report["tool"] == "strom-bench"
    assert report["git_revision"]
    assert report["started_at"].endswith("Z")
    assert report["machine"]["cpus"] >= 1
    return report


def test_fixed_rate_run_reports_publish_and_end_to_end_latency(broker, tmp_path):
    out, svg = tmp_path / "run.json", tmp_path / "run.svg"
    p = bench("-b", broker.bootstrap, "run", "--topic", unique("bench"), "--partitions", 2, "--producers", 2,
              "--consumers", 1, "--rate", 4000, "--message-bytes", 200, "--linger-ms", 1, "--warmup-s", 0.5,
              "--duration-s", 2, "--json-out", out, "--svg-out", svg)
    # A progress line per second on stderr, the table on stdout.
    assert "produce" in p.stderr and "e2e ms" in p.stderr
    assert "publish" in p.stdout and "end-to-end" in p.stdout
    r = load(out)
    assert r["broker"] == broker.bootstrap
    assert r["broker_pid"] == broker.proc.pid
    w = r["workload"]
    assert (w["partitions"], w["producers"], w["consumers"], w["message_bytes"]) == (2, 2, 1, 200)
    res = r["result"]
    assert res["offered_messages_per_s"] == 4000
    assert 1.5 < res["measured_s"] < 3
    assert res["produced"]["messages"] > 0 and res["produced"]["errors"] == 0
    assert res["consumed"]["messages"] > 0
    latency_ok(res["publish_latency"])
    latency_ok(res["e2e_latency"])
    # The broker runs on this machine, so its CPU and memory are reported.
    assert res["broker"]["cpu_s"] >= 0 and res["broker"]["rss_mib_end"] > 0
    assert res["broker"]["cpu_s_per_gib_in"] is not None
    assert len(res["timeline"]) >= 2
    text = svg.read_text()
    assert text.startswith("<svg") and text.rstrip().endswith("</svg>")
    assert "publish p99" in text and "NaN" not in text


def test_keyed_compressed_acks_all_run_with_a_consumer_group(broker, tmp_path):
    out = tmp_path / "group.json"
    bench("-b", broker.bootstrap, "run", "--topic", unique("bench"), "--partitions", 3, "--consumers", 2,
          "--group", unique("g"), "--keys", "random:50", "--compression", "lz4", "--acks", -1, "--rate", "1MB/s",
          "--warmup-s", 0, "--duration-s", 2, "--json-out", out, "--quiet")
    res = load(out)["result"]
    assert res["produced"]["messages"] > 0 and res["produced"]["errors"] == 0
    assert res["consumed"]["messages"] > 0
    latency_ok(res["e2e_latency"])


def test_catch_up_read_consumes_what_is_there_and_compare_prints_ratios(broker, tmp_path):
    topic = unique("bench")
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    bench("-b", broker.bootstrap, "run", "--topic", topic, "--rate", "max", "--max-messages", 5000,
          "--warmup-s", 0, "--duration-s", 5, "--acks", 1, "--quiet", "--json-out", a)
    produced = load(a)["result"]["produced"]["messages"]
    assert produced == 5000
    bench("-b", broker.bootstrap, "run", "--topic", topic, "--producers", 0, "--consumers", 1,
          "--consume-from", "earliest", "--warmup-s", 0, "--duration-s", 20, "--quiet", "--json-out", b)
    consumed = load(b)["result"]["consumed"]
    assert consumed["messages"] == 5000
    assert consumed["mb_per_s"] > 0
    # Reports with different sides share the client figures at least.
    p = bench("compare", a, a)
    assert "B/A" in p.stdout and "result.produced.messages_per_s" in p.stdout


def test_find_max_sweeps_and_reports_steps(broker, tmp_path):
    out, svg = tmp_path / "fm.json", tmp_path / "fm.svg"
    bench("-b", broker.bootstrap, "run", "--topic", unique("bench"), "--find-max", "--step-s", 1, "--warmup-s", 0.2,
          "--fractions", "0.1,0.3", "--target-p99-ms", 1000, "--linger-ms", 0, "--quiet", "--json-out", out,
          "--svg-out", svg, timeout=120)
    fm = load(out)["find_max"]
    steps = fm["steps"]
    assert steps[0]["offered_messages_per_s"] is None and steps[0]["achieved_messages_per_s"] > 0
    assert len(steps) >= 2
    for s in steps[1:]:
        assert s["offered_messages_per_s"] > 0 and s["verdict"]
    assert fm["target_p99_us"] == 1_000_000
    if fm["sustainable_messages_per_s"] is not None:
        assert fm["at_sustainable"]["produced"]["messages"] > 0
    assert "offered" in svg.read_text()


@pytest.mark.parametrize("args, message", [
    (["--rate", "fast"], "rate"),
    (["--keys", "sequential:4"], "keys"),
    (["--compression", "brotli"], "compression"),
    (["--acks", 2], "acks"),
    (["--producers", 0, "--consumers", 0], "at least one producer or consumer"),
])
def test_bad_workloads_are_refused_before_anything_is_sent(broker, args, message):
    p = bench("-b", broker.bootstrap, "run", *args, "--duration-s", 1, check=False, timeout=30)
    assert p.returncode == 1
    assert message in p.stderr


def test_a_workload_file_is_read_and_unknown_keys_are_refused(broker, tmp_path):
    good = tmp_path / "w.toml"
    good.write_text(f'topic = "{unique("bench")}"\npartitions = 2\nrate = "500"\nwarmup_s = 0.0\nduration_s = 1.0\n')
    out = tmp_path / "w.json"
    bench("-b", broker.bootstrap, "run", "--workload", good, "--quiet", "--json-out", out)
    r = load(out)
    assert r["workload"]["partitions"] == 2 and r["workload"]["rate"] == "500"
    bad = tmp_path / "bad.toml"
    bad.write_text("partitons = 2\n")
    p = bench("-b", broker.bootstrap, "run", "--workload", bad, check=False, timeout=30)
    assert p.returncode == 1 and "partitons" in p.stderr


def test_no_broker_is_a_clear_error(tmp_path):
    from conftest import free_port
    p = bench("-b", f"127.0.0.1:{free_port()}", "run", "--duration-s", 1, check=False, timeout=30)
    assert p.returncode == 1 and "connecting to" in p.stderr


def test_limits_measures_disk_and_loopback_and_a_run_relates_to_them(broker, tmp_path):
    limits = tmp_path / "limits.json"
    p = bench("limits", "--dir", tmp_path, "--write-mib", 16, "--syncs", 10, "--sendfile-mib", 16,
              "--max-seconds", 10, "--json-out", limits)
    assert "sendfile" in p.stdout
    l = json.loads(limits.read_text())
    for key in ("direct_write_mb_s", "direct_write_then_fdatasync_mb_s", "direct_write_fdatasync_each_mib_mb_s",
                "buffered_write_then_fdatasync_mb_s",
                "loopback_sendfile_mb_s"):
        assert l[key] > 0, key
    assert 0 < l["fdatasync_4k_us"]["p50"] <= l["fdatasync_4k_us"]["max"]
    assert not list(tmp_path.glob(".strom-limits-*")), "temporary files are removed"
    out = tmp_path / "run.json"
    bench("-b", broker.bootstrap, "run", "--topic", unique("bench"), "--consumers", 1, "--rate", 2000,
          "--warmup-s", 1, "--duration-s", 2, "--limits", limits, "--quiet", "--json-out", out)
    r = load(out)
    assert r["limits"]["direct_write_mb_s"] == l["direct_write_mb_s"]
    assert r["fraction_of_limits"]["produce_vs_direct_write"] > 0
    assert r["fraction_of_limits"]["consume_vs_loopback_sendfile"] > 0


def test_group_latency_benchmark_reports_json(broker_factory):
    b = broker_factory(settings={"group.initial.rebalance.delay.ms": "0"})
    p = bench("-b", b.bootstrap, "group", "--topic", unique("bench"), "--rounds", 2, "--heartbeat-ms", 50, "--json",
              timeout=120)
    report = json.loads(p.stdout)
    text = json.dumps(report)
    assert "join" in text and "rebalance" in text
    assert report["rounds"] == 2


def test_several_topics_each_with_its_producers_and_group(broker, tmp_path):
    out = tmp_path / "topics.json"
    prefix = unique("bench")
    p = bench("-b", broker.bootstrap, "run", "--topic", prefix, "--topics", 3, "--partitions", 2, "--producers", 1,
              "--consumers", 1, "--group", unique("g"), "--rate", 3000, "--warmup-s", 0, "--duration-s", 2,
              "--quiet", "--json-out", out)
    assert "3 topics" in p.stdout
    r = load(out)
    assert r["workload"]["topics"] == 3
    res = r["result"]
    # 3000 msg/s over all topics for 2 s; every record produced is consumed.
    assert 5000 <= res["produced"]["messages"] <= 6500
    assert res["consumed"]["messages"] == res["produced"]["messages"]
    latency_ok(res["e2e_latency"])
    from confluent_kafka.admin import AdminClient
    md = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10)
    for i in range(3):
        assert len(md.topics[f"{prefix}-{i}"].partitions) == 2


def describe_topic_configs(bootstrap, topic):
    from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType
    res = ConfigResource(ResourceType.TOPIC, topic)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    return {k: v.value for k, v in admin.describe_configs([res])[res].result(timeout=30).items()}


def test_topic_configs_are_sent_when_the_topic_is_created(broker, tmp_path):
    topic = unique("bench")
    out = tmp_path / "compact.json"
    p = bench("-b", broker.bootstrap, "run", "--topic", topic, "--keys", "random:100", "--rate", 2000,
              "--topic-config", "cleanup.policy=compact", "--topic-config", "segment.bytes=65536",
              "--warmup-s", 0, "--duration-s", 1, "--json-out", out)
    assert "topic configs: cleanup.policy=compact segment.bytes=65536" in p.stdout
    r = load(out)
    assert r["workload"]["topic_configs"] == {"cleanup.policy": "compact", "segment.bytes": "65536"}
    assert r["result"]["produced"]["messages"] > 0 and r["result"]["produced"]["errors"] == 0
    configs = describe_topic_configs(broker.bootstrap, topic)
    assert configs["cleanup.policy"] == "compact"
    assert configs["segment.bytes"] == "65536"
    # The same from a workload file (a table); the existing topic is reused, and says so.
    w = tmp_path / "w.toml"
    w.write_text(f'topic = "{topic}"\nkeys = "random:10"\nrate = "500"\nwarmup_s = 0.0\nduration_s = 0.5\n'
                 'topic_configs = { "cleanup.policy" = "delete" }\n')
    p = bench("-b", broker.bootstrap, "run", "--workload", w, "--quiet")
    assert "exists already" in p.stderr
    assert describe_topic_configs(broker.bootstrap, topic)["cleanup.policy"] == "compact"


def test_a_topic_config_the_broker_refuses_stops_the_run(broker):
    topic = unique("bench")
    p = bench("-b", broker.bootstrap, "run", "--topic", topic, "--topic-config", "no.such.config=1",
              "--duration-s", 1, check=False, timeout=30)
    assert p.returncode == 1
    assert f"creating topic {topic}" in p.stderr and "no.such.config" in p.stderr
    assert "InvalidConfig" in p.stderr
    p = bench("-b", broker.bootstrap, "run", "--topic", topic, "--topic-config", "segment.bytes=-5",
              "--duration-s", 1, check=False, timeout=30)
    assert p.returncode == 1 and "segment.bytes" in p.stderr
    # Nothing was produced: the topic was never created.
    from confluent_kafka.admin import AdminClient
    assert topic not in AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10).topics
    # Malformed flags and unkeyed records for a compacted topic are refused before anything is sent.
    p = bench("-b", broker.bootstrap, "run", "--topic-config", "segment.bytes", "--duration-s", 1,
              check=False, timeout=30)
    assert p.returncode == 1 and "KEY=VALUE" in p.stderr
    p = bench("-b", broker.bootstrap, "run", "--topic-config", "cleanup.policy=compact", "--duration-s", 1,
              check=False, timeout=30)
    assert p.returncode == 1 and "keyed records" in p.stderr
