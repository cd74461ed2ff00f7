"""The seeded nemesis: one fault at a time, each followed by a heal and a recovery window.

`schedule(seed, count)` is a pure function of its arguments: the kinds (every block of
len(KINDS) faults holds each kind once, in a seeded order), their durations and every
parameter (which partition's leader or follower, which node, the delay, the damage mode and
the seed of the damage). Victims named by role (the leader of partition p, the active
controller) are resolved against the cluster when the fault starts and recorded.

Faults:
  kill-leader, kill-follower, kill-controller  SIGKILL, down for the duration, start again
  restart-kill-leader  SIGKILL a follower, start it again, and SIGKILL the leader as soon as the
                   follower is registered (before it has caught up and rejoined the ISR): the
                   next leader must come from the ISR, never the follower that lacks records
  pause            SIGSTOP for the duration, then SIGCONT
  isolate          nftables: every packet between the node and its peers dropped (clients
                   still reach it)
  one-way          nftables: packets from one node to another dropped, the other way not
  slow-link        the node's replication proxy delays what it forwards by 50-300 ms
  stalled-link     the node's replication proxy forwards nothing
  power-loss       SIGKILL, then every file of the node cut back to what a power loss could
                   have left (powerloss.apply_power_loss over its sync journal), start again
  corrupt-tail     SIGKILL a follower, damage the tail of its newest segment of the partition
                   beyond what it had synced (test_crash's damage kinds), start again

Nodes on `lo` all connect from 127.0.0.1, so the nftables rules name a node by its cgroup
(cluster.Cgroups): an output rule marks each packet with the node that sent it, and input rules
drop by that mark (or, for the node's listening side, by its own address) and by the cgroup of
the receiving socket (or the receiving listener's address). Without nft or cgroup v2, the
network faults are skipped and the report says why.
"""

import json
import random
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import kafka_raw as kr
from powerloss import apply_power_loss, parse_journal
from test_crash import DAMAGE, valid_end

from chaos.cluster import ChaosCluster

KINDS = ("kill-leader", "kill-follower", "kill-controller", "pause", "isolate", "one-way",
         "slow-link", "stalled-link", "power-loss", "corrupt-tail", "restart-kill-leader")
KILL_KINDS = ("kill-leader", "kill-follower", "kill-controller", "power-loss", "corrupt-tail")
# How long restart-kill-leader's follower stays down, and waits to be registered again.
RESTART_DOWN_S = 1.0
REGISTER_WAIT_S = 10.0
NETWORK_KINDS = ("isolate", "one-way")
# (shortest, longest) seconds a fault lasts before its heal; for kills, the time the node is down.
DURATION_S = {
    "kill-leader": (1.0, 5.0), "kill-follower": (1.0, 5.0), "kill-controller": (1.0, 5.0),
    "pause": (3.0, 12.0), "isolate": (3.0, 8.0), "one-way": (3.0, 8.0),
    "slow-link": (3.0, 8.0), "stalled-link": (2.0, 6.0),
    "power-loss": (1.0, 3.0), "corrupt-tail": (1.0, 3.0), "restart-kill-leader": (2.0, 5.0),
}
DELAY_MS = (50, 300)
CORRUPT_MODES = ("garbage", "bad-crc-copy", "zero-tail", "huge-length", "cut")
TORN_CUT_BYTES = 7  # what "cut" takes off the end of a batch (test_crash's damage_cut)
RECOVERY_TIMEOUT_S = 30.0
RECOVERY_MIN_S = 2.0
SHOWN_DETAILS = 10


@dataclass(frozen=True)
class FaultSpec:
    index: int
    kind: str
    duration_s: float
    params: Dict[str, object] = field(default_factory=dict)


def schedule(seed: int, count: int, nodes: int = 3, partitions: int = 3,
             max_fault_s: Optional[float] = None) -> List[FaultSpec]:
    """The faults of a run: a pure function of the arguments. `max_fault_s` caps every
    duration (short CI passes)."""
    rnd = random.Random(seed)
    kinds: List[str] = []
    while len(kinds) < count:
        block = list(KINDS)
        rnd.shuffle(block)
        kinds.extend(block)
    out = []
    for i, kind in enumerate(kinds[:count]):
        lo, hi = DURATION_S[kind]
        if max_fault_s is not None:
            hi = min(hi, max_fault_s)
            lo = min(lo, hi)
        duration = round(rnd.uniform(lo, hi), 2)
        # Every parameter is drawn for every fault, so that one kind's parameters do not shift
        # the random stream of the next.
        node = rnd.randrange(nodes)
        peer = (node + 1 + rnd.randrange(nodes - 1)) % nodes
        partition = rnd.randrange(partitions)
        rank = rnd.randrange(nodes - 1)
        delay_ms = rnd.randint(*DELAY_MS)
        mode = rnd.choice(CORRUPT_MODES)
        damage_seed = rnd.getrandbits(32)
        params: Dict[str, object] = {
            "kill-leader": {"partition": partition},
            "kill-follower": {"partition": partition, "rank": rank},
            "kill-controller": {},
            "pause": {"node": node},
            "isolate": {"node": node},
            "one-way": {"from": node, "to": peer},
            "slow-link": {"node": node, "delay_ms": delay_ms},
            "stalled-link": {"node": node},
            "power-loss": {"node": node, "damage_seed": damage_seed},
            "corrupt-tail": {"partition": partition, "rank": rank, "mode": mode, "damage_seed": damage_seed},
            "restart-kill-leader": {"partition": partition, "rank": rank},
        }[kind]
        out.append(FaultSpec(i, kind, duration, params))
    return out


