"""The README's commands, run the way a new user types them: default settings (Kafka listener
127.0.0.1:9092, admin listener 127.0.0.1:9644, data in the relative `./strom-data`), from a
fresh directory. The commands are read from the README's fenced blocks when the tests run, so
the tests follow the README as it changes.

Substitutions, and nothing else (see `as_typed`):
- `strom` starting a command (or after a pipe) is the built binary: the README says "From a
  checkout, `strom` below is `target/release/strom`";
- a redirect into a system path (`> /etc/bash_completion.d/strom`) goes to a scratch file;
- `./target/...` is the checkout's target directory: the commands run in the broker's
  directory, where the README's relative `./strom-data` is, not in the checkout.

The tests run in file order: the quickstart's `cargo run` broker first (it needs the default
ports to itself), then one module-scoped `strom` broker started without arguments, which the
kcat, Python, CLI and benchmark blocks run against, and which the last test stops."""

import datetime
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest

from conftest import HOST, REPO, _die_with_parent, port_has_listener, strom_bin, wait_api_versions

README = REPO / "README.md"
KAFKA_PORT = 9092
ADMIN_PORT = 9644
BOOTSTRAP = f"{HOST}:{KAFKA_PORT}"
# `cargo run` / `cargo build` are no-ops on a built tree (CI builds first), but compile after a
# source change; these bound that compile, not the broker.
CARGO_S = 900
ANSI = re.compile(r"\x1b\[[0-9;]*m")


# -- the README --

def readme_blocks():
    """[(heading, language, text)] of the README's fenced code blocks, in order."""
    blocks, heading, lang, buf = [], None, None, None
    for line in README.read_text().splitlines():
        if buf is None:
            if line.startswith("#"):
                heading = line.lstrip("#").strip()
            m = re.match(r"^```(\S*)\s*$", line)
            if m:
                lang, buf = m.group(1), []
        elif line.startswith("```"):
            blocks.append((heading, lang, "\n".join(buf) + "\n"))
            buf = None
        else:
            buf.append(line)
    return blocks


def block(heading: str, lang: str) -> str:
    found = [text for h, l, text in readme_blocks() if h == heading and l == lang]
    if not found:
        pytest.fail(f"README.md has no ```{lang} block under the heading '{heading}' any more; "
                    f"update tests/test_readme.py to follow the README")
    return found[0]


def sh_commands(text: str) -> List[str]:
    """The commands of a sh block as a user pastes them: `\\` continuations joined, lines that
    are only a comment dropped (trailing comments stay; bash ignores them)."""
    out, pending = [], ""
    for line in text.splitlines():
        line = pending + line.strip() if pending else line.strip()
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        pending = ""
        if line and not line.startswith("#"):
            out.append(line)
    if not out:
        pytest.fail(f"no commands in README block:\n{text}")
    return out


def words(cmd: str) -> List[str]:
    return shlex.split(cmd, comments=True)


def as_typed(cmd: str, scratch: Path) -> str:
    """The README line with the substitutions described in the module docstring."""
    # `strom` below is `target/release/strom` from a checkout (README, "Using the CLI").
    binary = shlex.quote(str(strom_bin().resolve()))
    cmd = re.sub(r"(^|\|)(\s*)strom(?=\s|$)", lambda m: m.group(1) + m.group(2) + binary, cmd)
    # A system path would need root and outlive the test: write a scratch file instead.
    cmd = re.sub(r"(>>?\s*)(/\S+)",
                 lambda m: m.group(1) + shlex.quote(str(scratch / Path(m.group(2)).name)), cmd)
    # The README assumes the checkout as the current directory; here it is the broker's.
    cmd = re.sub(r"(?<!\S)\./target/", lambda m: shlex.quote(str(REPO)) + "/target/", cmd)
    return cmd


def printf_records(cmd: str):
    """[(key, value)] that `printf 'k1:hello\\n...' | <producer> ... <separator>` produces."""
    w = words(cmd)
    assert w[0] == "printf", cmd
    lines = w[1].encode().decode("unicode_escape").splitlines()
    return [tuple(line.split(":", 1)) for line in lines]


# -- processes --

