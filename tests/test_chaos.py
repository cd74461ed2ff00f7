"""The chaos harness (tests/chaos/): its checker against synthetic histories that hold each kind
of violation (and one that holds none), the fault schedule as a pure function of the seed, the
replication proxy's delay and stall, and a short seeded pass against three real nodes in a
private network namespace: about 20 faults of every kind, zero safety violations, acks flowing.
Availability beyond that is printed, and asserted only as `checker.AVAILABILITY` says.
"""

import socket
import threading
import time

import pytest

from chaos import checker
from chaos.nemesis import KINDS, nft_binary, schedule
from chaos.proxy import ProxyHub
from chaos.workload import PARTITIONS, key_of, partition_of, value_of
from conftest import strom_bin
from netns import private_netns

# ---------------------------------------------------------------------------------------------
# Synthetic histories


class Hist:
    """A consistent history: producer 0 (idempotent) and producer 1 (not) append to the
    partitions' logs in send order; tests then break one thing."""

    def __init__(self):
        self.events = [{"type": "producer", "producer": 0, "idempotent": True, "t": 0.0},
                       {"type": "producer", "producer": 1, "idempotent": False, "t": 0.0}]
        self.logs = {p: [] for p in range(PARTITIONS)}  # [[key, value]]
        self.sent = {0: 0, 1: 0}
        self.t = 0.0

    def send(self, producer: int, ack: bool = True):
        seq = self.sent[producer]
        self.sent[producer] += 1
        value, part = value_of(producer, seq), partition_of(seq)
        self.logs[part].append([key_of(producer, seq), value])
        self.t += 0.01
        offset = len(self.logs[part]) - 1
        if ack:
            self.events.append({"type": "ack", "t": round(self.t, 3), "producer": producer, "value": value,
                                "partition": part, "offset": offset})
        return value, part, offset

    def send_many(self, n: int):
        for i in range(n):
            self.send(i % 2)

    def records(self, part, log=None):
        return [[o, k, v] for o, (k, v) in enumerate(self.logs[part] if log is None else log)]

    def read(self, part: int, records, reader=None, session=1):
        self.events.append({"type": "poll", "t": round(self.t, 3), "reader": reader or f"r{part}",
                            "session": session, "partition": part, "records": records})

    def read_all(self):
        for part in self.logs:
            self.read(part, self.records(part))

    def finish(self, final=None, replicas_same=True):
        """The producers' ends, the final read (`final`: {partition: records} overriding the
        logs) and the replicas' digests."""
        events = list(self.events)
        for producer, n in self.sent.items():
            events.append({"type": "producer-end", "producer": producer, "sent": n, "unresolved": 0})
        final = {p: self.records(p) for p in self.logs} if final is None else final
        for part, recs in final.items():
            events.append({"type": "final", "partition": part, "records": recs})
        events.append({"type": "final-end", "marks": {str(p): [0, len(r)] for p, r in final.items()},
                       "positions": {str(p): len(r) for p, r in final.items()}, "complete": True, "errors": []})
        digest = {str(n): {"end_offset": 10, "bytes": 100, "sha256": "a" if replicas_same or n < 2 else "b"}
                  for n in range(3)}
        events.append({"type": "replicas", "converged": True, "partitions": {"0": digest}})
        return events


def check(events, faults=()):
    return checker.check(events, list(faults), {"seed": 0, "cycles": 0})


def test_a_clean_history_passes():
    h = Hist()
    h.send_many(60)
    h.read_all()
    report = check(h.finish())
    assert report.ok, report.violations
    assert report.info["acks"] == 60 and report.info["unseen"] == 0
    assert report.info["duplicates_non_idempotent"] == 0
    assert "PASS" in checker.render(report)


def test_lost():
    h = Hist()
    h.send_many(30)
    h.read_all()
    final = {p: h.records(p) for p in h.logs}
    gone = final[0].pop()  # the last record of partition 0 was acknowledged, then vanished
    report = check(h.finish(final))
    assert report.counts == {"lost": 1}, report.violations
    assert gone[2] in report.violations["lost"][0]


def test_inconsistent_offsets():
    h = Hist()
    h.send_many(30)
    other, part, off = h.send(1, ack=False)
    seen = h.records(part)
    seen[0] = [0, seen[off][1], other]  # a reader got at offset 0 what the log holds at `off`
    h.read(part, seen)
    report = check(h.finish())
    assert report.counts == {"inconsistent-offsets": 1}, report.violations
    assert report.violations["inconsistent-offsets"][0].startswith(f"{part}/0 held")


