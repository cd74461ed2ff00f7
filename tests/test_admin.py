"""The admin HTTP listener: health, readiness, status, Prometheus metrics, and the log format."""

import json
import socket
import time
import urllib.error
import urllib.request

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

import kafka_raw as kr
from conftest import HOST, free_port, port_has_listener, unique


def get(broker, path, method="GET", timeout=10.0):
    """(status, content type, body) of one request to the broker's admin port."""
    req = urllib.request.Request(broker.admin_url + path, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type"), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read().decode()


def raw_request(broker, data: bytes, timeout=10.0) -> bytes:
    with socket.create_connection((HOST, broker.admin_port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out


def scrape(broker):
    """{(sample name, frozenset(labels)): value} of /metrics, after checking it parses."""
    status, ctype, body = get(broker, "/metrics")
    assert status == 200
    assert ctype == "text/plain; version=0.0.4"
    samples = {}
    for family in text_string_to_metric_families(body):
        assert family.name.startswith("strom_"), family.name
        for s in family.samples:
            assert s.name.startswith("strom_"), s.name
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, frozenset((k, str(v)) for k, v in labels.items())), 0.0)


def produce(broker, topic, n, **extra):
    conf = {"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 5}
    conf.update(extra)
    p = Producer(conf)
    errors = []
    for i in range(n):
        p.produce(topic, value=f"v{i}".encode(), key=f"k{i}".encode(),
                  on_delivery=lambda err, msg: errors.append(err) if err else None)
    assert p.flush(30) == 0
    assert not errors, errors


def consume(broker, topic, n, group=None, commit=False):
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group or unique("g"),
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    got = []
    try:
        c.subscribe([topic])
        deadline = time.monotonic() + 30
        while len(got) < n and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            got.append(m)
        if commit and got:
            c.commit(asynchronous=False)
    finally:
        c.close()
    assert len(got) == n
    return got


def test_health_and_unknown_paths(broker):
    assert get(broker, "/v1/health")[::2] == (200, '{"status":"ok"}')
    assert get(broker, "/nope")[0] == 404
    assert get(broker, "/v1/health", method="POST")[0] == 405
    assert get(broker, "/metrics", method="DELETE")[0] == 405


def test_metrics_parse_and_count_produce_and_fetch(broker_factory):
    broker = broker_factory(cores=2)
    topic = unique("m")
    with broker.conn() as c:
        c.create_topic(topic, partitions=1)
    before = scrape(broker)
    n = 25
    produce(broker, topic, n)
    after = scrape(broker)
    assert value(after, "strom_requests_total", api="Produce") > value(before, "strom_requests_total", api="Produce")
    assert value(after, "strom_topic_bytes_in_total", topic=topic) > 0
    assert value(after, "strom_partition_log_end_offset", topic=topic, partition=0) == n
    assert value(after, "strom_partition_high_watermark", topic=topic, partition=0) == n
    assert value(after, "strom_partition_size_bytes", topic=topic, partition=0) > 0
    assert value(after, "strom_request_latency_seconds_count", api="Produce") >= 1
    assert value(after, "strom_request_latency_seconds_bucket", api="Produce", le="+Inf") >= 1
    # acks=all with the default log.flush.on.ack=true: every acknowledged batch was fdatasynced.
    assert value(after, "strom_fsync_latency_seconds_count") > 0
    assert sum(v for (name, _), v in after.items() if name == "strom_connections_accepted_total") >= 1
    for shard in range(2):
        assert ("strom_shard_task_queue_depth", frozenset({("shard", str(shard))})) in after
        assert ("strom_shard_cross_shard_messages_total", frozenset({("shard", str(shard))})) in after

    consume(broker, topic, n)
    fetched = scrape(broker)
    assert value(fetched, "strom_topic_bytes_out_total", topic=topic) > 0
    assert value(fetched, "strom_requests_total", api="Fetch") > value(after, "strom_requests_total", api="Fetch")


def test_request_errors_are_counted(broker):
    topic = unique("missing")
    before = scrape(broker)
    with broker.conn() as c:
        r = c.produce(topic, 0, kr.simple_batch([b"x"]), acks=1)
        assert r["error_code"] != 0
    after = scrape(broker)
    assert value(after, "strom_request_errors_total", api="Produce") == \
        value(before, "strom_request_errors_total", api="Produce") + 1


def test_group_lag(broker_factory):
    """Lag joins the committed offset (on the group's coordinator shard) with the high watermark
    (on the partition's shard); with two shards and two partitions at least one pair differs."""
    broker = broker_factory(cores=2)
    topic = unique("lag")
    group = unique("grp")
    with broker.conn() as c:
        c.create_topic(topic, partitions=2)
        for p in range(2):
            assert c.produce(topic, p, kr.simple_batch([b"x"] * 10), acks=-1)["error_code"] == 0
    consume(broker, topic, 20, group=group, commit=True)
    with broker.conn() as c:
        assert c.produce(topic, 0, kr.simple_batch([b"y"] * 4), acks=-1)["error_code"] == 0
    samples = scrape(broker)
    assert value(samples, "strom_group_lag", group=group, topic=topic, partition=0) == 4
    assert value(samples, "strom_group_lag", group=group, topic=topic, partition=1) == 0
    assert ("strom_group_lag", frozenset({("group", group), ("topic", topic), ("partition", "1")})) in samples


def test_status_lists_topics(broker_factory):
    broker = broker_factory(cores=2)
    topic = unique("st")
    with broker.conn() as c:
        c.create_topic(topic, partitions=3)
        assert c.produce(topic, 1, kr.simple_batch([b"a", b"b"]), acks=-1)["error_code"] == 0
    status, ctype, body = get(broker, "/v1/status")
    assert status == 200 and ctype == "application/json"
    doc = json.loads(body)
    assert doc["ready"] is True and doc["shards"] == 2 and doc["node_id"] == 0 and doc["version"]
    t = next(t for t in doc["topics"] if t["name"] == topic)
    parts = {p["partition"]: p for p in t["partitions"]}
    assert sorted(parts) == [0, 1, 2]
    assert parts[1]["log_end_offset"] == 2 and parts[1]["high_watermark"] == 2
    assert parts[0]["log_end_offset"] == 0 and parts[1]["log_start_offset"] == 0
    assert parts[1]["size_bytes"] > 0 and parts[1]["shard"] in (0, 1)


def test_ready_is_false_during_recovery(broker_factory):
    broker = broker_factory(settings={"test.fault.recovery.delay.ms": "3000"}, start=False)
    broker.start(wait=False)
    deadline = time.monotonic() + 10
    seen_not_ready = False
    while time.monotonic() < deadline:
        try:
            status, _, body = get(broker, "/v1/ready", timeout=2)
        except OSError:
            time.sleep(0.02)
            continue
        if status == 503:
            assert json.loads(body) == {"ready": False}
            seen_not_ready = True
            # Metrics answer without waiting for the recovering shards.
            samples = scrape(broker)
            assert value(samples, "strom_ready") == 0
            break
        time.sleep(0.02)
    assert seen_not_ready, "never saw /v1/ready answer 503 during the delayed recovery"
    deadline = time.monotonic() + 20
    status = None
    while time.monotonic() < deadline:
        status, _, body = get(broker, "/v1/ready")
        if status == 200:
            assert json.loads(body) == {"ready": True}
            break
        time.sleep(0.1)
    assert status == 200
    broker.wait_ready()
    assert value(scrape(broker), "strom_ready") == 1


def test_admin_disabled(broker_factory):
    broker = broker_factory(settings={"admin.listeners": ""})
    assert not port_has_listener(broker.admin_port)
    with pytest.raises(OSError):
        socket.create_connection((HOST, broker.admin_port), timeout=2).close()
    broker.stop()
    broker = broker_factory(settings={"admin.enable": "false"})
    assert not port_has_listener(broker.admin_port)


def test_admin_port_in_use_fails_startup(broker_factory):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        s.listen(1)
        taken = s.getsockname()[1]
        broker = broker_factory(settings={"admin.listeners": f"{HOST}:{taken}"}, start=False)
        broker.start(wait=False)
        code = broker.proc.wait(30)
    assert code != 0
    log = broker.log_text()
    assert "admin.listeners" in log and "in use" in log, log


def test_bad_http_requests_get_4xx_and_broker_survives(broker):
    assert raw_request(broker, b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert raw_request(broker, b"GET /metrics SPDY/3\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    big = b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    assert raw_request(broker, big).startswith(b"HTTP/1.1 431 ")
    # 200 short header lines fit in the size bound but not in the header count bound.
    many = b"GET /metrics HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(200)) + b"\r\n"
    assert len(many) < 8192
    assert raw_request(broker, many).startswith(b"HTTP/1.1 431 ")
    # A request head trickled in a few bytes at a time is answered like any other.
    with socket.create_connection((HOST, broker.admin_port), timeout=10) as s:
        head = b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n"
        for i in range(0, len(head), 5):
            s.sendall(head[i:i + 5])
            time.sleep(0.01)
        assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
    # A client that closes mid-request, and one that sends binary noise.
    with socket.create_connection((HOST, broker.admin_port), timeout=5) as s:
        s.sendall(b"GET /v1/hea")
    assert raw_request(broker, bytes(range(256)) * 4 + b"\r\n\r\n")[:12] in (b"HTTP/1.1 400", b"")
    assert get(broker, "/v1/health")[0] == 200
    broker.assert_alive()


def test_label_values_with_special_characters_parse(broker):
    """Group ids may hold any character; the exposition escapes quotes, backslashes and line
    feeds in label values so that a Prometheus text parser reads the id back unchanged."""
    topic = unique("esc")
    group = unique('g "quoted" \\ back\nline \u00fc')
    with broker.conn() as c:
        c.create_topic(topic, partitions=1)
        assert c.produce(topic, 0, kr.simple_batch([b"x"] * 3), acks=-1)["error_code"] == 0
    consume(broker, topic, 3, group=group, commit=True)
    samples = scrape(broker)
    key = ("strom_group_lag", frozenset({("group", group), ("topic", topic), ("partition", "0")}))
    assert key in samples, [k for k in samples if k[0] == "strom_group_lag"]
    assert samples[key] == 0


def test_json_log_format(broker_factory):
    broker = broker_factory(settings={"log.format": "json"})
    broker.stop()
    lines = [l for l in broker.log_text().splitlines() if l and not l.startswith("=====")]
    assert lines
    docs = [json.loads(l) for l in lines]
    assert all("level" in d and "fields" in d for d in docs), docs[:3]
    assert any("admin HTTP server listening" in d["fields"].get("message", "") for d in docs)


def test_log_level_setting(broker_factory):
    """log.level applies when RUST_LOG is not set."""
    broker = broker_factory(settings={"log.level": "warn"}, env={"RUST_LOG": ""})
    broker.stop()
    text = broker.log_text()
    assert "clean shutdown complete" not in text and "listening on" not in text, text
