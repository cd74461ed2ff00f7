"""A chaos run: three nodes, the workload, `--cycles` seeded faults, a final heal and read, the
checker's report.

    python tests/chaos/run.py --cycles N --seed S --out DIR [--bin PATH] [--max-fault-s X]
                              [--budget-s Y] [--rate R]

Runs inside a private network namespace: the current one if it has only `lo` (scripts/chaos.sh
makes one), else one of its own (netns.py). Needs root (namespaces, cgroups, nftables).
Writes to DIR (which must be empty or missing): history.jsonl, faults.jsonl, schedule.json,
clients.log (librdkafka), nodes/node-<i>/{strom.log,data,sync-journal}, report.md and
report.json. Exit status: 0 without violations, 1 with violations (or when the run could not
be completed), 2 on bad usage.
"""

import argparse
import contextlib
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Tuple

TESTS = Path(__file__).resolve().parent.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import pytest  # noqa: E402 - the helpers of tests/ report timeouts through pytest.fail

from conftest import strom_bin  # noqa: E402
from netns import interfaces, private_netns  # noqa: E402
from test_replication import new_topic  # noqa: E402

from chaos import checker  # noqa: E402
from chaos.cluster import ChaosCluster  # noqa: E402
from chaos.nemesis import RECOVERY_MIN_S, RECOVERY_TIMEOUT_S, Nemesis, schedule, spec_json  # noqa: E402
from chaos.workload import (PARTITIONS, RATE_PER_PRODUCER, TOPIC, History, Workload,  # noqa: E402
                            client_logger, final_read)

FORM_TIMEOUT_S = 60.0
FIRST_ACK_TIMEOUT_S = 60.0
FINAL_HEAL_TIMEOUT_S = 60.0
FINAL_READ_TIMEOUT_S = 180.0
DRAIN_TIMEOUT_S = 30.0
SHUTDOWN_TIMEOUT_S = 30.0
# Seconds per fault beyond its duration (kill, recovery, recovery window), to bound the workload.
PER_FAULT_SLACK_S = 20.0


@dataclass
class Config:
    cycles: int
    seed: int
    out: Path
    binary: Path
    rate: int = RATE_PER_PRODUCER
    max_fault_s: Optional[float] = None  # caps every fault's duration
    budget_s: Optional[float] = None  # no fault starts that could not end within this (from the first)
    warmup_s: float = 3.0
    recovery_min_s: float = RECOVERY_MIN_S
    recovery_timeout_s: float = RECOVERY_TIMEOUT_S
    policy: checker.AvailabilityPolicy = field(default_factory=lambda: checker.AVAILABILITY)