def test_inconsistent_offsets_between_two_acknowledgements():
    h = Hist()
    h.send_many(12)
    ack = next(e for e in h.events if e["type"] == "ack" and e["producer"] == 1)
    h.events.append({**ack, "value": value_of(1, 999)})  # a second ack claiming the same offset
    report = check(h.finish())
    assert "inconsistent-offsets" in report.counts, report.violations


def test_duplicates_are_a_violation_only_with_idempotence():
    h = Hist()
    h.send_many(30)
    final = {p: h.records(p) for p in h.logs}
    idem = next(r for r in final[0] if r[2].startswith("p0-"))
    plain = next(r for r in final[0] if r[2].startswith("p1-"))
    final[0].append([len(final[0]), idem[1], idem[2]])
    final[0].append([len(final[0]), plain[1], plain[2]])
    report = check(h.finish(final))
    assert report.counts == {"duplicate-idempotent": 1}, report.violations
    assert idem[2] in report.violations["duplicate-idempotent"][0]
    assert report.info["duplicates_non_idempotent"] == 1


def test_non_monotonic_polls():
    h = Hist()
    h.send_many(30)
    recs = h.records(0)
    h.read(0, recs[:5])
    h.read(0, recs[3:6])  # backwards within session 1: a violation
    h.read(1, [recs_ for i, recs_ in enumerate(h.records(1)) if i != 2])  # a skip: informational
    h.read(0, recs, session=2)  # a new session may start over
    report = check(h.finish())
    assert report.counts == {"non-monotonic": 1}, report.violations  # 3 after 4; then 4, 5 go on
    assert "got 0/3 after 0/4" in report.violations["non-monotonic"][0]
    assert report.info["skipped_offsets"] == 1


def test_per_key_order_of_the_idempotent_producer():
    h = Hist()
    for _ in range(20):
        h.send(0, ack=False)
        h.send(1)
    final = {p: h.records(p) for p in h.logs}
    where = {r[2]: (p, i) for p, recs in final.items() for i, r in enumerate(recs)}
    # Producer 0's seqs 2 and 8 share a key (and so a partition); the log holds them swapped.
    (p, i), (q, j) = where[value_of(0, 2)], where[value_of(0, 8)]
    assert p == q and key_of(0, 2) == key_of(0, 8)
    final[p][i][2], final[p][j][2] = value_of(0, 8), value_of(0, 2)
    report = check(h.finish(final))
    assert report.counts == {"per-key-order": 1}, report.violations
    assert value_of(0, 2) in report.violations["per-key-order"][0]


def test_unseen_is_informational():
    h = Hist()
    h.send_many(30)
    for part in h.logs:
        h.read(part, h.records(part)[:-1])  # the readers stopped one short
    report = check(h.finish())
    assert report.ok, report.violations
    assert report.info["unseen"] == PARTITIONS


def test_acknowledged_offset_mismatch():
    h = Hist()
    h.send_many(30)
    ack = next(e for e in h.events if e["type"] == "ack")
    ack["offset"] += 1000  # the value is in the log, not where its ack said
    report = check(h.finish())
    assert report.counts == {"ack-offset-mismatch": 1}, report.violations


def test_foreign_values():
    h = Hist()
    h.send_many(30)
    final = {p: h.records(p) for p in h.logs}
    final[0].append([len(final[0]), None, "\x00garbage"])
    final[1].append([len(final[1]), key_of(0, 10**6), value_of(0, 10**6)])  # never sent
    report = check(h.finish(final))
    assert report.counts == {"foreign": 2}, report.violations


def test_replica_divergence_crash_and_missing_final_read():
    h = Hist()
    h.send_many(6)
    report = check(h.finish(replicas_same=False),
                   [{"type": "crash", "t": 1.0, "node": 2, "exit_code": 101, "log_tail": "panicked at x"}])
    assert report.counts == {"replica-divergence": 1, "crash": 1}, report.violations
    report = check(h.events)  # no final read at all
    assert "final-read" in report.counts


