#!/usr/bin/env bash
# Replication's cost, measured on a local three-node cluster (scripts/cluster.sh, nodes on
# 127.0.1.1-3, one shard each; the three nodes and the load generator share this machine's
# cores). In one run:
#   1. the sustainable maximum of acks=all produce to a replication-factor-1 topic and to a
#      replication-factor-3 topic (min.insync.replicas=2), and their ratio;
#   2. publish latency at half of the RF=1 maximum, RF=1 and RF=3, acks=all, back to back, and
#      again at half of the RF=3 maximum;
#   3. follower lag during the RF=3 run, sampled from the leader's /metrics every 100 ms
#      (strom_cluster_replica_lag_messages) while producing at that rate;
#   4. rejoin: one follower of the RF=3 topic is stopped while producers write at REJOIN_RATE
#      for REJOIN_S seconds, then started again; the time until it is back in the ISR.
# Reports (JSON and SVG per run) and a summary go to OUT.
#
# Usage: bash scripts/bench-cluster.sh [OUT]        (after cargo build --release --workspace)
# Env:   STEP_S=n        seconds per find-max step (default 4)
#        RUN_S=n         seconds of each latency run (default 15)
#        REJOIN_S=n      seconds the follower is down (default 60)
#        REJOIN_RATE=r   producer rate while it is down (default 10MB/s)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT=$(realpath -m "${1:-bench-cluster}")
STEP_S=${STEP_S:-4}
RUN_S=${RUN_S:-15}
REJOIN_S=${REJOIN_S:-60}
REJOIN_RATE=${REJOIN_RATE:-10MB/s}
STROM="$ROOT/target/release/strom"
BENCH="$ROOT/target/release/strom-bench"
if [[ ! -x "$STROM" || ! -x "$BENCH" ]]; then
    echo "build first: cargo build --release --workspace" >&2
    exit 1
fi
mkdir -p "$OUT"
WORK=$(mktemp -d)
cd "$WORK"
export STROM_BIN="$STROM"
cleanup() { bash "$ROOT/scripts/cluster.sh" clean >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT
bash "$ROOT/scripts/cluster.sh" up 3 -o replica.lag.time.max.ms=2000 >"$OUT/cluster-up.txt"
BOOT=127.0.1.1:9092,127.0.1.2:9092,127.0.1.3:9092

# One-partition topics: a partition is the unit of replication and of ordering.
"$STROM" topic -b "$BOOT" create rf1 -p 1 -r 1 >/dev/null
"$STROM" topic -b "$BOOT" create rf3 -p 1 -r 3 -c min.insync.replicas=2 >/dev/null
leader_of() { # topic -> node index of partition 0's leader
    "$STROM" topic -b "$BOOT" describe "$1" --format json |
        python3 -c "import json, sys; print(json.load(sys.stdin)['partitions'][0]['leader'])"
}
isr_of() {
    "$STROM" topic -b "$BOOT" describe "$1" --format json |
        python3 -c "import json, sys; print(len(json.load(sys.stdin)['partitions'][0]['isr']))"
}

run() { # name, then strom-bench run flags
    local name=$1
    shift
    echo "== $name"
    "$BENCH" run -b "$BOOT" --quiet --json-out "$OUT/$name.json" --svg-out "$OUT/$name.svg" "$@" \
        >"$OUT/$name.txt"
    tail -n 25 "$OUT/$name.txt"
}
field() { # report, python expression over r
    python3 -c "import json; r = json.load(open('$OUT/$1.json')); print($2)"
}

FLAGS=(--acks -1 --linger-ms 0 --message-bytes 1024)
run find-max-rf1 --topic rf1 --find-max --target-p99-ms 5 "${FLAGS[@]}" --warmup-s 1 --step-s "$STEP_S"
run find-max-rf3 --topic rf3 --find-max --target-p99-ms 5 "${FLAGS[@]}" --warmup-s 1 --step-s "$STEP_S"
MAX1=$(field find-max-rf1 "int(r['find_max']['sustainable_messages_per_s'] or 0)")
MAX3=$(field find-max-rf3 "int(r['find_max']['sustainable_messages_per_s'] or 0)")
HALF=$((MAX1 / 2))
HALF3=$((MAX3 / 2))

run latency-rf1 --topic rf1 --rate "$HALF" "${FLAGS[@]}" --warmup-s 2 --duration-s "$RUN_S"
# Follower lag, sampled on the leader while the RF=3 run goes on.
LEADER=$(leader_of rf3)
python3 - "$LEADER" "$RUN_S" >"$OUT/follower-lag.txt" <<'EOF' &
import re, sys, time, urllib.request
leader, run_s = int(sys.argv[1]), float(sys.argv[2])
url = f"http://127.0.1.{leader + 1}:9644/metrics"
pat = re.compile(r'^strom_cluster_replica_lag_messages\{topic="rf3",partition="0",replica="\d+"\} (-?\d+)', re.M)
samples = []
end = time.monotonic() + run_s + 2
while time.monotonic() < end and len(samples) < 100000:
    try:
        text = urllib.request.urlopen(url, timeout=1).read().decode()
        samples += [int(v) for v in pat.findall(text) if int(v) >= 0]
    except OSError:
        pass
    time.sleep(0.1)
samples.sort()
pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))] if samples else -1
print(f"follower lag (messages behind the leader's log end, {len(samples)} samples): "
      f"p50 {pick(0.5)}, p99 {pick(0.99)}, max {samples[-1] if samples else -1}")
