"""Power loss: SIGKILL while two producers (idempotent and not) write with acks=all, then every
file cut back to what a power loss could have left, per the broker's own sync journal
(`test.fault.sync.journal`). Every acknowledged record must survive at its offset; nothing
corrupt, foreign, duplicated or reordered may be served. The harness is tests/powerloss.py
(scripts/power-loss.sh runs many more cycles)."""

import pytest

import kafka_raw as kr
import powerloss
from conftest import unique


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_power_loss_cycles(broker_factory):
    journal = broker_factory.tmp_root / "sync-journal"
    broker = broker_factory(settings=powerloss.broker_settings(journal), start=False)
    lines = []
    result = powerloss.run(broker, cycles=3, seed=20250607, out=lines.append)
    report = "\n".join(lines + [f"VIOLATION {v}" for v in result.violations] + [result.summary()])
    print(report)
    assert result.violations == [], report
    assert result.lost == 0, report
    assert result.cycles == 3, report
    assert result.acked > 0, f"nothing was acknowledged:\n{report}"
    # The emulation did something: the broker never fdatasyncs ahead of its writes.
    assert result.power_loss.files > 0, f"no file had bytes beyond its durable length:\n{report}"


def _durable_and_size(journal, log_path):
    st = log_path.stat()
    return powerloss.parse_journal(journal).get((st.st_dev, st.st_ino), 0), st.st_size


@pytest.mark.timeout(60)
def test_acks_all_is_answered_after_the_covering_fdatasync(broker_factory):
    """The broker's own journal of synced lengths, read the moment each acks=all answer arrives:
    the segment file must already be durable up to its end. (A SIGKILL rarely lands in the
    window between an early answer and its fdatasync; this check does not depend on timing.)"""
    journal = broker_factory.tmp_root / "sync-journal-acks"
    broker = broker_factory(settings={"test.fault.sync.journal": str(journal)})
    topic = unique("acks")
    with broker.conn() as c:
        c.create_topic(topic, partitions=1)
        c.wait_topic(topic, 1)
        log_path = broker.partition_dir(topic) / "00000000000000000000.log"
        for i in range(50):
            r = c.produce(topic, 0, kr.simple_batch([f"v{i}".encode()]), acks=-1)
            assert r["error_code"] == kr.NONE, r
            durable, size = _durable_and_size(journal, log_path)
            assert durable >= size > 0, f"produce {i}: answered with {durable} of {size} bytes synced"
