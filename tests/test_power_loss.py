"""Power loss: SIGKILL while two producers (idempotent and not) write with acks=all, then every
file cut back to what a power loss could have left, per the broker's own sync journal
(`test.fault.sync.journal`). Every acknowledged record must survive at its offset; nothing
corrupt, foreign, duplicated or reordered may be served. The harness is tests/powerloss.py
(scripts/power-loss.sh runs many more cycles)."""

import pytest

import powerloss


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
