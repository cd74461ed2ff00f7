"""The data directory: relative paths, and never deleting data because metadata is missing.

A partition directory the topic metadata does not list is removed at startup only when its
topic's deletion was recorded (`__strom_meta/deleting`) before the crash that left it; any other
such directory makes the broker refuse to start, naming it."""

import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

import kafka_raw as kr
from conftest import Broker, unique


def produce_values(broker, topic, partitions, n=5):
    with broker.conn() as c:
        for p in range(partitions):
            res = c.produce(topic, p, kr.simple_batch([f"p{p}-{i}".encode() for i in range(n)]))
            assert res["error_code"] == 0


def values(broker, topic, partition):
    with broker.conn() as c:
        return [r.value for r in c.fetch_records(topic, partition, 0)]


def start_fails(broker: Broker, timeout: float = 30.0) -> str:
    """Starts the broker expecting it to exit with an error; returns its log."""
    broker.start(wait=False)
    try:
        code = broker.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        broker.kill()
        pytest.fail(f"the broker started although it should have refused; log:\n{broker.log_tail()}")
    assert code != 0
    return broker.log_text()


def test_missing_metadata_refuses_to_start_and_deletes_nothing(broker_factory):
    broker = broker_factory(cores=2)
    topic = unique("keep")
    with broker.conn() as c:
        c.create_topic(topic, partitions=3)
    produce_values(broker, topic, 3)
    broker.stop()
    snapshot = broker.data_dir / "__strom_meta" / "topics.snapshot"
    saved = snapshot.with_name("saved.snapshot")
    shutil.move(snapshot, saved)
    log = start_fails(broker)
    assert "not in the topic metadata" in log and "docs/operations.md" in log, log[-3000:]
    for p in range(3):
        d = broker.partition_dir(topic, p)
        assert str(d) in log, f"{d} is not named in the refusal"
        assert any(d.glob("*.log")), f"{d} lost its segments"
    # Restoring the metadata brings everything back.
    shutil.move(saved, snapshot)
    broker.start()
    for p in range(3):
        assert values(broker, topic, p) == [f"p{p}-{i}".encode() for i in range(5)]


class delete_topic:
    """DeleteTopics through librdkafka's admin client; the client lives as long as the result."""

    def __init__(self, broker, topic):
        self.admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        self.future = self.admin.delete_topics([topic], operation_timeout=10)[topic]

    def result(self, timeout):
        return self.future.result(timeout=timeout)


def test_crash_after_the_deletion_is_persisted_removes_the_directories(broker_factory):
    broker = broker_factory(cores=2, settings={"test.fault.controller.abort.at": "snapshot-saved"})
    topic, other = unique("gone"), unique("stays")
    with broker.conn() as c:
        c.create_topic(topic, partitions=2)
        c.create_topic(other, partitions=2)
    produce_values(broker, topic, 2)
    produce_values(broker, other, 2)
    deletion = delete_topic(broker, topic)
    assert broker.proc.wait(20) == -signal.SIGABRT
    with pytest.raises(Exception):
        deletion.result(timeout=5)
    dirs = [broker.partition_dir(topic, p) for p in range(2)]
    assert all(d.exists() for d in dirs), "the crash should have left the partition directories"
    broker.settings.pop("test.fault.controller.abort.at")
    broker.start()
    assert not any(d.exists() for d in dirs), "directories of the deleted topic were kept"
    with broker.conn() as c:
        md = c.metadata([topic], version=4, allow_auto_topic_creation=False)
        assert md["topics"][topic]["error_code"] == 3  # UNKNOWN_TOPIC_OR_PARTITION
    assert values(broker, other, 1) == [f"p1-{i}".encode() for i in range(5)]
    # The next start finds nothing to remove and nothing unaccounted for.
    broker.restart()
    assert values(broker, other, 0) == [f"p0-{i}".encode() for i in range(5)]


def test_crash_before_the_deletion_is_persisted_keeps_the_topic(broker_factory):
    broker = broker_factory(cores=1, settings={"test.fault.controller.abort.at": "deleting-recorded"})
    topic = unique("half")
    with broker.conn() as c:
        c.create_topic(topic, partitions=2)
    produce_values(broker, topic, 2)
    deletion = delete_topic(broker, topic)
    assert broker.proc.wait(20) == -signal.SIGABRT
    del deletion
    broker.settings.pop("test.fault.controller.abort.at")
    broker.start()
    # The deletion was never answered; the topic and its records are still there.
    for p in range(2):
        assert values(broker, topic, p) == [f"p{p}-{i}".encode() for i in range(5)]
    # Deleting it now works, and a restart after that is clean.
    delete_topic(broker, topic).result(timeout=15)
    assert not broker.partition_dir(topic, 0).exists()
    broker.restart()


def test_relative_data_dir(broker_factory, monkeypatch):
    """`--data-dir` relative to the broker's working directory (the README's default is
    `./strom-data`): topics are created, written and read back, also after a restart."""
    broker = broker_factory(cores=2, data_dir=Path("rel") / "data", start=False)
    # The broker runs in its work directory; the test resolves the relative path the same way.
    monkeypatch.chdir(broker.workdir)
    broker.start()
    topic = unique("rel")
    with broker.conn() as c:
        c.create_topic(topic, partitions=2)
    produce_values(broker, topic, 2)
    broker.restart()
    assert values(broker, topic, 1) == [f"p1-{i}".encode() for i in range(5)]
    assert (broker.workdir / "rel" / "data" / f"{topic}-0").is_dir()
