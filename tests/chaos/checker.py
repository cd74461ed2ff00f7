"""Reads a chaos run's history and fault log and reports what went wrong, in the vocabulary of
Jepsen's queue checkers.

Violations (the run fails):
  lost                  an acknowledged value is not in the final read
  ack-offset-mismatch   an acknowledged value is in the final read, but not at the offset its
                        acknowledgement gave
  inconsistent-offsets  two different values observed at one (partition, offset), across
                        acknowledgements, concurrent reads and the final read
  duplicate-idempotent  a value of an idempotent producer at two offsets
  per-key-order         an idempotent producer's values of one key out of send order in the log
  non-monotonic         a reader got an offset at or below one it had already got, within one
                        session (no reposition in between)
  foreign               a value read that no producer sent (or with the wrong key or partition):
                        corrupt or invented bytes served
  replica-divergence    after the final heal, replicas of a partition that never reach the same
                        end offset, or hold different bytes
  final-read            the final read could not reach the high watermarks (nothing verified)
  crash                 a node exited without being killed

Informational: unseen (acknowledged, never read by the concurrent readers), duplicates of the
non-idempotent producer, offsets skipped by a reader, reader offset resets, nacks by error,
fatal producer errors, and availability per fault: acknowledgements in the fault window, the
longest gap between acknowledgements (any partition) in the fault and in the recovery window,
and for each partition a victim led, its longest gap between acknowledgements from the fault's
start to the end of the recovery window (after a leader's SIGKILL: from its last ack before the
kill to its first after the restart).

Availability is asserted only through `AvailabilityPolicy` (`AVAILABILITY` is the one place to
tighten it).
"""

import bisect
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from chaos.workload import key_of, parse_value, partition_of

VIOLATION_KINDS = ("lost", "ack-offset-mismatch", "inconsistent-offsets", "duplicate-idempotent",
                   "per-key-order", "non-monotonic", "foreign", "replica-divergence", "final-read", "crash")
SHOWN = 10  # examples kept per violation kind


@dataclass
class AvailabilityPolicy:
    """What availability a run must show. None turns a check off."""
    # Acknowledgements over the whole run: acks kept flowing.
    min_total_acks: Optional[int] = 1
    # Per partition whose leader is not a victim, from the start of each fault that leaves a
    # majority of nodes healthy to the end of its recovery window.
    min_acks_per_healthy_partition: Optional[int] = None
    # Per fault kind: for partitions a victim led, their longest gap between acks around the
    # fault (kinds not named are not checked).
    max_unavailable_s: Optional[Dict[str, float]] = None


# The targets: a partition whose leader is SIGKILLed is back within 2 s (3 s when the victim was
# the active controller as well), and every partition whose leader survives a fault that leaves
# a majority keeps taking acknowledgements. A paused or cut-off leader is not bounded here:
# clients wait for their requests to it to time out before they look for the new leader.
AVAILABILITY = AvailabilityPolicy(min_total_acks=1000, min_acks_per_healthy_partition=100,
                                  max_unavailable_s={"kill-leader": 2.0, "kill-controller": 3.0})


@dataclass
class Report:
    violations: Dict[str, List[str]] = field(default_factory=dict)  # kind -> first SHOWN messages
    counts: Dict[str, int] = field(default_factory=dict)  # kind -> how many
    info: Dict[str, object] = field(default_factory=dict)
    faults: List[dict] = field(default_factory=list)
    meta: Dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.counts

    def add(self, kind: str, message: str):
        assert kind in VIOLATION_KINDS, kind
        self.counts[kind] = self.counts.get(kind, 0) + 1
        shown = self.violations.setdefault(kind, [])
        if len(shown) < SHOWN:
            shown.append(message)

    def to_json(self) -> dict:
        return {"ok": self.ok, **asdict(self)}


def load_jsonl(path: Path) -> Iterable[dict]:
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                yield json.loads(line)


# ---------------------------------------------------------------------------------------------
# The checks