def test_availability_figures_and_policy():
    h = Hist()
    for i in range(100):  # partition 0 acks every 0.1 s except between t=2 and t=5
        t = i * 0.1
        if 2.0 < t < 5.0:
            continue
        h.events.append({"type": "ack", "t": t, "producer": 1, "value": value_of(1, i), "partition": 0,
                         "offset": i})
    fault = {"type": "fault", "index": 0, "kind": "kill-leader", "params": {"partition": 0}, "victims": [1],
             "leaders": {"0": 1, "1": 2}, "controller": 0, "start": 2.0, "healed": 4.0, "recovered": 4.5,
             "window_end": 6.0, "recovery_ok": True, "majority_healthy": True}
    report = check(h.events, [fault])
    row = report.faults[0]
    assert row["acks_fault"] == 1 and row["max_gap_fault_s"] == 2.0  # the ack at t=2.0 itself
    assert row["unavailable_s"] == {0: 3.0}
    assert row["healthy_partitions"] == [1] and row["acks_fault_per_partition"][1] == 0
    assert row["acks_window_per_partition"][1] == 0
    assert checker.availability_failures(report, checker.AvailabilityPolicy(min_total_acks=1)) == []
    strict = checker.AvailabilityPolicy(min_total_acks=1000, min_acks_per_healthy_partition=100,
                                        max_unavailable_s={"kill-leader": 2.0})
    assert report.info["unavailable_by_kind"]["kill-leader"]["max_s"] == 3.0
    failures = checker.availability_failures(report, strict)
    assert len(failures) == 3, failures
    assert "| 0 | kill-leader |" in "\n".join(checker.fault_table(report))


# ---------------------------------------------------------------------------------------------
# The schedule and the proxy


def test_the_schedule_is_a_pure_function_of_the_seed():
    a, b = schedule(7, 35), schedule(7, 35)
    assert a == b
    assert schedule(8, 35) != a
    for block in range(3):
        assert sorted(f.kind for f in a[block * len(KINDS):(block + 1) * len(KINDS)]) == sorted(KINDS)
    assert [f.index for f in a] == list(range(35))
    capped = schedule(7, 35, max_fault_s=4)
    assert [f.kind for f in capped] == [f.kind for f in a]
    assert all(f.duration_s <= 4 for f in capped)


def test_the_proxy_delays_and_stalls():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def echo():
        conn, _ = server.accept()
        with conn:
            while True:
                data = conn.recv(4096)
                if not data:
                    return
                conn.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    hub = ProxyHub().start()
    try:
        proxy = hub.add("echo", ("127.0.0.1", 0), ("127.0.0.1", port))
        listen_port = proxy._server.sockets[0].getsockname()[1]
        with socket.create_connection(("127.0.0.1", listen_port), timeout=5) as c:
            def round_trip():
                t = time.monotonic()
                c.sendall(b"ping")
                assert c.recv(16) == b"ping"
                return time.monotonic() - t

            round_trip()
            proxy.set_delay(100)  # each direction
            assert round_trip() >= 0.2, "the delay is applied both ways"
            proxy.heal()
            proxy.stall()
            c.sendall(b"held")
            c.settimeout(0.5)
            with pytest.raises(socket.timeout):
                c.recv(16)
            proxy.heal()
            c.settimeout(5)
            assert c.recv(16) == b"held"
    finally:
        hub.close()
        server.close()


# ---------------------------------------------------------------------------------------------
# A short chaos pass

SEED = 20261207
FAULTS = 22
MAX_FAULT_S = 6.0
BUDGET_S = 190.0  # for the faults; setup, final heal and read add about a minute


@pytest.mark.slow
@pytest.mark.timeout(330)
def test_a_seeded_chaos_pass_keeps_every_acknowledged_record(tmp_path):
    from chaos.run import Config, run_chaos
    assert nft_binary(), "nft (nftables) is missing: scripts/test-all.sh installs it; the network faults need it"
    lines = []
    with private_netns():
        cfg = Config(cycles=FAULTS, seed=SEED, out=tmp_path / "chaos", binary=strom_bin(), max_fault_s=MAX_FAULT_S,
                     budget_s=BUDGET_S)
        report, availability, errors = run_chaos(cfg, out=lines.append)
    text = "\n".join(lines)
    print(text)
    assert not errors, f"the run did not complete: {errors}\n{text}"
    assert report.meta.get("network_faults") == "available", report.meta.get("network_faults")
    assert report.info["faults_run"] >= FAULTS * 3 // 4, report.info["faults_skipped"]
    assert report.ok, f"safety violations: {report.counts}\n{text}"
    assert availability == [], availability
