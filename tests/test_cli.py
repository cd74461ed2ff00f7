"""The command line: settings from a TOML file, environment variables and -o flags, the `serve`
subcommand, and clean shutdown on SIGINT/SIGTERM with the data kept."""

import signal

import pytest

import kafka_raw as kr
from conftest import unique


def autocreated_partitions(broker) -> int:
    topic = unique("auto")
    with broker.conn() as c:
        c.metadata([topic], version=4, allow_auto_topic_creation=True)
        for _ in range(100):
            md = c.metadata([topic], version=4, allow_auto_topic_creation=False)
            t = md["topics"][topic]
            if t["error_code"] == 0 and t["partitions"]:
                return len(t["partitions"])
        raise AssertionError(f"topic was not auto-created: {md}")


def test_defaults(broker):
    assert autocreated_partitions(broker) == 1
    with broker.conn() as c:
        md = c.metadata(None, version=1)
        assert md["brokers"][0]["host"] == "127.0.0.1" and md["brokers"][0]["port"] == broker.port
        assert md["controller_id"] == md["brokers"][0]["node_id"]


def test_config_file(broker_factory, tmp_path):
    cfg = tmp_path / "strom.toml"
    cfg.write_text('"num.partitions" = 2\n"auto.create.topics.enable" = true\n')
    b = broker_factory(extra_args=["--config", str(cfg)])
    assert autocreated_partitions(b) == 2


def test_env_var(broker_factory):
    b = broker_factory(env={"STROM_NUM_PARTITIONS": "4"})
    assert autocreated_partitions(b) == 4


def test_set_flag_and_precedence(broker_factory, tmp_path):
    cfg = tmp_path / "strom.toml"
    cfg.write_text('"num.partitions" = 2\n')
    # Flags beat environment variables, which beat the file.
    b = broker_factory(settings={"num.partitions": "3"}, env={"STROM_NUM_PARTITIONS": "5"},
                       extra_args=["--config", str(cfg)])
    assert autocreated_partitions(b) == 3
    b.stop()
    b2 = broker_factory(env={"STROM_NUM_PARTITIONS": "5"}, extra_args=["--config", str(cfg)])
    assert autocreated_partitions(b2) == 5


def test_serve_subcommand_and_sigint(broker_factory):
    b = broker_factory(subcommand="serve")
    topic = unique("sigint")
    with b.conn() as c:
        c.create_topic(topic)
        assert c.produce(topic, 0, kr.simple_batch([b"kept"]), acks=1)["error_code"] == 0
    b.stop(sig=signal.SIGINT)
    b.start()
    with b.conn() as c:
        assert [r.value for r in c.fetch_records(topic, 0)] == [b"kept"]
    b.stop(sig=signal.SIGTERM)


def test_sigterm_with_open_connections(broker):
    """Open idle connections and a pending long poll do not block a clean shutdown."""
    topic = unique("idle")
    conns = [broker.conn() for _ in range(3)]
    conns[0].create_topic(topic)
    conns[1].fetch_send({(topic, 0): 0}, max_wait_ms=30000)
    broker.stop()
    for c in conns:
        c.close()


def test_bad_setting_fails_to_start(broker_factory):
    b = broker_factory(settings={"num.partitions": "many"}, start=False)
    with pytest.raises(pytest.fail.Exception):
        b.start(timeout=10)
    assert b.proc.poll() is not None and b.proc.returncode > 0, f"exit code {b.proc.returncode}"


def test_restart_immediately_after_sigkill_same_port(broker_factory):
    """A supervisor restarting a crashed broker at once must not find the port still taken."""
    b = broker_factory()
    topic = unique("rebind")
    with b.conn() as c:
        c.create_topic(topic)
    for i in range(6):
        with b.conn() as c:
            r = c.produce(topic, 0, kr.simple_batch([f"round-{i}".encode()]), acks=-1)
            assert r["error_code"] == 0 and r["base_offset"] == i
        b.kill()
        b.start(wait_port_free=False)
    with b.conn() as c:
        assert [r.value for r in c.fetch_records(topic, 0)] == [f"round-{i}".encode() for i in range(6)]