class _State:
    """What one pass over the history collects."""

    def __init__(self):
        self.idempotent: Dict[int, bool] = {}
        self.sent: Dict[int, int] = {}
        self.acks: List[Tuple[float, int, str, int, int]] = []  # (t, producer, value, partition, offset)
        self.nacks: Dict[str, int] = {}
        self.fatal: Dict[int, str] = {}  # producer -> its fatal error
        # (partition, offset) -> first value observed, and where
        self.at: Dict[Tuple[int, int], Tuple[Optional[str], str]] = {}
        self.conflicts: Dict[Tuple[int, int], Dict[Optional[str], str]] = {}
        # value -> the offsets it was read at (polls and final)
        self.read_at: Dict[str, Tuple[int, int]] = {}
        self.read_dups: Dict[str, set] = {}
        self.seen: set = set()  # values the concurrent readers got
        self.reads = 0
        self.last: Dict[Tuple[str, int, int], int] = {}  # (reader, session, partition) -> offset
        self.skipped_offsets = 0
        self.sessions: Dict[str, int] = {}
        self.resets = 0
        self.reader_errors: Dict[str, int] = {}
        self.final: Dict[int, List[Tuple[int, Optional[str], Optional[str]]]] = {}
        self.final_end: Optional[dict] = None
        self.replicas: Optional[dict] = None
        self.foreign_at: set = set()


def _observe(s: _State, partition: int, offset: int, value: Optional[str], source: str):
    key = (partition, offset)
    first = s.at.get(key)
    if first is None:
        s.at[key] = (value, source)
    elif first[0] != value:
        conflict = s.conflicts.setdefault(key, {first[0]: first[1]})
        if value not in conflict:
            conflict[value] = source


def _check_record(s: _State, report: Report, partition: int, offset: int, key: Optional[str],
                  value: Optional[str], source: str):
    """A record a reader got: known value, right key and partition; remembered for duplicates."""
    _observe(s, partition, offset, value, source)
    ident = parse_value(value)
    problem = None
    if ident is None:
        problem = f"a value no producer writes: {value!r:.80}"
    else:
        producer, seq = ident
        if producer not in s.idempotent:
            problem = f"{value} of an unknown producer"
        elif producer in s.sent and seq >= s.sent[producer]:
            problem = f"{value}: producer {producer} sent only {s.sent[producer]} values"
        elif key != key_of(producer, seq):
            problem = f"{value} with key {key!r}, sent with {key_of(producer, seq)!r}"
        elif partition != partition_of(seq):
            problem = f"{value} in partition {partition}, sent to {partition_of(seq)}"
    if problem is not None:
        if (partition, offset) not in s.foreign_at:
            s.foreign_at.add((partition, offset))
            report.add("foreign", f"{partition}/{offset} ({source}): {problem}")
        return
    where = (partition, offset)
    first = s.read_at.get(value)
    if first is None:
        s.read_at[value] = where
    elif first != where:
        s.read_dups.setdefault(value, {first}).add(where)


def _pass(events: Iterable[dict], report: Report) -> _State:
    s = _State()
    deferred_reads = []  # records read before their producer's `producer` line was seen
    for e in events:
        kind = e.get("type")
        if kind == "producer":
            s.idempotent[e["producer"]] = bool(e["idempotent"])
        elif kind == "producer-end":
            s.sent[e["producer"]] = max(s.sent.get(e["producer"], 0), e["sent"])
            if e.get("fatal"):
                s.fatal.setdefault(e["producer"], e["fatal"])
        elif kind == "producer-error":
            if e.get("fatal"):
                s.fatal.setdefault(e["producer"], f"{e['error']}: {e.get('message', '')}")
        elif kind == "ack":
            s.acks.append((e["t"], e["producer"], e["value"], e["partition"], e["offset"]))
            _observe(s, e["partition"], e["offset"], e["value"], f"ack of producer {e['producer']}")
        elif kind == "nack":
            s.nacks[e["error"]] = s.nacks.get(e["error"], 0) + 1
        elif kind == "session":
            s.sessions[e["reader"]] = s.sessions.get(e["reader"], 0) + 1
            if e.get("why") == "offset-reset":
                s.resets += 1
        elif kind == "reader-error":
            s.reader_errors[e["error"]] = s.reader_errors.get(e["error"], 0) + 1
        elif kind == "poll":
            reader, session, p = e["reader"], e["session"], e["partition"]
            for offset, key, value in e["records"]:
                s.reads += 1
                k = (reader, session, p)
                last = s.last.get(k)
                if last is not None:
                    if offset <= last:
                        report.add("non-monotonic", f"reader {reader} (session {session}) got {p}/{offset} "
                                                    f"after {p}/{last} at t={e['t']}")
                    elif offset > last + 1:
                        s.skipped_offsets += 1
                s.last[k] = offset
                s.seen.add(value)
                deferred_reads.append((p, offset, key, value, f"reader {reader}"))
        elif kind == "final":
            p = e["partition"]
            for offset, key, value in e["records"]:
                s.final.setdefault(p, []).append((offset, key, value))
                deferred_reads.append((p, offset, key, value, "final read"))
        elif kind == "final-end":
            s.final_end = e
        elif kind == "replicas":
            s.replicas = e
    # Reads are checked once every producer's totals are known (producer-end comes last).
    for p, offset, key, value, source in deferred_reads:
        _check_record(s, report, p, offset, key, value, source)
    for (p, offset), values in sorted(s.conflicts.items()):
        shown = ", ".join(f"{v!r} ({src})" for v, src in values.items())
        report.add("inconsistent-offsets", f"{p}/{offset} held {shown}")
    return s


