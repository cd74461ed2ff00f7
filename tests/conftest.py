"""Fixtures that run the real `strom` binary on loopback for black-box tests."""

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional

import pytest

import kafka_raw

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


# Resolved once, against the directory pytest started in: brokers run with their work directory
# as cwd and some tests change directory, where a relative STROM_BIN (as in
# `STROM_BIN=target/release/strom pytest ...`) would name nothing.
_STROM_BIN = (
    Path(os.environ["STROM_BIN"]).absolute()
    if os.environ.get("STROM_BIN")
    else REPO / "target" / "release" / "strom"
)


def strom_bin() -> Path:
    return _STROM_BIN


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _die_with_parent():
    """Runs in the child before exec: SIGKILL the broker if the test process dies, so that an
    aborted test run never leaves brokers behind."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def port_has_listener(port: int) -> bool:
    """True if some socket is in LISTEN state on `port` (from /proc/net/tcp*)."""
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        return True
        except OSError:
            continue
    return False


def wait_api_versions(proc: subprocess.Popen, port: int, timeout: float, name: str, log_tail, kill):
    """Polls ApiVersions on `port` until a broker answers it. Fails the test (with `log_tail()`)
    if `proc` exits first or nothing answers within `timeout`; then calls `kill()`."""
    deadline = time.monotonic() + timeout
    last_err = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{name} exited with code {proc.returncode} during startup; output:\n{log_tail()}")
        try:
            with kafka_raw.KafkaConn(HOST, port, timeout=2.0) as c:
                res = c.api_versions(0)
                if res["error_code"] == 0 and res["api_keys"]:
                    return
                last_err = f"ApiVersions answered {res}"
        except (OSError, kafka_raw.ConnectionClosed, ValueError, AssertionError) as e:
            last_err = repr(e)
        time.sleep(0.05)
    kill()
    pytest.fail(f"{name} did not answer ApiVersions on {HOST}:{port} within {timeout}s "
                f"(last error: {last_err}); output:\n{log_tail()}")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Broker:
    """One `strom` process. Can be stopped, killed and started again on the same data dir and
    port."""

    def __init__(self, workdir: Path, cores: int = 1, settings: Optional[Dict[str, str]] = None,
                 data_dir: Optional[Path] = None, port: Optional[int] = None, env: Optional[Dict[str, str]] = None,
                 extra_args: Optional[List[str]] = None, subcommand: Optional[str] = None,
                 name: str = "broker"):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cores = cores
        self.settings = dict(settings or {})
        self.data_dir = Path(data_dir) if data_dir else self.workdir / "data"
        self.port = port or free_port()
        # Every broker gets its own admin HTTP port, so tests never collide on the default 9644.
        self.admin_port = free_port()
        self.env = dict(env or {})
        self.extra_args = list(extra_args or [])
        self.subcommand = subcommand
        self.name = name
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = self.workdir / f"{name}.stderr.log"
        self.starts = 0
        self.exit_codes: List[int] = []

    # -- addresses --

    @property
    def host(self) -> str:
        return HOST

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def conn(self, timeout: float = 15.0) -> kafka_raw.KafkaConn:
        return kafka_raw.KafkaConn(HOST, self.port, timeout=timeout)

    # -- lifecycle --

    def command(self) -> List[str]:
        binary = strom_bin()
        cmd = [str(binary)]
        if self.subcommand:
            cmd.append(self.subcommand)
        cmd += ["--listen", self.bootstrap, "--advertise", self.bootstrap,
                "--data-dir", str(self.data_dir), "--cores", str(self.cores),
                "-o", f"admin.listeners={HOST}:{self.admin_port}"]
        for k, v in self.settings.items():
            cmd += ["-o", f"{k}={v}"]
        cmd += self.extra_args
        return cmd

    @property
    def admin_url(self) -> str:
        return f"http://{HOST}:{self.admin_port}"

    def start(self, timeout: float = 30.0, wait_port_free: bool = True, wait: bool = True):
        """Start the broker and wait until it answers ApiVersions. With wait_port_free, first
        wait (up to 5 s) until no socket listens on the port any more: the kernel tears down a
        killed process's io_uring instance, and the listening socket it holds, asynchronously.
        test_cli.py checks the immediate restart separately."""
        binary = strom_bin()
        if not binary.exists():
            pytest.fail(f"broker binary {binary} not found: build it with `cargo build --release` "
                        f"or point STROM_BIN at it")
        assert self.proc is None or self.proc.poll() is not None, "broker already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if wait_port_free:
            deadline = time.monotonic() + 5
            while port_has_listener(self.port) and time.monotonic() < deadline:
                time.sleep(0.01)
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env.setdefault("NO_COLOR", "1")
        env.update(self.env)
        self.starts += 1
        log = open(self.log_path, "ab")
        log.write(f"\n===== start #{self.starts}: {' '.join(self.command())}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                     cwd=str(self.workdir), env=env, preexec_fn=_die_with_parent)
        log.close()
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0):
        wait_api_versions(self.proc, self.port, timeout, "broker", self.log_tail, self.kill)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout: float = 10.0) -> int:
        """Graceful stop; asserts exit code 0 within `timeout` (else kills -9 and fails)."""
        if not self.running():
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            self.exit_codes.append(-9)
            pytest.fail(f"broker did not exit within {timeout}s of {sig!r}; killed. stderr:\n{self.log_tail()}")
        self.exit_codes.append(code)
        if code != 0:
            pytest.fail(f"broker exited with code {code} after {sig!r} (expected 0); stderr:\n{self.log_tail()}")
        return code

    def kill(self):
        """SIGKILL, as a crash."""
        if self.running():
            self.proc.kill()
            self.proc.wait(10)
            self.exit_codes.append(self.proc.returncode)

    def restart(self, timeout: float = 30.0):
        self.stop()
        return self.start(timeout)

    def crash_restart(self, timeout: float = 30.0):
        self.kill()
        return self.start(timeout)

    # -- inspection --

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 80) -> str:
        lines = self.log_text().splitlines()
        return "\n".join(lines[-n:])

    def proc_status(self) -> Dict[str, int]:
        """VmRSS, VmHWM, VmPeak, ... in KiB from /proc/<pid>/status."""
        out = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                v = v.strip()
                if v.endswith(" kB"):
                    out[k] = int(v[:-3])
        return out

    def assert_alive(self):
        assert self.running(), f"broker died (exit {self.proc.returncode}); stderr:\n{self.log_tail()}"
        with self.conn(timeout=5.0) as c:
            res = c.api_versions(0)
            assert res["error_code"] == 0

    def partition_dir(self, topic: str, partition: int = 0) -> Path:
        return self.data_dir / f"{topic}-{partition}"


class BrokerFactory:
    def __init__(self, tmp_root: Path, node):
        self.tmp_root = tmp_root
        self.node = node
        self.brokers: List[Broker] = []

    def __call__(self, cores: int = 1, settings: Optional[Dict[str, str]] = None, start: bool = True,
                 **kw) -> Broker:
        idx = len(self.brokers)
        b = Broker(self.tmp_root / f"b{idx}", cores=cores, settings=settings, name=f"broker{idx}", **kw)
        self.brokers.append(b)
        self.node._strom_brokers = self.brokers
        if start:
            b.start()
        return b

    def teardown(self):
        problems = []
        for b in self.brokers:
            if b.running():
                b.proc.send_signal(signal.SIGTERM)
                try:
                    code = b.proc.wait(10)
                except subprocess.TimeoutExpired:
                    b.proc.kill()
                    b.proc.wait(10)
                    problems.append(f"{b.name}: did not exit within 10 s of SIGTERM (killed -9); "
                                    f"stderr:\n{b.log_tail()}")
                    continue
                b.exit_codes.append(code)
                if code != 0:
                    problems.append(f"{b.name}: exited with code {code} after SIGTERM; stderr:\n{b.log_tail()}")
        return problems


@pytest.fixture
def broker_factory(request):
    tmp_root = Path(tempfile.mkdtemp(prefix="strom-test-"))
    factory = BrokerFactory(tmp_root, request.node)
    failed = []
    try:
        yield factory
    finally:
        failed = factory.teardown()
        keep = os.environ.get("STROM_KEEP_TMP")
        if not keep:
            shutil.rmtree(tmp_root, ignore_errors=True)
    if failed:
        pytest.fail("; ".join(failed))


@pytest.fixture
def broker(broker_factory) -> Broker:
    return broker_factory()


@pytest.fixture
def conn(broker):
    c = broker.conn()
    yield c
    c.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for b in getattr(item, "_strom_brokers", []) or []:
            rep.sections.append((f"strom stderr ({b.name}, last 120 lines)", b.log_tail(120)))


def file_sizes(directory, suffix=".log"):
    """{base offset: size} of the files named <base><suffix>; one deleted meanwhile is left out."""
    out = {}
    for p in directory.glob("*" + suffix):
        try:
            out[int(p.name[:-len(suffix)])] = p.stat().st_size
        except FileNotFoundError:
            pass
    return out


def assert_offset_reset_error(consumer, timeout_s: float = 30.0):
    """A confluent-kafka consumer positioned below the log start with auto.offset.reset=error
    reports the reset error within `timeout_s`, and no record."""
    from confluent_kafka import KafkaError
    deadline = time.monotonic() + timeout_s
    err = None
    while err is None and time.monotonic() < deadline:
        m = consumer.poll(0.2)
        if m is None:
            continue
        assert m.error(), f"got a record at offset {m.offset()} below the log start"
        err = m.error()
    assert err is not None, "no error reported for a fetch below the log start"
    assert err.code() in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE), err