# ---------------------------------------------------------------------------------------------
# nftables


def nft_binary() -> Optional[str]:
    """The nft command (root's PATH has /usr/sbin; a user's may not)."""
    return shutil.which("nft") or next((p for p in ("/usr/sbin/nft", "/sbin/nft") if Path(p).exists()), None)


class Nft:
    """The network faults' rules, in table `inet strom_chaos` of the current (private)
    namespace."""

    TABLE = "strom_chaos"
    MARK_BASE = 0x5C00

    def __init__(self, cluster: ChaosCluster):
        self.cluster = cluster
        self.binary = nft_binary()
        self.installed = False
        if self.binary is None:
            self.reason = "nft (nftables) is not installed"
        elif not cluster.cgroups.available:
            self.reason = f"no per-node cgroup to match sockets by: {cluster.cgroups.reason}"
        else:
            self.reason = ""

    @property
    def available(self) -> bool:
        return not self.reason

    def _apply(self, script: str):
        res = subprocess.run([self.binary, "-f", "-"], input=script, capture_output=True, text=True, timeout=10)
        if res.returncode != 0:
            raise RuntimeError(f"nft failed ({res.returncode}): {res.stderr.strip()}\n{script}")

    def mark(self, i: int) -> str:
        return hex(self.MARK_BASE + i + 1)

    def socket_of(self, i: int) -> str:
        cg = self.cluster.cgroups
        return f'socket cgroupv2 level {cg.level()} "{cg.nft_path(i)}"'

    def install(self):
        """The table: an output chain marking each packet with the node whose socket sent it,
        and an empty input chain for the drops. Trying it is the availability check: a kernel
        without the socket expression makes this fail, and the reason is kept."""
        lines = [f"table inet {self.TABLE} {{",
                 "  chain output { type filter hook output priority 0; policy accept;"]
        lines += [f"    {self.socket_of(n.index)} meta mark set {self.mark(n.index)}" for n in self.cluster.nodes]
        lines += ["  }", "  chain input { type filter hook input priority 0; policy accept; }", "}"]
        try:
            self._apply("\n".join(lines) + "\n")
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            self.reason = f"the nftables rules could not be installed: {e}"
            return
        self.installed = True

    def drop(self, src: int, dst: int):
        """Drops every packet node `src` sends to node `dst`: from its sockets (marked) or its
        listening address, to the receiving node's sockets (by cgroup) or its listening address
        (which includes its replication proxy)."""
        a, b = self.cluster.nodes[src], self.cluster.nodes[dst]
        rules = [f"meta mark {self.mark(src)} {self.socket_of(dst)} drop",
                 f"meta mark {self.mark(src)} ip daddr {b.ip} drop",
                 f"ip saddr {a.ip} {self.socket_of(dst)} drop"]
        self._apply("".join(f"add rule inet {self.TABLE} input {r}\n" for r in rules))

    def heal(self):
        if self.installed:
            self._apply(f"flush chain inet {self.TABLE} input\n")

    def remove(self):
        if self.installed:
            self._apply(f"delete table inet {self.TABLE}\n")
            self.installed = False


# ---------------------------------------------------------------------------------------------
# Damage


def corrupt_tail(node_data_dir: Path, journal: Path, topic: str, partition: int, mode: str,
                 rnd: random.Random) -> dict:
    """Damages the tail of the newest segment of the partition beyond what the node had synced
    (its sync journal), with one of test_crash's damage kinds. "cut" (a batch torn mid-way)
    takes the file's last batch only if none of it was synced; otherwise it appends a copy of
    that batch (next offset) cut short, as a torn write of the next batch leaves it."""
    d = node_data_dir / f"{topic}-{partition}"
    segments = sorted(d.glob("*.log"), key=lambda f: int(f.stem))
    if not segments:
        return {"skipped": f"no segment in {d}"}
    seg = segments[-1]
    data = seg.read_bytes()
    end = valid_end(data)
    st = seg.stat()
    durable = parse_journal(journal).get((st.st_dev, st.st_ino), 0)
    batches = kr.parse_batches(data[:end], decode_records=False) if end else []
    applied = mode
    if mode in ("bad-crc-copy", "cut") and not batches:
        applied = "garbage"
    if applied == "cut" and end - len(batches[-1].raw) < durable:
        copy = bytearray(batches[-1].raw)
        copy[0:8] = batches[-1].next_offset.to_bytes(8, "big", signed=True)
        with open(seg, "r+b") as f:
            f.seek(end)
            f.write(bytes(copy[:-TORN_CUT_BYTES]))
        applied = "torn-copy"
    else:
        DAMAGE[applied](seg, end, data, rnd)
    return {"segment": f"{d.name}/{seg.name}", "size": len(data), "intact_end": end, "durable": durable,
            "mode": mode, "applied": applied, "size_after": seg.stat().st_size}