def _check_final(s: _State, report: Report):
    end = s.final_end
    if end is None:
        report.add("final-read", "no final read in the history")
        return set()
    marks = {int(p): tuple(m) for p, m in end.get("marks", {}).items()}
    positions = {int(p): o for p, o in end.get("positions", {}).items()}
    for msg in end.get("errors", []):
        report.add("final-read", msg)
    complete = {p for p, (low, high) in marks.items() if positions.get(p, low) >= high}
    for p, recs in s.final.items():
        offsets = [o for o, _, _ in recs]
        low = marks.get(p, (0, 0))[0]
        if offsets != list(range(low, low + len(offsets))):
            report.add("final-read", f"partition {p}: the final read's offsets are not contiguous from {low}")
    return complete


def _check_acks(s: _State, report: Report, complete: set) -> Dict[str, int]:
    final_at: Dict[str, List[Tuple[int, int]]] = {}
    for p, recs in s.final.items():
        for offset, _, value in recs:
            final_at.setdefault(value, []).append((p, offset))
    unverifiable = 0
    for t, producer, value, p, offset in s.acks:
        if p not in complete:
            unverifiable += 1
            continue
        where = final_at.get(value)
        if not where:
            report.add("lost", f"{value} acknowledged at {p}/{offset} (t={t}) is not in the final read")
        elif (p, offset) not in where:
            report.add("ack-offset-mismatch", f"{value} acknowledged at {p}/{offset} is at "
                                              f"{', '.join(f'{a}/{b}' for a, b in where)}")
    unseen = sum(1 for _, _, value, _, _ in s.acks if value not in s.seen)
    return {"unverifiable_acks": unverifiable, "unseen": unseen}


def _check_duplicates_and_order(s: _State, report: Report) -> int:
    plain = 0
    for value, where in sorted(s.read_dups.items()):
        producer, _ = parse_value(value)
        if s.idempotent.get(producer):
            report.add("duplicate-idempotent", f"{value} at {', '.join(f'{p}/{o}' for p, o in sorted(where))}")
        else:
            plain += 1
    for p, recs in sorted(s.final.items()):
        last: Dict[str, Tuple[int, int]] = {}  # key -> (seq, offset)
        done = set()
        for offset, key, value in recs:
            ident = parse_value(value)
            if ident is None or not s.idempotent.get(ident[0]) or value in done:
                continue
            done.add(value)
            prev = last.get(key)
            if prev is not None and ident[1] < prev[0]:
                report.add("per-key-order", f"key {key}: {value} at {p}/{offset} after "
                                            f"p{ident[0]}-{prev[0]} at {p}/{prev[1]}")
            if prev is None or ident[1] > prev[0]:
                last[key] = (ident[1], offset)
    return plain


