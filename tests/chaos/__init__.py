"""Chaos harness: three real `strom` nodes in a private network namespace, a seeded nemesis
(SIGKILL, SIGSTOP, nftables partitions, a slow or stalled replication proxy, power-loss
emulation, corrupt segment tails), producers and readers writing a history, and a checker that
reads the history afterwards (Jepsen's queue-checker vocabulary: lost, unseen, duplicated,
inconsistent offsets, non-monotonic reads, per-key order).

    python tests/chaos/run.py --cycles N --seed S --out DIR [--bin PATH]
    bash scripts/chaos.sh [--cycles N] [--seed S] [--out DIR]

Modules: `cluster` (the nodes, their cgroups and replication proxies), `proxy` (the TCP proxy),
`nemesis` (the fault schedule and the faults), `workload` (clients and the history), `checker`
(the report), `run` (the command line and `run_chaos`, which tests/test_chaos.py calls).

The modules import the helpers of tests/ (`netns`, `powerloss`, `test_replication`,
`test_crash`) as top-level modules, so tests/ must be on `sys.path`: pytest puts it there for
tests/test_chaos.py, and run.py adds it itself.
"""