# ---------------------------------------------------------------------------------------------
# The nemesis


class Nemesis:
    def __init__(self, cluster: ChaosCluster, topic: str, now: Callable[[], float], fault_log: Path,
                 out: Callable[[str], None] = print, recovery_timeout_s: float = RECOVERY_TIMEOUT_S,
                 recovery_min_s: float = RECOVERY_MIN_S):
        self.cluster = cluster
        self.topic = topic
        self.now = now
        self.fault_log = open(fault_log, "w")
        self.out = out
        self.recovery_timeout_s = recovery_timeout_s
        self.recovery_min_s = recovery_min_s
        self.nft = Nft(cluster)
        if self.nft.available:
            self.nft.install()
        self.records: List[dict] = []

    def log(self, record: dict):
        self.records.append(record)
        self.fault_log.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.fault_log.flush()

    def close(self):
        try:
            self.nft.remove()
        finally:
            self.fault_log.close()

    def note_crashes(self):
        """Unexpected node exits become fault-log records; the node is started again so that
        the run can go on."""
        for crash in self.cluster.check_exits():
            self.log({"type": "crash", "t": self.now(), **crash})
            self.out(f"  node {crash['node']} exited unexpectedly (code {crash['exit_code']}); starting it again")
            self.cluster.start(crash["node"])

    def heal_all(self):
        """Every fault undone: no drop rule, proxies forwarding at full speed, nothing paused,
        every node running."""
        self.nft.heal()
        if self.cluster.hub is not None:
            self.cluster.hub.heal_all()
        for node in self.cluster.nodes:
            self.cluster.resume(node.index)
        self.note_crashes()
        self.cluster.start_all()

    def run(self, specs: List[FaultSpec], deadline: float) -> List[dict]:
        """Runs the faults in order; one that could not finish before `deadline` (monotonic) is
        recorded as skipped, and so are the rest."""
        for spec in specs:
            self.note_crashes()
            if time.monotonic() + spec.duration_s + self.recovery_min_s > deadline:
                self.log({"type": "fault", "index": spec.index, "kind": spec.kind, "params": spec.params,
                          "skipped": "time budget used up"})
                continue
            rec = self.run_fault(spec)
            self.log(rec)
            self.out(describe(rec))
        self.note_crashes()
        return [r for r in self.records if r.get("type") == "fault"]

    def resolve(self, spec: FaultSpec, controller: int, layout: Dict[int, dict]):
        """(victims, reason): the nodes the fault hits, or a reason it cannot run now."""
        p = spec.params
        if spec.kind in NETWORK_KINDS and not self.nft.available:
            return [], f"network faults unavailable: {self.nft.reason}"
        if spec.kind == "kill-controller":
            return ([controller], "") if controller >= 0 else ([], "no active controller")
        if spec.kind in ("kill-leader", "kill-follower", "corrupt-tail", "restart-kill-leader"):
            part = layout.get(p["partition"])
            if part is None or part["leader"] < 0:
                return [], f"partition {p['partition']} has no leader"
            if spec.kind == "kill-leader":
                return [part["leader"]], ""
            followers = sorted(r for r in part["replicas"] if r != part["leader"])
            if not followers:
                return [], f"partition {p['partition']} has no follower"
            follower = followers[p["rank"] % len(followers)]
            if spec.kind == "restart-kill-leader":
                return [follower, part["leader"]], ""
            return [follower], ""
        if spec.kind == "one-way":
            return [p["from"], p["to"]], ""
        return [p["node"]], ""

    def run_fault(self, spec: FaultSpec) -> dict:
        controller, layout = self.cluster.layout(self.topic)
        leaders = {str(part): x["leader"] for part, x in sorted(layout.items())}
        victims, reason = self.resolve(spec, controller, layout)
        rec = {"type": "fault", "index": spec.index, "kind": spec.kind, "params": spec.params,
               "duration_s": spec.duration_s, "controller": controller, "leaders": leaders,
               "victims": victims, "led_by_victims": sorted(int(part) for part, l in leaders.items() if l in victims),
               "majority_healthy": len(victims) <= (self.cluster.n - 1) // 2}
        if reason:
            rec["skipped"] = reason
            return rec
        rec["start"] = self.now()
        started = time.monotonic()
        self.inject(spec, victims, rec)
        # The fault lasts `duration_s` from its start (a kill's wait for the port counts).
        time.sleep(max(0.0, spec.duration_s - (time.monotonic() - started)))
        self.heal(spec, victims)
        rec["healed"] = self.now()
        ok, state = self.cluster.wait_healthy(self.topic, self.recovery_timeout_s)
        rec["recovered"] = self.now()
        rec["recovery_ok"] = ok
        if not ok:
            rec["recovery_state"] = state
            # Whatever the fault left behind is undone before the next one.
            self.heal_all()
        time.sleep(self.recovery_min_s)
        rec["window_end"] = self.now()
        return rec

    def inject(self, spec: FaultSpec, victims: List[int], rec: dict):
        c = self.cluster
        v = victims[0]
        if spec.kind in ("kill-leader", "kill-follower", "kill-controller"):
            c.kill(v)
        elif spec.kind == "restart-kill-leader":
            c.kill(v)
            time.sleep(RESTART_DOWN_S)
            c.start(v)
            rec["follower_registered"] = self.wait_registered(v, victims[1])
            c.kill(victims[1])
        elif spec.kind == "pause":
            c.pause(v)
        elif spec.kind == "isolate":
            for other in range(c.n):
                if other != v:
                    self.nft.drop(v, other)
                    self.nft.drop(other, v)
        elif spec.kind == "one-way":
            self.nft.drop(victims[0], victims[1])
        elif spec.kind == "slow-link":
            c.proxies[v].set_delay(spec.params["delay_ms"])
        elif spec.kind == "stalled-link":
            c.proxies[v].stall()
        elif spec.kind == "power-loss":
            c.kill(v)
            node = c.nodes[v]
            damage = apply_power_loss(node.data_dir, parse_journal(node.journal),
                                      random.Random(spec.params["damage_seed"]))
            rec["damage"] = {"files": damage.files, "bytes_cut": damage.bytes_cut,
                             "bytes_zeroed": damage.bytes_zeroed, "modes": damage.modes,
                             "details": damage.details[:SHOWN_DETAILS]}
        elif spec.kind == "corrupt-tail":
            c.kill(v)
            node = c.nodes[v]
            rec["damage"] = corrupt_tail(node.data_dir, node.journal, self.topic, spec.params["partition"],
                                         spec.params["mode"], random.Random(spec.params["damage_seed"]))
        else:
            raise ValueError(f"unknown fault kind {spec.kind!r}")

    def wait_registered(self, node: int, via: int) -> bool:
        """Waits until `via` shows `node` registered and unfenced (at most REGISTER_WAIT_S)."""
        deadline = time.monotonic() + REGISTER_WAIT_S
        while time.monotonic() < deadline:
            view = self.cluster.status(via) or {}
            brokers = (view.get("cluster") or {}).get("brokers", [])
            if any(b.get("node_id") == node and not b.get("fenced") for b in brokers):
                return True
            time.sleep(0.02)
        return False

    def heal(self, spec: FaultSpec, victims: List[int]):
        c = self.cluster
        v = victims[0]
        if spec.kind in KILL_KINDS:
            c.start(v)
        elif spec.kind == "restart-kill-leader":
            c.start(victims[1])
        elif spec.kind == "pause":
            c.resume(v)
        elif spec.kind in NETWORK_KINDS:
            self.nft.heal()
        elif spec.kind in ("slow-link", "stalled-link"):
            c.proxies[v].heal()


def describe(rec: dict) -> str:
    """One line per fault for the console."""
    head = f"fault {rec['index']:>3} {rec['kind']:<15}"
    if rec.get("skipped"):
        return f"{head} skipped: {rec['skipped']}"
    victims = ",".join(str(v) for v in rec["victims"])
    extra = ""
    if "damage" in rec:
        d = rec["damage"]
        extra = (f" damage: {d.get('files', '')} files {d.get('modes', '')}" if "files" in d
                 else f" damage: {d.get('applied', d.get('skipped'))}")
    if "delay_ms" in rec["params"]:
        extra += f" delay {rec['params']['delay_ms']} ms"
    rec_s = rec["recovered"] - rec["healed"]
    state = "recovered" if rec["recovery_ok"] else f"NOT RECOVERED ({rec.get('recovery_state')})"
    return (f"{head} victims [{victims}] leaders {rec['leaders']} at t={rec['start']:.1f}s for "
            f"{rec['healed'] - rec['start']:.1f}s;{extra} {state} {rec_s:.1f}s after the heal")


def spec_json(spec: FaultSpec) -> dict:
    return asdict(spec)