def _check_replicas(s: _State, report: Report):
    r = s.replicas
    if r is None:
        return
    for p, per in sorted(r.get("partitions", {}).items(), key=lambda x: int(x[0])):
        ends = {n: x["end_offset"] for n, x in per.items()}
        digests = {n: (x["bytes"], x["sha256"]) for n, x in per.items()}
        if len(set(ends.values())) != 1 or None in ends.values():
            report.add("replica-divergence", f"partition {p}: the replicas' end offsets did not converge: {ends}")
        elif len(set(digests.values())) != 1:
            sizes = {n: b for n, (b, _) in digests.items()}
            report.add("replica-divergence", f"partition {p}: replicas at end offset {next(iter(ends.values()))} "
                                             f"hold different bytes (sizes {sizes})")


# ---------------------------------------------------------------------------------------------
# Availability


def _longest_gap(times: List[float], start: float, end: float) -> float:
    """Longest stretch of [start, end] without an ack (edges count)."""
    prev, gap = start, 0.0
    for t in times:
        if t < start:
            continue
        if t > end:
            break
        gap = max(gap, t - prev)
        prev = t
    return round(max(gap, end - prev), 3)


def _count(times: List[float], start: float, end: float) -> int:
    return bisect.bisect_right(times, end) - bisect.bisect_left(times, start)


def _availability(s: _State, faults: List[dict]) -> List[dict]:
    all_times = sorted(t for t, *_ in s.acks)
    per_part: Dict[int, List[float]] = {}
    for t, _, _, p, _ in s.acks:
        per_part.setdefault(p, []).append(t)
    for times in per_part.values():
        times.sort()
    rows = []
    for f in faults:
        row = {k: f.get(k) for k in ("index", "kind", "params", "victims", "leaders", "controller", "skipped",
                                     "start", "healed", "recovered", "window_end", "recovery_ok",
                                     "recovery_state", "majority_healthy", "damage")}
        if f.get("skipped"):
            rows.append(row)
            continue
        start, healed, end = f["start"], f["healed"], f["window_end"]
        victims = set(f["victims"])
        leaders = {int(p): leader for p, leader in f["leaders"].items()}
        row["acks_fault"] = _count(all_times, start, healed)
        row["acks_recovery"] = _count(all_times, healed, end)
        row["max_gap_fault_s"] = _longest_gap(all_times, start, healed)
        row["max_gap_recovery_s"] = _longest_gap(all_times, healed, end)
        row["acks_fault_per_partition"] = {p: _count(per_part.get(p, []), start, healed) for p in sorted(leaders)}
        row["acks_window_per_partition"] = {p: _count(per_part.get(p, []), start, end) for p in sorted(leaders)}
        row["healthy_partitions"] = sorted(p for p, leader in leaders.items() if leader not in victims)
        # A partition a victim led: its longest stretch without an ack from the fault's start to
        # the end of its recovery window (acks of requests answered just before the fault
        # arrive just after its start; they do not end the outage).
        row["unavailable_s"] = {p: _longest_gap(per_part.get(p, []), start, end)
                                for p, leader in sorted(leaders.items()) if leader in victims}
        rows.append(row)
    return rows