EOF
SAMPLER=$!
run latency-rf3 --topic rf3 --rate "$HALF" "${FLAGS[@]}" --warmup-s 2 --duration-s "$RUN_S"
wait "$SAMPLER" || true
run latency3-rf1 --topic rf1 --rate "$HALF3" "${FLAGS[@]}" --warmup-s 2 --duration-s "$RUN_S"
run latency3-rf3 --topic rf3 --rate "$HALF3" "${FLAGS[@]}" --warmup-s 2 --duration-s "$RUN_S"

# Rejoin: stop a follower while producers keep writing, start it again, time until in sync.
FOLLOWER=$("$STROM" topic -b "$BOOT" describe rf3 --format json |
    python3 -c "import json, sys; p = json.load(sys.stdin)['partitions'][0]; print([r for r in p['replicas'] if r != p['leader']][0])")
echo "== rejoin: follower $FOLLOWER down for ${REJOIN_S} s at $REJOIN_RATE"
kill -KILL "$(cat "$WORK/strom-cluster/node-$FOLLOWER/pid")"
"$BENCH" run -b "$BOOT" --quiet --topic rf3 --acks 1 --rate "$REJOIN_RATE" --warmup-s 0 \
    --duration-s "$REJOIN_S" >"$OUT/rejoin-load.txt"
START=$(date +%s.%N)
bash "$ROOT/scripts/cluster.sh" up 3 -o replica.lag.time.max.ms=2000 >/dev/null
for _ in $(seq 1200); do
    [[ "$(isr_of rf3)" == 3 ]] && break
    sleep 0.05
done
END=$(date +%s.%N)
REJOIN=$(python3 -c "print(f'{$END - $START:.2f}')")

{
    echo "cluster: 3 nodes x 1 shard + load generator on $(nproc) cores; 1 KiB records, acks=all, linger 0"
    echo "sustainable maximum at publish p99 <= 5 ms: RF=1 $MAX1 msg/s, RF=3 $MAX3 msg/s, ratio $(python3 -c "print(f'{$MAX3 / max($MAX1, 1):.2f}')")"
    lat() { field "$1" "'p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms, max %.2f ms' % tuple(r['result']['publish_latency'][k] / 1000 for k in ('p50_us', 'p99_us', 'p999_us', 'max_us'))"; }
    for t in rf1 rf3; do
        echo "at $HALF msg/s (half of the RF=1 maximum), $t: publish $(lat latency-$t)"
    done
    for t in rf1 rf3; do
        echo "at $HALF3 msg/s (half of the RF=3 maximum), $t: publish $(lat latency3-$t)"
    done
    cat "$OUT/follower-lag.txt"
    echo "rejoin: follower down ${REJOIN_S} s at $REJOIN_RATE (acks=1), back in the ISR ${REJOIN} s after its restart began"
} | tee "$OUT/summary.txt"
