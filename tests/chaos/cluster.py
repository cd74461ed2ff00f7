"""Three real `strom` nodes for the chaos harness, inside the private network namespace the
caller has entered (netns.py).

Node i runs on 127.0.1.(i+1) with the ports and settings `scripts/cluster.sh up` gives it
(clients :9092, controller :9093, replication :9094, admin :9644), started directly rather
than through cluster.sh because each node needs two things the script cannot express:

- its own `advertised.listeners`: the replication listener is advertised at a proxy
  (`proxy.py`, 127.0.1.(i+1):9194), so every follower fetching from node i goes through the
  proxy the nemesis slows down or stalls;
- its own cgroup (v2), joined before exec: every client socket on `lo` has the source address
  127.0.0.1 whichever node opened it, so the nftables rules of the nemesis tell nodes apart by
  the cgroup of the sending or receiving socket (`nemesis.Nft`).

Nodes are started from the calling (main) thread only: they die with the thread that started
them (PR_SET_PDEATHSIG), so that an aborted run leaves none behind.
"""

import hashlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from conftest import _die_with_parent
from test_cluster import ip
from test_replication import listening_ports

from chaos.proxy import ProxyHub

NODES = 3
CLIENT_PORT = 9092
CONTROLLER_PORT = 9093
REPLICATION_PORT = 9094
ADMIN_PORT = 9644
PROXY_PORT = 9194  # where peers reach a node's replication listener: its proxy
NODE_PORTS = (CLIENT_PORT, CONTROLLER_PORT, REPLICATION_PORT, ADMIN_PORT)

LAG_MS = 1500
SEGMENT_BYTES = 524288  # small, so that segments roll during a run
# Settings every node gets, besides the ones cluster.sh gives (node id, voters, listeners).
SETTINGS = {
    "replica.lag.time.max.ms": str(LAG_MS),
    "log.segment.bytes": str(SEGMENT_BYTES),
    # The default, stated because the power-loss fault depends on it: acks=all is answered
    # after the fdatasync that covers the batch.
    "log.flush.on.ack": "true",
}

STATUS_TIMEOUT_S = 2.0
STOP_WAIT_S = 10.0
CGROUP_FS = Path("/sys/fs/cgroup")  # nft resolves `socket cgroupv2` paths below this


def _cgroup2_mount() -> Optional[Path]:
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == "cgroup2":
                    return Path(parts[1])
    except OSError:
        pass
    return None


def _remove_stale(mount: Path):
    """Empty cgroups of earlier runs whose process is gone (a run killed before its teardown)."""
    for d in mount.glob("strom-chaos-*"):
        pid = d.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        for sub in list(d.glob("node-*")) + [d]:
            try:
                sub.rmdir()
            except OSError:
                pass


class Cgroups:
    """A cgroup v2 directory per node, `<cgroup2 mount>/strom-chaos-<pid>/node-<i>`. If none can
    be made, `reason` says why (the nemesis then skips its network faults)."""

    def __init__(self, nodes: int):
        self.nodes = nodes
        self.root: Optional[Path] = None
        self.mount: Optional[Path] = None
        self.reason = ""
        mount = _cgroup2_mount()
        if mount is None:
            self.reason = "no cgroup2 file system is mounted"
            return
        if mount != CGROUP_FS and CGROUP_FS not in mount.parents:
            self.reason = f"cgroup2 is mounted at {mount}, outside {CGROUP_FS} where nft looks for cgroups"
            return
        _remove_stale(mount)
        root = mount / f"strom-chaos-{os.getpid()}"
        try:
            root.mkdir(exist_ok=True)
            for i in range(nodes):
                (root / f"node-{i}").mkdir(exist_ok=True)
        except OSError as e:
            self.reason = f"cannot create cgroups under {mount}: {e}"
            return
        self.root, self.mount = root, mount

    @property
    def available(self) -> bool:
        return self.root is not None

    def procs(self, i: int) -> Optional[Path]:
        return self.root / f"node-{i}" / "cgroup.procs" if self.root else None

    def nft_path(self, i: int) -> str:
        """The node's cgroup as nft's `socket cgroupv2` names it: relative to /sys/fs/cgroup."""
        return str((self.root / f"node-{i}").relative_to(CGROUP_FS))

    def level(self) -> int:
        """Depth of a node's cgroup below the hierarchy's root."""
        return len((self.root / "node-0").relative_to(self.mount).parts)

    def remove(self):
        if self.root is None:
            return
        deadline = time.monotonic() + 5
        for d in [self.root / f"node-{i}" for i in range(self.nodes)] + [self.root]:
            while d.exists():
                try:
                    d.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
        self.root = None


