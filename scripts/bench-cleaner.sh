#!/usr/bin/env bash
# Produce latency while the log cleaner (compaction) and retention work, against the same load
# without them, in one run and on one broker (core 0, one shard; the load generator on core 1).
#
# Every phase produces to two fresh topics at the same fixed rate, with 1 KiB records, acks=1
# and random keys:
#   A (baseline): both topics cleanup.policy=delete with default retention, so the cleaner and
#                 retention have nothing to do;
#   B (loaded):   "main" is compacted (cleanup.policy=compact, min.cleanable.dirty.ratio small,
#                 so every pass rewrites what arrived since the last one) and "side" is under
#                 retention pressure (cleanup.policy=delete, retention.bytes small).
# Both phases use the same segment.bytes, so rolling segments costs the same in both and the
# difference is the background work. Phases alternate A B A B ... to expose drift. The broker
# log (RUST_LOG=info) shows how many compaction passes and retention deletions ran in each
# measured window; the summary gives p50/p99/p99.9 per phase and the loaded/baseline p99 ratio.
#
# Usage: bash scripts/bench-cleaner.sh [OUT]     (after cargo build --release --workspace)
#        OUT: reports, broker log and summary (default /tmp/bench-cleaner; not in the repo)
# Env:   DATA=dir            broker data directory (default OUT/data, wiped first)
#        PORT=n              broker port on 127.0.0.1 (default 19300)
#        ROUNDS=n            A/B pairs (default 2)
#        RUN_S, WARMUP_S     measured seconds per phase (20) and warm-up before them (5)
#        RATE_MAIN, RATE_SIDE  rates of the two topics (16MB/s and 8MB/s)
#        PARTITIONS          per topic (2); LINGER_MS (1); KEYS (random:1000)
#        SEGMENT_BYTES       segment.bytes of all topics (1048576)
#        DIRTY_RATIO         min.cleanable.dirty.ratio of the compacted topic (0.01)
#        RETENTION_BYTES     retention.bytes of the retention topic (4194304, per partition)
#        BACKOFF_MS          log.cleaner.backoff.ms (200); RETENTION_CHECK_MS (200)
#        NICE=n              niceness of broker and load generator (default -20 when allowed)
#        PERF=1              after the measured phases, one more loaded phase under
#                            `perf record -g` (not in the summary): OUT/perf-loaded.txt
#        QUICK=1             short phases (5 s after 2 s), to try the script out
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD

OUT=$(realpath -m "${1:-/tmp/bench-cleaner}")
case "$OUT/" in
    "$REPO"/*) echo "OUT ($OUT) must be outside the repository" >&2; exit 2 ;;
esac
DATA=$(realpath -m "${DATA:-$OUT/data}")
case "$DATA" in
    / | "$REPO" | "$REPO"/* | "$HOME" | "$OUT") echo "DATA ($DATA) must be a directory of its own outside the repository" >&2; exit 2 ;;
esac
PORT=${PORT:-19300}
ROUNDS=${ROUNDS:-2}
RUN_S=${RUN_S:-20}
WARMUP_S=${WARMUP_S:-5}
if [[ -n "${QUICK:-}" ]]; then
    RUN_S=5
    WARMUP_S=2
fi
RATE_MAIN=${RATE_MAIN:-16MB/s}
RATE_SIDE=${RATE_SIDE:-8MB/s}
PARTITIONS=${PARTITIONS:-2}
LINGER_MS=${LINGER_MS:-1}
KEYS=${KEYS:-random:1000}
SEGMENT_BYTES=${SEGMENT_BYTES:-1048576}
DIRTY_RATIO=${DIRTY_RATIO:-0.01}
RETENTION_BYTES=${RETENTION_BYTES:-4194304}
BACKOFF_MS=${BACKOFF_MS:-200}
RETENTION_CHECK_MS=${RETENTION_CHECK_MS:-200}
NICE=${NICE:--20}
STROM=target/release/strom
STROM_BENCH=target/release/strom-bench
for bin in "$STROM" "$STROM_BENCH"; do
    [[ -x $bin ]] || { echo "$bin not found: cargo build --release --workspace" >&2; exit 2; }
done
if (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    echo "port $PORT is in use; set PORT" >&2
    exit 2
fi
# Higher priority than builds and tests sharing the machine, where allowed.
PRIO=()
if [[ $(nice -n "$NICE" nice 2>/dev/null) == "$NICE" ]]; then
    PRIO=(nice -n "$NICE")
else
    echo "note: cannot run at niceness $NICE; running at the default" >&2
fi

mkdir -p "$OUT"
rm -rf "$DATA"
mkdir -p "$DATA"
rm -f "$OUT"/*.json "$OUT"/*.out "$OUT/phases.tsv" "$OUT/summary.txt"

BROKER_ARGS=(--data-dir "$DATA" --listen "127.0.0.1:$PORT" --cores 1 -o log.cleaner.enable=true
    -o "log.cleaner.backoff.ms=$BACKOFF_MS" -o "log.retention.check.interval.ms=$RETENTION_CHECK_MS")
echo "broker: taskset -c 0 $STROM ${BROKER_ARGS[*]}" | tee "$OUT/command.txt"
RUST_LOG=info NO_COLOR=1 "${PRIO[@]}" taskset -c 0 "$STROM" "${BROKER_ARGS[@]}" >"$OUT/broker.log" 2>&1 &
BROKER=$!
SIDE_PID=
cleanup() {
    [[ -n $SIDE_PID ]] && kill "$SIDE_PID" 2>/dev/null || true
    kill "$BROKER" 2>/dev/null || true
    wait "$BROKER" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 100); do
    (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    kill -0 "$BROKER" 2>/dev/null || { echo "the broker exited:" >&2; tail -20 "$OUT/broker.log" >&2; exit 1; }
    sleep 0.1
done
(echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null || { echo "the broker does not listen on $PORT" >&2; exit 1; }

RUN=("$STROM_BENCH" -b "127.0.0.1:$PORT" run --partitions "$PARTITIONS" --keys "$KEYS" --acks 1
    --linger-ms "$LINGER_MS" --message-bytes 1024 --warmup-s "$WARMUP_S" --duration-s "$RUN_S" --quiet)
# Bounded: a run that hangs is killed.
BENCH=("${PRIO[@]}" taskset -c 1 timeout "$((WARMUP_S + RUN_S + 120))" "${RUN[@]}")
echo "load, two at once: taskset -c 1 ${RUN[*]} --topic <phase>-main --rate $RATE_MAIN <main configs>" \
    "and the same with --topic <phase>-side --rate $RATE_SIDE <side configs>" | tee -a "$OUT/command.txt"
SEGMENT=(--topic-config "segment.bytes=$SEGMENT_BYTES")
MAIN_A=(--topic-config cleanup.policy=delete "${SEGMENT[@]}")
SIDE_A=(--topic-config cleanup.policy=delete "${SEGMENT[@]}")
MAIN_B=(--topic-config cleanup.policy=compact "${SEGMENT[@]}" --topic-config "min.cleanable.dirty.ratio=$DIRTY_RATIO")
SIDE_B=(--topic-config cleanup.policy=delete "${SEGMENT[@]}" --topic-config "retention.bytes=$RETENTION_BYTES")
{
    echo "A main: ${MAIN_A[*]}"
    echo "A side: ${SIDE_A[*]}"
    echo "B main: ${MAIN_B[*]}"
    echo "B side: ${SIDE_B[*]}"
} | tee -a "$OUT/command.txt"

phase() { # name kind(A|B) [prefix command, e.g. for perf]
    local name=$1 kind=$2 main side t0 t1
    if [[ $kind == A ]]; then main=("${MAIN_A[@]}") side=("${SIDE_A[@]}"); else main=("${MAIN_B[@]}") side=("${SIDE_B[@]}"); fi
    echo "== $name ($([[ $kind == A ]] && echo baseline || echo 'cleaner + retention'))"
    t0=$(date +%s.%N)
    "${BENCH[@]}" --topic "$name-side" --rate "$RATE_SIDE" "${side[@]}" --json-out "$OUT/$name-side.json" \
        >"$OUT/$name-side.out" 2>&1 &
    SIDE_PID=$!
    "${BENCH[@]}" --topic "$name-main" --rate "$RATE_MAIN" "${main[@]}" --json-out "$OUT/$name-main.json" \
        --svg-out "$OUT/$name-main.svg" >"$OUT/$name-main.out" 2>&1 || { cat "$OUT/$name-main.out" >&2; exit 1; }
    wait "$SIDE_PID" || { cat "$OUT/$name-side.out" >&2; exit 1; }
    SIDE_PID=
    t1=$(date +%s.%N)
    kill -0 "$BROKER" 2>/dev/null || { echo "the broker exited:" >&2; tail -20 "$OUT/broker.log" >&2; exit 1; }
    printf '%s\t%s\t%s\t%s\n' "$name" "$kind" "$t0" "$t1" >>"$OUT/phases.tsv"
    grep -E 'publish|broker:' "$OUT/$name-main.out" | sed 's/^/  main: /'
    grep -E 'publish|broker:' "$OUT/$name-side.out" | sed 's/^/  side: /'
}

for i in $(seq "$ROUNDS"); do
    phase "a$i" A
    phase "b$i" B
done

if [[ -n "${PERF:-}" ]]; then
    echo "== perf: one more loaded phase under perf record -g (not in the summary)"
    perf record -g -o "$OUT/perf-loaded.data" -p "$BROKER" -- sleep "$((WARMUP_S + RUN_S))" >/dev/null 2>&1 &
    PERF_PID=$!
    phase perf B
    wait "$PERF_PID" || true
    sed -i '$d' "$OUT/phases.tsv"
    perf report -i "$OUT/perf-loaded.data" --no-children --sort dso,sym --stdio 2>/dev/null \
        | grep -v '^$' | head -150 >"$OUT/perf-loaded.txt" || true
    echo "profile: $OUT/perf-loaded.txt"
fi

du -sb "$DATA"/*-main-* "$DATA"/*-side-* 2>/dev/null | sed "s|$DATA/||" >"$OUT/disk.txt" || true

python3 - "$OUT" "$RUN_S" "$WARMUP_S" <<'EOF' | tee "$OUT/summary.txt"
import datetime, json, re, sys
out, run_s, warmup_s = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
phases = [l.split("\t") for l in open(f"{out}/phases.tsv").read().splitlines()]

def ts(line):
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z", line)
    if not m:
        return None
    return datetime.datetime.fromisoformat(m.group(1)[:26]).replace(tzinfo=datetime.timezone.utc).timestamp()

def field(line, name):
    m = re.search(rf"\b{name}=(\d+)", line)
    return int(m.group(1)) if m else 0

events = []
for line in open(f"{out}/broker.log", errors="replace"):
    if "compacted log" in line or "retention deleted segments" in line:
        t = ts(line)
        if t is not None:
            events.append((t, line))

rows = []
for name, kind, t0, t1 in phases:
    t0, t1 = float(t0), float(t1)
    r = {"phase": name, "kind": kind}
    for topic in ("main", "side"):
        rep = json.load(open(f"{out}/{name}-{topic}.json"))["result"]
        lat = rep["publish_latency"]
        r[topic] = {k: lat[k] / 1000 for k in ("p50_us", "p99_us", "p999_us", "max_us")}
        r[topic]["mb_per_s"] = rep["produced"]["mb_per_s"]
        r[topic]["errors"] = rep["produced"]["errors"]
        if topic == "main":
            r["broker_cpu_pct"] = (rep.get("broker") or {}).get("cpu_pct")
            r["client_cpu_pct"] = rep["client"]["cpu_pct"]
    # Measured window: after the warm-up, until the runs ended (topic creation takes < 0.5 s).
    w0, w1 = t0 + warmup_s + 0.5, t1
    passes = [l for t, l in events if w0 <= t <= w1 and "compacted log" in l]
    deletions = [l for t, l in events if w0 <= t <= w1 and "retention deleted" in l]
    r["window_s"] = round(w1 - w0, 1)
    r["compaction_passes"] = len(passes)
    r["compacted_segments"] = sum(field(l, "segments") for l in passes)
    r["compacted_mb_before"] = round(sum(field(l, "bytes_before") for l in passes) / 1e6, 1)
    r["compacted_mb_after"] = round(sum(field(l, "bytes_after") for l in passes) / 1e6, 1)
    r["retention_runs"] = len(deletions)
    r["retention_segments_deleted"] = sum(field(l, "segments") for l in deletions)
    rows.append(r)

print()
print(f"{'phase':<6} {'kind':<4} {'topic':<5} {'MB/s':>5} {'p50 ms':>7} {'p99 ms':>7} {'p99.9 ms':>8} {'max ms':>7}"
      f"  {'broker cpu':>10}  compaction passes (segments, MB read -> kept)  retention deletions (segments)")
for r in rows:
    for topic in ("main", "side"):
        x = r[topic]
        head = f"{r['phase']:<6} {r['kind']:<4}" if topic == "main" else " " * 11
        line = (f"{head} {topic:<5} {x['mb_per_s']:>5.1f} {x['p50_us']:>7.2f} {x['p99_us']:>7.2f} {x['p999_us']:>8.2f}"
                f" {x['max_us']:>7.2f}")
        if topic == "main":
            passes = (f"{r['compaction_passes']} ({r['compacted_segments']}, {r['compacted_mb_before']} -> "
                      f"{r['compacted_mb_after']})")
            line += (f"  {str(r['broker_cpu_pct']) + '%':>10}  {passes:<45}  "
                     f"{r['retention_runs']} ({r['retention_segments_deleted']})")
        print(line)

summary = {"phases": rows}
bad = []
for r in rows:
    if r["kind"] == "A" and (r["compaction_passes"] or r["retention_runs"]):
        bad.append(f"{r['phase']}: the baseline saw background work")
    if r["kind"] == "B" and not (r["compaction_passes"] and r["retention_runs"]):
        bad.append(f"{r['phase']}: the cleaner or retention did not run in the measured window")
    for topic in ("main", "side"):
        if r[topic]["errors"]:
            bad.append(f"{r['phase']} {topic}: {r[topic]['errors']} produce errors")
print()
for topic in ("main", "side"):
    a = [r[topic]["p99_us"] for r in rows if r["kind"] == "A"]
    b = [r[topic]["p99_us"] for r in rows if r["kind"] == "B"]
    ratio = (sum(b) / len(b)) / (sum(a) / len(a))
    pairs = [round(y / x, 2) for x, y in zip(a, b)]
    spread = max(a) / min(a)
    summary[topic] = {"baseline_p99_ms": a, "loaded_p99_ms": b, "ratio": round(ratio, 2), "pair_ratios": pairs,
                      "baseline_spread": round(spread, 2)}
    print(f"{topic}: p99 baseline {', '.join(f'{x:.2f}' for x in a)} ms; loaded {', '.join(f'{x:.2f}' for x in b)} ms; "
          f"loaded/baseline {ratio:.2f} (pairs {', '.join(map(str, pairs))}; baseline spread max/min {spread:.2f}) "
          f"-> target <= 1.5x {'met' if ratio <= 1.5 else 'NOT met'}")
cpu_a = [r["broker_cpu_pct"] for r in rows if r["kind"] == "A" and r["broker_cpu_pct"] is not None]
cpu_b = [r["broker_cpu_pct"] for r in rows if r["kind"] == "B" and r["broker_cpu_pct"] is not None]
if cpu_a and cpu_b:
    print(f"broker CPU: baseline {sum(cpu_a) / len(cpu_a):.1f}%, loaded {sum(cpu_b) / len(cpu_b):.1f}% of its core")
for line in bad:
    print("WARNING:", line)
summary["warnings"] = bad
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)
EOF
echo "disk use at the end (bytes):"
sed 's/^/  /' "$OUT/disk.txt"
echo "reports in $OUT"