def run_chaos(cfg: Config, out: Callable[[str], None] = print) -> Tuple[checker.Report, List[str], List[str]]:
    """One run in the current (private) network namespace, from its main thread. Returns the
    report, the availability policy's failures and the harness's own errors (a run that could
    not be completed)."""
    out_dir = Path(cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    specs = schedule(cfg.seed, cfg.cycles, max_fault_s=cfg.max_fault_s)
    (out_dir / "schedule.json").write_text(json.dumps([spec_json(s) for s in specs], indent=1) + "\n")
    planned_s = sum(s.duration_s for s in specs) + PER_FAULT_SLACK_S * len(specs) + 120
    if cfg.budget_s is not None:
        planned_s = min(planned_s, cfg.budget_s + 120)
    history = History(out_dir / "history.jsonl")
    logger = client_logger(out_dir / "clients.log")
    cluster = ChaosCluster(out_dir / "nodes", cfg.binary)
    meta = {"seed": cfg.seed, "cycles": cfg.cycles, "binary": str(cfg.binary), "max_fault_s": cfg.max_fault_s,
            "budget_s": cfg.budget_s, "rate_per_producer": cfg.rate}
    errors: List[str] = []
    nemesis: Optional[Nemesis] = None
    workload: Optional[Workload] = None
    out(f"chaos: seed {cfg.seed}, {cfg.cycles} fault(s), binary {cfg.binary}, output {out_dir}")
    try:
        cluster.start_proxies()
        cluster.start_all()
        ok, state = cluster.wait_healthy(None, FORM_TIMEOUT_S)
        if not ok:
            raise RuntimeError(f"the cluster did not form within {FORM_TIMEOUT_S:.0f} s: {state}")
        new_topic([n.index for n in cluster.nodes], 0, TOPIC, PARTITIONS, 3, config={"min.insync.replicas": "2"})
        nemesis = Nemesis(cluster, TOPIC, history.now, out_dir / "faults.jsonl", out=out,
                          recovery_timeout_s=cfg.recovery_timeout_s, recovery_min_s=cfg.recovery_min_s)
        meta["network_faults"] = "available" if nemesis.nft.available else f"SKIPPED: {nemesis.nft.reason}"
        out(f"network faults: {meta['network_faults']}")
        workload = Workload(history, cluster.bootstrap(), logger, rate=cfg.rate,
                            max_messages=int(cfg.rate * planned_s), max_seconds=planned_s + 300)
        workload.start()
        if not workload.wait_first_acks(FIRST_ACK_TIMEOUT_S):
            raise RuntimeError(f"the producers got no ack within {FIRST_ACK_TIMEOUT_S:.0f} s")
        time.sleep(cfg.warmup_s)
        history.write({"type": "phase", "name": "faults"})
        budget = cfg.budget_s if cfg.budget_s is not None else planned_s
        nemesis.run(specs, time.monotonic() + budget)
        history.write({"type": "phase", "name": "final-heal"})
        nemesis.heal_all()
        ok, state = cluster.wait_healthy(TOPIC, FINAL_HEAL_TIMEOUT_S)
        history.write({"type": "phase", "name": "healed", "ok": ok, "state": state})
        if not ok:
            errors.append(f"not healthy {FINAL_HEAL_TIMEOUT_S:.0f} s after the final heal: {state}")
        time.sleep(cfg.recovery_min_s)
        workload.stop_producers(timeout=workload.flush_s + 15)
        if not workload.drain_readers(DRAIN_TIMEOUT_S):
            out(f"the concurrent readers did not reach the high watermarks within {DRAIN_TIMEOUT_S:.0f} s")
        history.write({"type": "phase", "name": "final-read"})
        end = final_read(history, cluster.bootstrap(), logger, FINAL_READ_TIMEOUT_S)
        out(f"final read: high watermarks {end['marks']}, complete: {end['complete']}")
        history.write({"type": "replicas", **cluster.replica_digests(TOPIC, PARTITIONS)})
        nemesis.note_crashes()
        codes = cluster.terminate_all(SHUTDOWN_TIMEOUT_S)
        meta["shutdown_exit_codes"] = codes
        for i, code in codes.items():
            if code != 0:
                nemesis.log({"type": "crash", "t": history.now(), "node": i, "exit_code": code,
                             "log_tail": cluster.nodes[i].log_tail(40),
                             "what": "did not exit cleanly within "
                                     f"{SHUTDOWN_TIMEOUT_S:.0f} s of SIGTERM"})
    except (Exception, pytest.fail.Exception) as e:  # noqa: BLE001 - the run ends with a report anyway
        first = (str(e).splitlines() or [""])[0]
        errors.append(f"{type(e).__name__}: {first}")
        out(traceback.format_exc())
        for node in cluster.nodes:
            out(f"node {node.index} log tail:\n{node.log_tail(20)}")
    finally:
        if workload is not None:
            workload.stopping.set()
            for r in workload.readers:
                r.stop.set()
            for t in workload.producers + workload.readers:
                t.join(60)
            errors.extend(workload.errors())
        if nemesis is not None:
            nemesis.close()
        cluster.teardown()
        history.close()
    meta["elapsed_s"] = round(history.now(), 1)
    if errors:
        meta["harness_errors"] = errors
    report = checker.check_dir(out_dir, meta)
    availability = checker.availability_failures(report, cfg.policy)
    out(checker.write(report, out_dir, availability))
    return report, availability, errors


def _netns():
    """The current namespace if it is private already (only `lo`), else a new one."""
    if interfaces() == ["lo"]:
        return contextlib.nullcontext()
    return private_netns()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, required=True, help="faults to run")
    ap.add_argument("--seed", type=int, default=None, help="seed of the fault schedule (default: from the clock)")
    ap.add_argument("--out", required=True, help="output directory (empty or missing)")
    ap.add_argument("--bin", help="strom binary (default $STROM_BIN or target/release/strom)")
    ap.add_argument("--max-fault-s", type=float, default=None, help="cap on every fault's duration")
    ap.add_argument("--budget-s", type=float, default=None, help="no fault starts that would end later than this")
    ap.add_argument("--rate", type=int, default=RATE_PER_PRODUCER, help="messages/s per producer")
    args = ap.parse_args(argv)
    if args.cycles < 1:
        ap.error("--cycles must be at least 1")
    if args.rate < 1:
        ap.error("--rate must be at least 1")
    out_dir = Path(args.out).resolve()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        ap.error(f"--out {out_dir} is not an empty directory")
    binary = Path(args.bin).resolve() if args.bin else strom_bin()
    if not binary.is_file():
        print(f"no broker binary at {binary}: build it (cargo build --release) or pass --bin", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("the chaos harness needs root (network namespace, cgroups, nftables)", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else int(time.time() * 1000) % 2**31
    cfg = Config(cycles=args.cycles, seed=seed, out=out_dir, binary=binary, rate=args.rate,
                 max_fault_s=args.max_fault_s, budget_s=args.budget_s)
    with _netns():
        report, availability, errors = run_chaos(cfg, out=lambda s: print(s, flush=True))
    for e in errors:
        print(f"HARNESS ERROR {e}")
    print(f"seed {seed}: {'no violation' if report.ok else 'VIOLATIONS'}; report in {out_dir}/report.md")
    return 0 if report.ok and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