@dataclass
class Node:
    index: int
    dir: Path
    proc: Optional[subprocess.Popen] = None
    starts: int = 0
    expect_running: bool = False
    paused: bool = False
    exit_codes: List[int] = field(default_factory=list)

    @property
    def ip(self) -> str:
        return ip(self.index)

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def log_path(self) -> Path:
        return self.dir / "strom.log"

    @property
    def journal(self) -> Path:
        """The sync journal (test.fault.sync.journal), outside the data directory so that the
        power-loss emulation leaves it alone."""
        return self.dir / "sync-journal"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError as e:
            return f"(no log: {e})"


class ChaosCluster:
    def __init__(self, workdir: Path, binary: Path, nodes: int = NODES):
        self.workdir = Path(workdir)
        self.binary = Path(binary)
        self.nodes = [Node(i, self.workdir / f"node-{i}") for i in range(nodes)]
        self.cgroups = Cgroups(nodes)
        self.hub: Optional[ProxyHub] = None
        self.proxies = []

    # -- addresses --

    @property
    def n(self) -> int:
        return len(self.nodes)

    def bootstrap(self) -> str:
        return ",".join(f"{node.ip}:{CLIENT_PORT}" for node in self.nodes)

    def command(self, node: Node) -> List[str]:
        """cluster.sh's arguments for the node, with its replication listener advertised at its
        proxy, plus SETTINGS and the node's sync journal."""
        voters = ",".join(f"{m.index}@{m.ip}:{CONTROLLER_PORT}" for m in self.nodes)
        a = node.ip
        cmd = [str(self.binary), "--cores", "1", "--data-dir", str(node.data_dir),
               "-o", f"node.id={node.index}", "-o", f"controller.quorum.voters={voters}",
               "-o", f"listeners=PLAINTEXT://{a}:{CLIENT_PORT},CONTROLLER://{a}:{CONTROLLER_PORT},"
                     f"REPLICATION://{a}:{REPLICATION_PORT}",
               "-o", f"advertised.listeners=PLAINTEXT://{a}:{CLIENT_PORT},CONTROLLER://{a}:{CONTROLLER_PORT},"
                     f"REPLICATION://{a}:{PROXY_PORT}",
               "-o", f"admin.listeners={a}:{ADMIN_PORT}",
               "-o", f"test.fault.sync.journal={node.journal}"]
        for k, v in SETTINGS.items():
            cmd += ["-o", f"{k}={v}"]
        return cmd

    # -- lifecycle --

    def start_proxies(self):
        self.hub = ProxyHub().start()
        self.proxies = [self.hub.add(f"node-{node.index}", (node.ip, PROXY_PORT), (node.ip, REPLICATION_PORT))
                        for node in self.nodes]

    def start(self, i: int):
        node = self.nodes[i]
        assert not node.running(), f"node {i} is already running"
        node.dir.mkdir(parents=True, exist_ok=True)
        node.data_dir.mkdir(exist_ok=True)
        deadline = time.monotonic() + STOP_WAIT_S
        while self.listening(i) and time.monotonic() < deadline:
            time.sleep(0.02)
        procs = self.cgroups.procs(i)

        def preexec():
            if procs is not None:
                with open(procs, "w") as f:
                    f.write("0")
            _die_with_parent()

        node.starts += 1
        with open(node.log_path, "ab") as log:
            log.write(f"\n===== start #{node.starts}: {' '.join(self.command(node))}\n".encode())
            log.flush()
            node.proc = subprocess.Popen(self.command(node), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         cwd=str(node.dir), env=dict(os.environ, NO_COLOR="1"),
                                         preexec_fn=preexec, start_new_session=True)
        node.expect_running = True
        node.paused = False

    def start_all(self):
        for node in self.nodes:
            if not node.running():
                self.start(node.index)

    def listening(self, i: int) -> bool:
        return bool(listening_ports(self.nodes[i].ip) & set(NODE_PORTS))

    def kill(self, i: int):
        """SIGKILL, then wait until the process and its listening sockets are gone (the kernel
        tears an io_uring instance down asynchronously; its writes in flight land before)."""
        node = self.nodes[i]
        node.expect_running = False
        if node.running():
            node.proc.kill()
            node.proc.wait(STOP_WAIT_S)
            node.exit_codes.append(node.proc.returncode)
        node.paused = False
        deadline = time.monotonic() + STOP_WAIT_S
        while self.listening(i) and time.monotonic() < deadline:
            time.sleep(0.02)

    def pause(self, i: int):
        node = self.nodes[i]
        if node.running():
            node.proc.send_signal(signal.SIGSTOP)
            node.paused = True

    def resume(self, i: int):
        node = self.nodes[i]
        if node.running() and node.paused:
            node.proc.send_signal(signal.SIGCONT)
        node.paused = False

    def check_exits(self) -> List[dict]:
        """Nodes that exited while they should have been running, each reported once."""
        out = []
        for node in self.nodes:
            if node.expect_running and not node.running():
                node.expect_running = False
                code = node.proc.returncode if node.proc else None
                node.exit_codes.append(code)
                out.append({"node": node.index, "exit_code": code, "log_tail": node.log_tail(40)})
        return out

    def terminate_all(self, timeout: float = 30.0) -> Dict[int, Optional[int]]:
        """SIGTERM to every running node; {node: exit code, None if it had to be SIGKILLed}."""
        stopping = []
        for node in self.nodes:
            node.expect_running = False
            if node.running():
                self.resume(node.index)
                node.proc.send_signal(signal.SIGTERM)
                stopping.append(node)
        codes = {}
        deadline = time.monotonic() + timeout
        for node in stopping:
            try:
                codes[node.index] = node.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait(STOP_WAIT_S)
                codes[node.index] = None
            node.exit_codes.append(node.proc.returncode)
        return codes

    def teardown(self):
        for node in self.nodes:
            node.expect_running = False
            if node.running():
                self.resume(node.index)
                node.proc.kill()
                try:
                    node.proc.wait(STOP_WAIT_S)
                except subprocess.TimeoutExpired:
                    pass
        if self.hub is not None:
            self.hub.close()
            self.hub = None
        self.cgroups.remove()

    # -- observation --

    def status(self, i: int) -> Optional[dict]:
        """The node's /v1/status, or None if it does not answer (down, paused, cut off)."""
        try:
            with urllib.request.urlopen(f"http://{self.nodes[i].ip}:{ADMIN_PORT}/v1/status",
                                        timeout=STATUS_TIMEOUT_S) as r:
                return json.load(r)
        except (OSError, ValueError):
            return None

    def views(self) -> Dict[int, Optional[dict]]:
        return {node.index: (self.status(node.index) if node.running() and not node.paused else None)
                for node in self.nodes}

    def controller(self, views=None) -> int:
        """The controller most live nodes name (-1 if none)."""
        views = self.views() if views is None else views
        named = Counter(v["cluster"]["controller_id"] for v in views.values() if v and v.get("cluster"))
        named.pop(-1, None)
        return named.most_common(1)[0][0] if named else -1

    def layout(self, topic: str, views=None) -> Tuple[int, Dict[int, dict]]:
        """(controller, {partition: {leader, leader_epoch, replicas, isr}}) as the controller
        sees it (or, if it does not answer, the first node that does)."""
        views = self.views() if views is None else views
        controller = self.controller(views)
        order = ([controller] if controller >= 0 else []) + sorted(views)
        for i in order:
            v = views.get(i)
            parts = ((v or {}).get("cluster") or {}).get("topics", {}).get(topic)
            if parts:
                return controller, {p["partition"]: p for p in parts}
        return controller, {}

    def health(self, topic: Optional[str]) -> Tuple[bool, str]:
        """Healthy: every node runs and answers, all name the same controller, see every broker
        unfenced, and (with a topic) every partition has a leader and its full ISR."""
        views = self.views()
        down = [i for i, v in views.items() if v is None or not v.get("cluster")]
        if down:
            return False, f"nodes not answering: {down}"
        controllers = {v["cluster"]["controller_id"] for v in views.values()}
        if len(controllers) != 1 or -1 in controllers:
            return False, f"controllers named: {sorted(controllers)}"
        everyone = [node.index for node in self.nodes]
        live = {i: sorted(b["node_id"] for b in v["cluster"]["brokers"] if not b["fenced"])
                for i, v in views.items()}
        if any(ids != everyone for ids in live.values()):
            return False, f"live brokers per view: {live}"
        if topic:
            _, parts = self.layout(topic, views)
            if len(parts) == 0:
                return False, f"topic {topic} not in the metadata"
            bad = {p: (x["leader"], x["isr"]) for p, x in parts.items()
                   if x["leader"] < 0 or sorted(x["isr"]) != sorted(x["replicas"])}
            if bad:
                return False, f"partitions without a leader or full ISR (leader, isr): {bad}"
        return True, "healthy"

    def wait_healthy(self, topic: Optional[str], timeout: float) -> Tuple[bool, str]:
        deadline = time.monotonic() + timeout
        while True:
            ok, what = self.health(topic)
            if ok or time.monotonic() > deadline:
                return ok, what
            time.sleep(0.1)

    def partition_offsets(self, i: int, topic: str) -> Dict[int, dict]:
        """{partition: {log_end_offset, durable_end_offset, high_watermark, ...}} of the replicas
        node i holds, from its /v1/status."""
        v = self.status(i) or {}
        for t in v.get("topics", []):
            if t.get("name") == topic:
                return {p["partition"]: p for p in t.get("partitions", [])}
        return {}

    def replica_digests(self, topic: str, partitions: int, timeout: float = 20.0) -> dict:
        """Waits (up to `timeout`) until every replica of every partition reports the same log
        end offset, all of it durable; then {partition: {node: {end_offset, bytes, sha256}}}
        over the concatenated `.log` files, and whether the offsets converged."""
        deadline = time.monotonic() + timeout
        while True:
            offsets = {node.index: self.partition_offsets(node.index, topic) for node in self.nodes}
            ends = {p: {i: (o.get(p) or {}).get("log_end_offset") for i, o in offsets.items()}
                    for p in range(partitions)}
            durable = all((o.get(p) or {}).get("durable_end_offset") == ends[p][i]
                          for i, o in offsets.items() for p in range(partitions))
            converged = durable and all(len(set(e.values())) == 1 and None not in e.values()
                                        for e in ends.values())
            if converged or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        out = {"converged": converged, "partitions": {}}
        for p in range(partitions):
            per = {}
            for node in self.nodes:
                d = node.data_dir / f"{topic}-{p}"
                h, size = hashlib.sha256(), 0
                for seg in sorted(d.glob("*.log"), key=lambda f: int(f.stem)):
                    data = seg.read_bytes()
                    h.update(data)
                    size += len(data)
                per[node.index] = {"end_offset": ends[p][node.index], "bytes": size, "sha256": h.hexdigest()}
            out["partitions"][p] = per
        return out
