"""A private network namespace with only a loopback interface, for tests that run several nodes
on fixed 127.0.1.x addresses and ports.

`PrivateNetns` starts a holder process (`unshare --net` bringing `lo` up, then `sleep`), and the
calling thread -- pytest's main thread -- enters its namespace with setns(2). Every thread and
process created from then on (librdkafka's threads, the nodes `scripts/cluster.sh` starts, kcat,
the CLI) lives in the namespace: it sees `lo` and nothing else, so no traffic of the tests can
leave the machine and their fixed addresses collide with nothing on the host. `leave()` kills
every process still inside (all of them were started by the test), goes back to the original
namespace and ends the holder.

A test module enters it for all its tests with `private_netns()` in a module-scoped autouse
fixture (test_replication.py).
"""

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from typing import List


CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
IP = "/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else "ip"

_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def _die_with_parent():
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def ns_of(pid) -> str:
    """'net:[inode]' of a process ("self" for this one), or '' if it is gone."""
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return ""


def _setns(fd: int):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(CLONE_NEWNET): {os.strerror(err)}")


def interfaces() -> List[str]:
    """Names of the network interfaces of this process's namespace (from /proc/net/dev)."""
    with open("/proc/net/dev") as f:
        lines = f.read().splitlines()[2:]
    return sorted(line.split(":", 1)[0].strip() for line in lines if ":" in line)


class PrivateNetns:
    def __init__(self):
        self.holder = None
        self.original_fd = None
        self.ns = ""
        self.host_ns = ns_of("self")

    def start(self, timeout: float = 10.0):
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--", "sh", "-c", f"{IP} link set lo up && exec sleep 100000"],
            stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        # Ready once the holder has its own namespace and has exec'd `sleep`, which it does only
        # after `ip link set lo up` succeeded.
        deadline = time.monotonic() + timeout
        while True:
            if self.holder.poll() is not None:
                raise RuntimeError(f"the namespace holder exited with {self.holder.returncode}")
            ns = ns_of(self.holder.pid)
            try:
                with open(f"/proc/{self.holder.pid}/comm") as f:
                    comm = f.read().strip()
            except OSError:
                comm = ""
            if ns and ns != self.host_ns and comm == "sleep":
                self.ns = ns
                return self
            if time.monotonic() > deadline:
                self.holder.kill()
                raise RuntimeError(f"the namespace holder was not ready within {timeout}s "
                                   f"(ns {ns!r}, comm {comm!r})")
            time.sleep(0.02)

    def enter(self):
        self.original_fd = os.open("/proc/self/ns/net", os.O_RDONLY)
        fd = os.open(f"/proc/{self.holder.pid}/ns/net", os.O_RDONLY)
        try:
            _setns(fd)
        finally:
            os.close(fd)
        assert ns_of("self") == self.ns, (ns_of("self"), self.ns)

    def pids_inside(self) -> List[int]:
        """Processes (other than this one and the holder) in the namespace."""
        out = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            pid = int(name)
            if pid in (os.getpid(), self.holder.pid if self.holder else -1):
                continue
            if ns_of(pid) == self.ns:
                out.append(pid)
        return out

    def leave(self):
        # Whatever still runs in the namespace was started by the test (nodes that cluster.sh
        # detached with setsid, for one): kill those processes by pid, then wait for them.
        if self.ns:
            stragglers = self.pids_inside()
            for pid in stragglers:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            deadline = time.monotonic() + 10
            while any(ns_of(p) == self.ns for p in stragglers) and time.monotonic() < deadline:
                time.sleep(0.02)
        if self.original_fd is not None:
            _setns(self.original_fd)
            os.close(self.original_fd)
            self.original_fd = None
        if self.holder is not None and self.holder.poll() is None:
            self.holder.kill()
            self.holder.wait(10)


@contextlib.contextmanager
def private_netns():
    """Runs the body (and every thread and process it starts) in a private network namespace
    with only `lo`; yields the PrivateNetns. A test module uses it as an autouse fixture:

        @pytest.fixture(scope="module", autouse=True)
        def netns():
            with private_netns() as ns:
                yield ns
    """
    ns = PrivateNetns().start()
    try:
        ns.enter()
        names = interfaces()
        assert names == ["lo"], f"the private namespace has interfaces {names}"
        yield ns
    finally:
        ns.leave()
    assert ns_of("self") == ns.host_ns