def unavailability_by_kind(rows: List[dict]) -> Dict[str, dict]:
    """Per fault kind: how many faults ran, and the p50 and max over the partitions a victim led
    of their longest gap between acks (s)."""
    out: Dict[str, dict] = {}
    for kind in sorted({r["kind"] for r in rows}):
        ran = [r for r in rows if r["kind"] == kind and not r.get("skipped")]
        gaps = sorted(g for r in ran for g in (r.get("unavailable_s") or {}).values())
        out[kind] = {"faults": len(ran), "acks": sum(r["acks_fault"] + r["acks_recovery"] for r in ran),
                     "partitions": len(gaps),
                     "p50_s": gaps[(len(gaps) - 1) // 2] if gaps else None,
                     "max_s": gaps[-1] if gaps else None}
    return out


def availability_failures(report: Report, policy: AvailabilityPolicy) -> List[str]:
    out = []
    total = report.info.get("acks", 0)
    if policy.min_total_acks is not None and total < policy.min_total_acks:
        out.append(f"{total} acks in the whole run, fewer than {policy.min_total_acks}")
    for row in report.faults:
        if row.get("skipped"):
            continue
        if policy.min_acks_per_healthy_partition is not None and row.get("majority_healthy"):
            for p in row["healthy_partitions"]:
                n = row["acks_window_per_partition"].get(p, 0)
                if n < policy.min_acks_per_healthy_partition:
                    out.append(f"fault {row['index']} ({row['kind']}): {n} acks on partition {p}, whose leader "
                               f"was not a victim (want >= {policy.min_acks_per_healthy_partition})")
        limit = (policy.max_unavailable_s or {}).get(row["kind"])
        if limit is not None:
            for p, gap in row["unavailable_s"].items():
                if gap > limit:
                    out.append(f"fault {row['index']} ({row['kind']}): partition {p} had no ack for {gap:.2f} s "
                               f"(max {limit} s)")
    return out


# ---------------------------------------------------------------------------------------------
# Entry points


def check(events: Iterable[dict], faults: Iterable[dict], meta: Optional[dict] = None) -> Report:
    report = Report(meta=dict(meta or {}))
    faults = list(faults)
    s = _pass(events, report)
    complete = _check_final(s, report)
    acks_info = _check_acks(s, report, complete)
    plain_dups = _check_duplicates_and_order(s, report)
    _check_replicas(s, report)
    for f in faults:
        if f.get("type") == "crash":
            tail = "\n".join(f.get("log_tail", "").splitlines()[-8:])
            report.add("crash", f"node {f['node']} exited with code {f['exit_code']} at t={f.get('t')}:\n{tail}")
    fault_rows = [f for f in faults if f.get("type") == "fault"]
    report.faults = _availability(s, fault_rows)
    report.info["unavailable_by_kind"] = unavailability_by_kind(report.faults)
    report.info.update({
        "producers": {str(p): {"idempotent": i, "sent": s.sent.get(p)} for p, i in sorted(s.idempotent.items())},
        "acks": len(s.acks),
        "nacks": dict(sorted(s.nacks.items())),
        "reads": s.reads,
        "final_records": sum(len(r) for r in s.final.values()),
        "unseen": acks_info["unseen"],
        "unverifiable_acks": acks_info["unverifiable_acks"],
        "duplicates_non_idempotent": plain_dups,
        "skipped_offsets": s.skipped_offsets,
        "reader_sessions": s.sessions,
        "reader_offset_resets": s.resets,
        "reader_errors": dict(sorted(s.reader_errors.items())),
        "producer_fatal_errors": [f"producer {p}: {msg}" for p, msg in sorted(s.fatal.items())],
        "faults_run": sum(1 for f in fault_rows if not f.get("skipped")),
        "faults_skipped": [f"{f['index']} {f['kind']}: {f['skipped']}" for f in fault_rows if f.get("skipped")],
        "recovery_timeouts": [f"{f['index']} {f['kind']}: {f.get('recovery_state')}" for f in fault_rows
                              if not f.get("skipped") and not f.get("recovery_ok")],
        "replicas_converged": (s.replicas or {}).get("converged"),
    })
    return report


def check_dir(out_dir: Path, meta: Optional[dict] = None) -> Report:
    out_dir = Path(out_dir)
    faults_path = out_dir / "faults.jsonl"
    faults = list(load_jsonl(faults_path)) if faults_path.exists() else []
    return check(load_jsonl(out_dir / "history.jsonl"), faults, meta)


# ---------------------------------------------------------------------------------------------
# Output


def _fmt(x, digits=1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def fault_table(report: Report) -> List[str]:
    lines = ["| # | kind | victims | leaders p:node | start s | fault s | recover s | acks fault | acks recovery "
             "| max gap fault s | max gap recovery s | victim-led partitions: longest ack gap s | notes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report.faults:
        leaders = " ".join(f"{p}:{l}" for p, l in (r.get("leaders") or {}).items())
        victims = ",".join(str(v) for v in r.get("victims") or [])
        if r.get("skipped"):
            lines.append(f"| {r['index']} | {r['kind']} | {victims or '-'} | {leaders or '-'} | - | - | - | - | - "
                         f"| - | - | - | skipped: {r['skipped']} |")
            continue
        notes = []
        p = r.get("params") or {}
        if "delay_ms" in p:
            notes.append(f"delay {p['delay_ms']} ms")
        d = r.get("damage")
        if d:
            notes.append(f"{d['files']} files cut/zeroed {d['modes']}" if "files" in d
                         else f"{d.get('applied') or d.get('skipped')} at {d.get('segment', '')} "
                              f"(durable {d.get('durable')}/{d.get('size')} B)")
        if not r.get("recovery_ok"):
            notes.append(f"NOT RECOVERED: {r.get('recovery_state')}")
        unavailable = " ".join(f"{q}:{gap:.2f}" for q, gap in (r.get("unavailable_s") or {}).items()) or "-"
        lines.append(
            f"| {r['index']} | {r['kind']} | {victims} | {leaders} | {_fmt(r['start'])} | "
            f"{_fmt(r['healed'] - r['start'])} | {_fmt(r['recovered'] - r['healed'])} | {r['acks_fault']} | "
            f"{r['acks_recovery']} | {_fmt(r['max_gap_fault_s'], 2)} | {_fmt(r['max_gap_recovery_s'], 2)} | "
            f"{unavailable} | {'; '.join(notes)} |")
    return lines


def render(report: Report, availability: Optional[List[str]] = None) -> str:
    m, i = report.meta, report.info
    verdict = "PASS: no violation" if report.ok else f"FAIL: {sum(report.counts.values())} violation(s)"
    out = [f"# Chaos run: seed {m.get('seed')}, {i.get('faults_run')} fault(s) run of {m.get('cycles')}", "",
           f"**{verdict}**", ""]
    out += ["## Violations", ""]
    if report.ok:
        out.append("none")
    for kind in VIOLATION_KINDS:
        if kind in report.counts:
            out.append(f"- **{kind}**: {report.counts[kind]}")
            out += [f"  - {msg}".replace("\n", "\n    ") for msg in report.violations[kind]]
    out += ["", "## Workload", "",
            f"- acks {i.get('acks')}, nacks {i.get('nacks')}",
            f"- producers: {i.get('producers')}",
            f"- records read by the concurrent readers {i.get('reads')}, in the final read "
            f"{i.get('final_records')}",
            f"- unseen (acked, never read concurrently): {i.get('unseen')}",
            f"- duplicates of the non-idempotent producer: {i.get('duplicates_non_idempotent')}",
            f"- offsets skipped within a reader session: {i.get('skipped_offsets')}; reader offset resets: "
            f"{i.get('reader_offset_resets')}; reader errors: {i.get('reader_errors')}",
            f"- fatal producer errors: {i.get('producer_fatal_errors') or 'none'}",
            f"- acks not verifiable (final read incomplete on their partition): {i.get('unverifiable_acks')}",
            f"- replicas converged after the final heal: {i.get('replicas_converged')}"]
    for k in ("network_faults", "shutdown_exit_codes", "harness_errors", "elapsed_s"):
        if k in m:
            out.append(f"- {k.replace('_', ' ')}: {m[k]}")
    out += ["", "## Per fault kind", "",
            "| kind | faults | acks (fault + recovery) | victim-led partitions | longest ack gap p50 s | max s |",
            "|---|---|---|---|---|---|"]
    for kind, k in (i.get("unavailable_by_kind") or {}).items():
        out.append(f"| {kind} | {k['faults']} | {k['acks']} | {k['partitions']} | {_fmt(k['p50_s'], 2)} | "
                   f"{_fmt(k['max_s'], 2)} |")
    out += ["", "## Faults", ""] + fault_table(report)
    if i.get("faults_skipped"):
        out += ["", "Skipped: " + "; ".join(i["faults_skipped"])]
    if i.get("recovery_timeouts"):
        out += ["", "Not recovered within the timeout: " + "; ".join(i["recovery_timeouts"])]
    if availability is not None:
        out += ["", "## Availability policy", ""]
        out += [f"- {a}" for a in availability] or ["- met"]
    return "\n".join(out) + "\n"


def write(report: Report, out_dir: Path, availability: Optional[List[str]] = None) -> str:
    text = render(report, availability)
    out_dir = Path(out_dir)
    (out_dir / "report.md").write_text(text)
    data = report.to_json()
    data["availability_failures"] = availability
    (out_dir / "report.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    return text