def user_env(**extra) -> Dict[str, str]:
    """The environment of a new user: no STROM_* variable (CI exports STROM_BIN, a developer may
    have STROM_BROKERS) and no RUST_LOG, so every setting is the default."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STROM_") and k != "RUST_LOG"}
    env.update(extra)
    return env


class Ran:
    def __init__(self, cmd: str, code: int, out: str, err: str, interrupted: bool = False):
        self.cmd, self.code, self.out, self.err, self.interrupted = cmd, code, out, err, interrupted

    def __str__(self):
        how = " (after SIGINT)" if self.interrupted else ""
        return f"`{self.cmd}` exited {self.code}{how}\n--- stdout:\n{self.out}\n--- stderr:\n{self.err}"

    def ok(self) -> "Ran":
        assert self.code == 0, str(self)
        return self


def _start(cmd: str, cwd: Path, out_path: Path, err_path: Path) -> subprocess.Popen:
    # Own process group, so that SIGINT reaches every process of the line as Ctrl-C would.
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        return subprocess.Popen(["bash", "-c", cmd], cwd=str(cwd), env=user_env(), stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err, start_new_session=True, preexec_fn=_die_with_parent)


def _stop_group(proc: subprocess.Popen, sig=signal.SIGINT, timeout: float = 15.0) -> int:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        raise AssertionError(f"did not exit within {timeout} s of {sig!r}; killed")


def run_line(cmd: str, cwd: Path, scratch: Path, timeout: float = 60.0) -> Ran:
    """Runs one README line with bash in `cwd`; fails the test if it does not end in `timeout`."""
    return run_until(cmd, cwd, scratch, None, timeout)


def run_until(cmd: str, cwd: Path, scratch: Path, done: Optional[Callable[[str, str], bool]],
              timeout: float) -> Ran:
    """Runs a README line; a line that keeps running (a consumer waiting for more records) is
    interrupted with SIGINT, as the user's Ctrl-C, once `done(stdout, stderr)` holds. Fails the
    test if neither happens within `timeout`."""
    typed = as_typed(cmd, scratch)
    n = len(list(scratch.glob("line-*.out")))
    out_path, err_path = scratch / f"line-{n}.out", scratch / f"line-{n}.err"
    proc = _start(typed, cwd, out_path, err_path)

    def read():
        return out_path.read_text(errors="replace"), err_path.read_text(errors="replace")

    deadline = time.monotonic() + timeout
    interrupted = False
    try:
        while proc.poll() is None:
            if done is not None and done(*read()):
                interrupted = True
                _stop_group(proc)
                break
            if time.monotonic() > deadline:
                try:
                    _stop_group(proc)
                finally:
                    out, err = read()
                    as_run = f" (run as `{typed}`)" if typed != cmd else ""
                    pytest.fail(f"`{cmd}`{as_run} did not finish within {timeout} s\n"
                                f"--- stdout:\n{out}\n--- stderr:\n{err}")
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return Ran(cmd, proc.returncode, *read(), interrupted=interrupted)


def require(tool: str):
    if not shutil.which(tool):
        pytest.fail(f"{tool} is not installed (scripts/test-all.sh installs the test tools)")


# -- a broker started as the README says --

def ensure_port_free(port: int):
    # A broker stopped just before may hold its socket a moment longer: the kernel tears down an
    # io_uring instance, and the listener it holds, asynchronously.
    deadline = time.monotonic() + 5
    while port_has_listener(port):
        if time.monotonic() > deadline:
            pytest.fail(f"port {port} on this machine is already in use: the README's broker needs the "
                        f"default ports {KAFKA_PORT} (Kafka) and {ADMIN_PORT} (admin HTTP) free; stop "
                        f"whatever listens on {port} and run again")
        time.sleep(0.05)


class ReadmeBroker:
    """A broker process started by a README command line, with the user's defaults."""

    def __init__(self, argv: List[str], cwd: Path, scratch: Path, name: str):
        self.argv, self.cwd, self.scratch, self.name = argv, Path(cwd), Path(scratch), name
        self.log_path = self.scratch / f"{name}.log"
        self.proc: Optional[subprocess.Popen] = None

    def start(self, ready_timeout: float):
        for port in (KAFKA_PORT, ADMIN_PORT):
            ensure_port_free(port)
        with open(self.log_path, "wb") as log:
            log.write(f"===== {' '.join(self.argv)}  (cwd {self.cwd})\n".encode())
            log.flush()
            # Own process group: SIGINT goes to it as the terminal's Ctrl-C would (`cargo run`
            # included); NO_COLOR only keeps the log readable in failure reports.
            self.proc = subprocess.Popen(self.argv, cwd=str(self.cwd), env=user_env(NO_COLOR="1"),
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        self.wait_ready(ready_timeout)
        return self

    def wait_ready(self, timeout: float):
        wait_api_versions(self.proc, KAFKA_PORT, timeout, f"`{' '.join(self.argv)}`", self.log_tail, self.kill)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def interrupt(self, timeout: float = 30.0) -> int:
        """Ctrl-C, as the README says to stop it; returns the exit code."""
        try:
            return _stop_group(self.proc, signal.SIGINT, timeout)
        except AssertionError as e:
            pytest.fail(f"broker {e}; output:\n{self.log_tail()}")

    def kill(self):
        if self.running():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def log_tail(self, n: int = 80) -> str:
        try:
            lines = ANSI.sub("", self.log_path.read_text(errors="replace")).splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


def report_logs(request, broker: ReadmeBroker):
    """conftest's report hook prints the tail of these brokers' output when a test fails."""
    request.node._strom_brokers = [broker]


def scratch_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def remove_scratch(path: Path):
    if not os.environ.get("STROM_KEEP_TMP"):
        shutil.rmtree(path, ignore_errors=True)


# -- reading back what the commands wrote (confluent-kafka, in this process) --

def end_offset(topic: str, partition: int = 0) -> int:
    """High watermark, 0 for a topic that does not exist. Lists all topics rather than asking
    for this one, so that the topic is not auto-created here instead of by the README command."""
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient
    md = AdminClient({"bootstrap.servers": BOOTSTRAP}).list_topics(timeout=10)
    if topic not in md.topics or partition not in md.topics[topic].partitions:
        return 0
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "readme-test-reader"})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1]
    finally:
        c.close()


def read_topic(topic: str, timeout: float = 20.0):
    """Every record of every partition: [(partition, offset, key, value, timestamp ms, headers)]."""
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient
    md = AdminClient({"bootstrap.servers": BOOTSTRAP}).list_topics(timeout=10)
    assert topic in md.topics, f"topic {topic} does not exist"
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "readme-test-reader", "enable.auto.commit": False})
    try:
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in md.topics[topic].partitions}
        c.assign([TopicPartition(topic, p, 0) for p, end in ends.items() if end > 0])
        want = sum(ends.values())
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < want and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            assert not m.error(), m.error()
            if m.offset() < ends[m.partition()]:
                out.append((m.partition(), m.offset(), m.key(), m.value(), m.timestamp()[1], m.headers() or []))
        assert len(out) == want, f"read {len(out)} of {want} records of {topic}"
        return sorted(out)
    finally:
        c.close()


def committed(group: str, topic: str, partition: int = 0) -> int:
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": group, "enable.auto.commit": False})
    try:
        return c.committed([TopicPartition(topic, partition)], timeout=10)[0].offset
    finally:
        c.close()


# -- the kcat block, run against whichever default broker is up --

def run_kcat_block(cwd: Path, scratch: Path):
    require("kcat")
    hw = end_offset("demo")
    seen = set()
    produce_cmd = None
    for cmd in sh_commands(block("With kcat", "sh")):
        w = words(cmd)
        if "-L" in w:
            r = run_line(cmd, cwd, scratch).ok()
            assert "1 brokers:" in r.out and f"broker 0 at {BOOTSTRAP}" in r.out, str(r)
            seen.add("metadata")
        elif "-P" in w:
            produce_cmd = cmd
            # The first produce of a fresh broker also creates the topic: with a relative data
            # directory this is where the broker used to answer KAFKA_STORAGE_ERROR.
            r = run_line(cmd, cwd, scratch)
            assert r.code == 0 and "failed" not in r.err.lower(), str(r)
            records = printf_records(cmd)
            assert end_offset("demo") == hw + len(records), str(r)
            seen.add("produce")
        elif "-C" in w:
            assert produce_cmd, f"`{cmd}` comes before the kcat produce line in the README"
            r = run_line(cmd, cwd, scratch).ok()
            records = printf_records(produce_cmd)
            lines = r.out.splitlines()
            assert len(lines) == hw + len(records), str(r)
            assert lines[hw:] == [f"{k} => {v} (offset {hw + i})" for i, (k, v) in enumerate(records)], str(r)
            all_values = [re.match(r".* => (.*) \(offset \d+\)$", line).group(1) for line in lines]
            seen.add("consume")
        elif "-G" in w:
            assert produce_cmd and "consume" in seen, f"`{cmd}` comes before the produce and consume lines"
            run_kcat_group_line(cmd, cwd, scratch, produce_cmd, all_values)
            seen.add("group")
        else:
            run_line(cmd, cwd, scratch).ok()
    missing = {"metadata", "produce", "consume", "group"} - seen
    assert not missing, f"README 'With kcat' lost its {sorted(missing)} line(s); update tests/test_readme.py"


def run_kcat_group_line(cmd: str, cwd: Path, scratch: Path, produce_cmd: str, all_values: List[str]):
    """`kcat -G group topic` consumes until interrupted. kcat writes its records to a pipe only
    when it exits, but reports on stderr each time it has read a partition to its end; that is
    the condition to interrupt it, as the user would once the records are on screen.

    A new group starts where librdkafka's auto.offset.reset says, by default `latest`: as written
    (no `-o beginning`) the line prints the records produced while it runs, not those produced
    by the lines before it. So once it has joined, the README's produce line runs once more."""
    w = words(cmd)
    from_beginning = "beginning" in w or any("auto.offset.reset=earliest" in x or "auto.offset.reset=smallest" in x
                                             for x in w)
    end = end_offset("demo")
    typed = as_typed(cmd, scratch)
    n = len(list(scratch.glob("line-*.out")))
    out_path, err_path = scratch / f"line-{n}.out", scratch / f"line-{n}.err"
    proc = _start(typed, cwd, out_path, err_path)

    def wait_stderr(text: str, what: str, timeout: float = 30.0):
        # "at offset 2" must not match "at offset 20".
        pattern = re.compile(re.escape(text) + r"(?!\d)")
        deadline = time.monotonic() + timeout
        while not pattern.search(err_path.read_text(errors="replace")):
            if proc.poll() is not None or time.monotonic() > deadline:
                state = f"exited {proc.returncode}" if proc.poll() is not None else f"not within {timeout} s"
                pytest.fail(f"`{cmd}` never {what} ({state}): stderr has no {text!r}\n--- stdout:\n"
                            f"{out_path.read_text(errors='replace')}\n--- stderr:\n{err_path.read_text(errors='replace')}")
            time.sleep(0.05)

    try:
        group = w[w.index("-G") + 1]
        wait_stderr(f"Group {group} rebalanced", "joined its group")
        wait_stderr(f"Reached end of topic demo [0] at offset {end}", f"read demo up to offset {end}")
        if from_beginning:
            expected = all_values
        else:
            run_line(produce_cmd, cwd, scratch).ok()
            more = printf_records(produce_cmd)
            wait_stderr(f"Reached end of topic demo [0] at offset {end + len(more)}",
                        f"read the records produced while it ran (to offset {end + len(more)})")
            expected = [v for _, v in more]
        code = _stop_group(proc, signal.SIGINT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    ran = Ran(cmd, code, out_path.read_text(errors="replace"), err_path.read_text(errors="replace"), True)
    assert code == 0, str(ran)
    assert ran.out.splitlines() == expected, str(ran)


# -- the tests --

@pytest.mark.timeout(CARGO_S + 120)
def test_quickstart_cargo_run_then_kcat_block(request):
    """The quickstart's `cargo run --release --bin strom`, exactly as typed, then the kcat block."""
    require("cargo")
    lines = [c for c in sh_commands(block("Quickstart", "sh")) if words(c)[:2] == ["cargo", "run"]]
    if not lines:
        pytest.fail("README 'Quickstart' has no `cargo run` line any more; update tests/test_readme.py")
    # The block's other line, `bash scripts/test-all.sh`, is the CI entry point that runs this
    # file: it is not run from here.
    argv = words(lines[0])
    scratch = scratch_dir("strom-readme-quickstart-")
    repo_data = REPO / "strom-data"
    created = None
    if os.path.lexists(repo_data):
        # A developer's own ./strom-data is in the checkout: never touch it. `cargo run` runs the
        # binary in the current directory, so from a fresh directory, with --manifest-path to
        # find the workspace, the broker's ./strom-data is created there instead.
        cwd = scratch / "cwd"
        cwd.mkdir()
        at = argv.index("--") if "--" in argv else len(argv)
        argv = argv[:at] + ["--manifest-path", str(REPO / "Cargo.toml")] + argv[at:]
    else:
        # Literally as typed: in the checkout root, where cargo finds the workspace and the
        # broker creates ./strom-data (a clean clone, as in CI, has none); removed afterwards.
        cwd = REPO
        created = repo_data
    broker = ReadmeBroker(argv, cwd, scratch, "cargo-run")
    report_logs(request, broker)
    try:
        broker.start(ready_timeout=CARGO_S)
        run_kcat_block(cwd, scratch)
        assert (cwd / "strom-data" / "demo-0").is_dir(), \
            f"the broker did not keep topic demo under ./strom-data of its directory {cwd}"
        code = broker.interrupt()
        assert code == 0, f"`{' '.join(argv)}` exited {code} after SIGINT; output:\n{broker.log_tail()}"
    finally:
        broker.kill()
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        remove_scratch(scratch)


@pytest.fixture(scope="module")
def default_broker():
    """`strom` with no arguments, started from a fresh directory: the relative default data
    directory ./strom-data is created there. The last test stops it with SIGINT; if a test
    fails first, it is killed here."""
    binary = strom_bin()
    if not binary.exists():
        pytest.fail(f"broker binary {binary} not found: build it with `cargo build --release` "
                    f"or point STROM_BIN at it")
    scratch = scratch_dir("strom-readme-")
    cwd = scratch / "cwd"
    cwd.mkdir()
    broker = ReadmeBroker([str(binary.resolve())], cwd, scratch, "strom")
    try:
        broker.start(ready_timeout=30)
        yield broker
    finally:
        broker.kill()
        remove_scratch(scratch)


@pytest.fixture
def live_broker(default_broker, request) -> ReadmeBroker:
    report_logs(request, default_broker)
    if not default_broker.running():
        pytest.fail(f"the default broker is not running (exit {default_broker.proc.returncode}); "
                    f"output:\n{default_broker.log_tail()}")
    return default_broker


@pytest.mark.timeout(120)
def test_strom_without_arguments_then_kcat_block(live_broker):
    """`target/release/strom` with no arguments from a fresh directory, then the kcat block."""
    b = live_broker
    # The admin listener's default address.
    with urllib.request.urlopen(f"http://{HOST}:{ADMIN_PORT}/v1/health", timeout=10) as r:
        assert r.status == 200
    run_kcat_block(b.cwd, b.scratch)
    assert (b.cwd / "strom-data" / "demo-0").is_dir(), \
        f"topic demo is not under ./strom-data of the broker's directory {b.cwd}"


@pytest.mark.timeout(120)
def test_python_block(live_broker):
    """The confluent-kafka example, as a script run by the interpreter that runs these tests
    (the venv's, which has confluent-kafka)."""
    b = live_broker
    script = b.scratch / "readme_example.py"
    script.write_text(block("With Python (confluent-kafka)", "python"))
    before = end_offset("demo")
    # p.flush() waits for every delivery, and a producer retries a failing one for minutes.
    ran = run_until(f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}", b.cwd, b.scratch, None, 60)
    ran.ok()
    records = read_topic("demo")
    by_offset = {off: (k, v, h) for _, off, k, v, _, h in records}
    # Its three records, with their header, follow whatever demo held before.
    assert [(by_offset[before + i][0], by_offset[before + i][1]) for i in range(3)] == \
        [(f"k{i}".encode(), f"v{i}".encode()) for i in range(3)], str(ran)
    assert all(by_offset[before + i][2] == [("source", b"readme")] for i in range(3)), records
    lines = ran.out.splitlines()
    assert len(lines) == 4, str(ran)
    # The assigned consumer prints the first three records of demo from the beginning.
    assert lines[:3] == [f"{by_offset[o][0]!r} {by_offset[o][1]!r} {o}" for o in range(3)], str(ran)
    # The group member prints one record and commits the offset after it.
    g_off = int(lines[3].rsplit(" ", 1)[1])
    assert lines[3] == f"{by_offset[g_off][0]!r} {by_offset[g_off][1]!r} {g_off}", str(ran)
    assert committed("readme-group", "demo") == g_off + 1


def cli_kind(w: List[str]) -> str:
    """`topic create`, `consume -n`, ...: which README CLI line this is, from its words after `strom`."""
    args = w[len(w) - w[::-1].index("strom"):]
    if args[0] in ("topic", "group", "cluster"):
        return " ".join(args[:2])
    if args[0] == "consume":
        for flag in ("--from-timestamp", "-g", "-n"):
            if flag in args:
                return f"consume {flag}"
    return args[0]


CLI_CHECKED = {"topic create", "topic list", "topic describe", "topic alter-config", "topic add-partitions",
               "produce", "consume -n", "consume -g", "consume --from-timestamp", "group list",
               "group describe", "group reset-offsets", "group delete", "cluster info", "completions"}


@pytest.mark.timeout(300)
def test_cli_block(live_broker):
    """'Using the CLI', line by line in order, as pasted into a shell."""
    b = live_broker
    seen = set()
    orders: List = []
    for cmd in sh_commands(block("Using the CLI", "sh")):
        w = words(cmd)
        if "strom" not in w:
            run_line(cmd, b.cwd, b.scratch).ok()
            continue
        kind = cli_kind(w)
        args = w[len(w) - w[::-1].index("strom"):]
        seen.add(kind)
        if kind == "consume -n":
            # `-n N` exits after N records; with fewer in the topic it keeps waiting for more,
            # and the user stops it with Ctrl-C once the records are printed.
            n = int(args[args.index("-n") + 1])
            want = min(n, len(orders))
            r = run_until(cmd, b.cwd, b.scratch, lambda out, err: len(out.splitlines()) >= want, 30).ok()
            assert len(r.out.splitlines()) == want, str(r)
            for _, _, k, v, _, _ in orders:
                assert f"{k.decode()}={v.decode()}" in r.out, str(r)
        elif kind == "consume -g":
            r = run_line(cmd, b.cwd, b.scratch).ok()
            assert sorted(r.out.splitlines()) == sorted(v.decode() for *_, v, _, _ in orders), str(r)
        elif kind == "consume --from-timestamp":
            # Without -n or -e this consumer keeps waiting for more, too.
            text = args[args.index("--from-timestamp") + 1]
            since = int(datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
            want = sorted((p, o) for p, o, _, _, ts, _ in orders if ts >= since)
            if want:
                r = run_until(cmd, b.cwd, b.scratch, lambda out, err: len(out.splitlines()) >= len(want), 30).ok()
            else:
                # This machine's clock is before the README's date: nothing to print; give it
                # the time it needs to find that out, then stop it.
                t0 = time.monotonic()
                r = run_until(cmd, b.cwd, b.scratch, lambda out, err: time.monotonic() - t0 > 3, 30).ok()
            got = sorted((j["partition"], j["offset"]) for j in map(json.loads, r.out.splitlines()))
            assert got == want, str(r)
        else:
            r = run_line(cmd, b.cwd, b.scratch).ok()
            if kind == "topic create":
                assert args[2] in r.out and "created" in r.out, str(r)
            elif kind == "topic list":
                assert "orders" in r.out.split(), str(r)
            elif kind == "topic describe":
                assert "HIGH-WATERMARK" in r.out and "retention.ms" in r.out, str(r)
            elif kind == "topic add-partitions":
                assert "3 -> 5" in r.out, str(r)
            elif kind == "produce":
                produced = printf_records(cmd)
                assert f"produced {len(produced)} record(s)" in r.out + r.err, str(r)
                orders = read_topic(args[1])
                assert sorted((k.decode(), v.decode()) for _, _, k, v, _, _ in orders) == sorted(produced)
                assert all(h == [("source", b"cli")] for *_, h in orders), orders
            elif kind == "group list":
                assert "billing" in r.out.split(), str(r)
            elif kind == "group describe":
                assert "LAG" in r.out and "orders" in r.out, str(r)
            elif kind == "group reset-offsets":
                assert "billing" in r.out and "dry run" in r.out + r.err, str(r)
            elif kind == "group delete":
                assert "deleted" in r.out, str(r)
            elif kind == "cluster info":
                assert "127.0.0.1" in r.out and str(KAFKA_PORT) in r.out and "CONTROLLER" in r.out, str(r)
            elif kind == "completions":
                target = b.scratch / Path(w[w.index(">") + 1]).name
                assert target.exists() and "strom" in target.read_text(), f"{r}\nno completions in {target}"
    missing = CLI_CHECKED - seen
    assert not missing, f"README 'Using the CLI' lost its {sorted(missing)} line(s); update tests/test_readme.py"


def bench_timeout(w: List[str]) -> float:
    """A bound for one strom-bench line, from its own arguments."""
    def arg(flag, default):
        return float(w[w.index(flag) + 1]) if flag in w else default
    if "limits" in w:
        # Six measurements, each cut at --max-seconds.
        return 6 * arg("--max-seconds", 30) + 60
    if "--find-max" in w:
        # The max-rate probe, at most one step per fraction, one step halfway: each step is
        # --step-s after --warmup-s.
        fractions = len(w[w.index("--fractions") + 1].split(",")) if "--fractions" in w else 11
        return (fractions + 2) * (arg("--step-s", 10) + arg("--warmup-s", 2)) + 60
    if "run" in w:
        return arg("--duration-s", 60) + arg("--warmup-s", 2) + 60
    return 60


@pytest.mark.timeout(CARGO_S + 700)
def test_benchmarks_block(live_broker):
    """'Benchmarks' against the default broker, in its directory (so `--dir ./strom-data` is
    the broker's data directory); cargo runs in the checkout, where it finds the workspace.
    About 80 s on a 2-core VM, most of it the `--find-max` sweep (a 12 s step per rate it tries,
    at most 13); its runs write several GB into the broker's directory, removed afterwards."""
    b = live_broker
    reports: List[str] = []
    seen = set()
    for cmd in sh_commands(block("Benchmarks", "sh")):
        w = words(cmd)
        if w[0] == "cargo":
            run_line(cmd, REPO, b.scratch, timeout=CARGO_S).ok()
            seen.add("build")
            continue
        assert w[0].endswith("strom-bench"), f"unexpected Benchmarks line `{cmd}`"
        if "compare" in w:
            # The README compares a.json with a b.json that no line of the block writes: it
            # stands for the report of a second run. A copy of the first report stands in.
            for name in w[w.index("compare") + 1:]:
                if not (b.cwd / name).exists() and reports:
                    shutil.copy(b.cwd / reports[0], b.cwd / name)
            r = run_line(cmd, b.cwd, b.scratch).ok()
            assert "B/A" in r.out, str(r)
            seen.add("compare")
            continue
        r = run_line(cmd, b.cwd, b.scratch, timeout=bench_timeout(w)).ok()
        out = w[w.index("--json-out") + 1] if "--json-out" in w else None
        report = json.loads((b.cwd / out).read_text()) if out else None
        if "--svg-out" in w:
            assert (b.cwd / w[w.index("--svg-out") + 1]).read_text().startswith("<svg"), str(r)
        if "limits" in w:
            assert "sendfile" in r.out, str(r)
            if report is not None:
                assert report["direct_write_mb_s"] > 0 and report["loopback_sendfile_mb_s"] > 0, report
            seen.add("limits")
        elif "--find-max" in w:
            assert report is not None and len(report["find_max"]["steps"]) >= 2, str(r)
            seen.add("find-max")
        elif "run" in w:
            assert report is not None, str(r)
            res = report["result"]
            assert res["produced"]["messages"] > 0 and res["produced"]["errors"] == 0, res["produced"]
            if "--consumers" in w and int(w[w.index("--consumers") + 1]) > 0:
                assert res["consumed"]["messages"] > 0, res["consumed"]
            reports.append(out)
            seen.add("run")
    missing = {"build", "limits", "run", "find-max", "compare"} - seen
    assert not missing, f"README 'Benchmarks' lost its {sorted(missing)} line(s); update tests/test_readme.py"


@pytest.mark.timeout(60)
def test_default_broker_stops_on_sigint(live_broker):
    """Ctrl-C (SIGINT) stops it cleanly, its data in ./strom-data of the directory it ran in."""
    b = live_broker
    code = b.interrupt()
    assert code == 0, f"strom exited {code} after SIGINT; output:\n{b.log_tail()}"
    data = b.cwd / "strom-data"
    assert (data / "demo-0").is_dir(), sorted(p.name for p in data.iterdir()) if data.exists() else "no ./strom-data"
