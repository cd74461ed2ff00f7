#!/usr/bin/env bash
# Light-load produce latency at fixed rates, as a latency-sensitive user sees it: librdkafka's
# own `rdkafka_performance` (one partition, 1 KiB messages, linger.ms=0, one message in flight
# per request as the rate allows) and `strom-bench run` at the same rates. A fresh broker and
# data directory per run. Prints p50/p90/p99/p99.9/max per run and the broker's own request
# stage percentiles (strom_request_stage_seconds, from /metrics) for Produce.
#
# Usage: bash scripts/bench-latency.sh [OUT]     (after cargo build --release --workspace)
# Env:   RDKAFKA_PERFORMANCE=path  rdkafka_performance binary (librdkafka's examples/; this script
#                                  does not build it). Default ~/.cache/strom/rdkafka_performance.
#                                  Without it only strom-bench runs.
#        RATES="1000 5000 20000"   messages per second
#        ACKS="1 all"              acks for each rate
#        SETUPS="2 1"              shard counts (--cores); "2" is the default on this machine
#        RUNS=1                    runs of each combination, alternating
#        SECONDS_PER_RUN=5         each run sends rate x this many messages (first 10% dropped)
#        DATA=dir                  where the brokers' data directories go (default: a temp dir)
#        PORT=n                    broker port on 127.0.0.1 (default 19300; admin is PORT+1)
#        CLIENTS="rdkafka strom-bench"
#        BROKER_SET="k=v ..."      extra broker settings (-o), e.g. connections.migrate.to.owner=false
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

OUT=${1:-bench-latency}
RDPERF=${RDKAFKA_PERFORMANCE:-$HOME/.cache/strom/rdkafka_performance}
RATES=${RATES:-"1000 5000 20000"}
ACKS=${ACKS:-"1 all"}
SETUPS=${SETUPS:-"2 1"}
RUNS=${RUNS:-1}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
PORT=${PORT:-19300}
ADMIN_PORT=$((PORT + 1))
CLIENTS=${CLIENTS:-"rdkafka strom-bench"}
DATA=${DATA:-$(mktemp -d)}
STROM=${STROM:-target/release/strom}
BENCH=${BENCH:-target/release/strom-bench}
mkdir -p "$OUT"
if [[ ! -x "$STROM" || ! -x "$BENCH" ]]; then
    echo "build first: cargo build --release --workspace" >&2
    exit 1
fi
if [[ " $CLIENTS " == *" rdkafka "* && ! -x "$RDPERF" ]]; then
    echo "note: no rdkafka_performance at $RDPERF (set RDKAFKA_PERFORMANCE); running strom-bench only" >&2
    CLIENTS=${CLIENTS//rdkafka/}
fi

BROKER=
stop_broker() {
    if [[ -n "$BROKER" ]]; then
        kill -INT "$BROKER" 2>/dev/null || true
        wait "$BROKER" 2>/dev/null || true
        BROKER=
    fi
}
trap stop_broker EXIT

start_broker() { # shards log
    local dir="$DATA/run-$RANDOM$RANDOM" set=()
    for kv in ${BROKER_SET:-}; do set+=(-o "$kv"); done
    "$STROM" --data-dir "$dir" --listen "127.0.0.1:$PORT" --cores "$1" \
        -o "admin.listeners=127.0.0.1:$ADMIN_PORT" "${set[@]}" >"$2" 2>&1 &
    BROKER=$!
    for _ in $(seq 200); do
        curl -sf "http://127.0.0.1:$ADMIN_PORT/v1/ready" >/dev/null 2>&1 && break
        sleep 0.05
    done
    "$STROM" topic create lat --partitions 1 -b "127.0.0.1:$PORT" >/dev/null
}

# Percentiles of a file of microsecond latencies (one per line), first 10% dropped.
percentiles() {
    python3 - "$1" <<'EOF'
import sys
v = [int(l) for l in open(sys.argv[1]) if l.strip()]
v = sorted(v[len(v) // 10:])
if not v:
    print("no samples"); sys.exit()
q = lambda p: v[min(len(v) - 1, int(p * len(v)))]
print(f"n={len(v)} p50={q(.5)} p90={q(.9)} p99={q(.99)} p99.9={q(.999)} max={v[-1]} (us)")
EOF
}

# The broker's Produce stage percentiles (p50/p99/p99.9/max, microseconds).
stages() {
    curl -sf "http://127.0.0.1:$ADMIN_PORT/metrics" | python3 -c '
import sys, collections
q = collections.defaultdict(dict)
for line in sys.stdin:
    if not line.startswith("strom_request_stage_seconds{api=\"Produce\""):
        continue
    labels, value = line.rsplit(" ", 1)
    kv = dict(p.split("=", 1) for p in labels[labels.index("{") + 1:-1].split(","))
    q[kv["stage"].strip("\"")][kv["quantile"].strip("\"")] = float(value) * 1e6
names = {"0.5": "p50", "0.99": "p99", "0.999": "p99.9", "1": "max"}
for stage, d in q.items():
    print("    stage %-9s " % stage + " ".join("%s=%.0f" % (names[k], d[k]) for k in names if k in d))
' || true
}

for run in $(seq "$RUNS"); do
    for shards in $SETUPS; do
        for acks in $ACKS; do
            for rate in $RATES; do
                count=$((rate * SECONDS_PER_RUN))
                for client in $CLIENTS; do
                    tag="shards$shards-acks$acks-rate$rate-$client-run$run"
                    start_broker "$shards" "$OUT/$tag.broker.log"
                    echo "== $tag"
                    if [[ $client == rdkafka ]]; then
                        a=$acks
                        [[ $a == all ]] && a=-1
                        ${CLIENT_TASKSET:-} "$RDPERF" -P -t lat -p 0 -s 1024 -r "$rate" -c "$count" -l -a "$a" \
                            -b "127.0.0.1:$PORT" -X linger.ms=0 -A "$OUT/$tag.us" -q \
                            >"$OUT/$tag.client.log" 2>&1 || echo "rdkafka_performance failed"
                        echo "  client: $(percentiles "$OUT/$tag.us")"
                    else
                        a=$acks
                        [[ $a == all ]] && a=-1
                        "$BENCH" run -b "127.0.0.1:$PORT" --topic lat --partitions 1 --producers 1 \
                            --consumers 0 --message-bytes 1024 --acks "$a" --linger-ms 0 \
                            --rate "$rate" --warmup-s 1 --duration-s "$SECONDS_PER_RUN" \
                            --json-out "$OUT/$tag.json" >"$OUT/$tag.client.log" 2>&1 \
                            || echo "strom-bench failed"
                        echo "  client: $(grep -E '^(latency|publish) ' "$OUT/$tag.client.log" | tr -s ' ' | paste -sd ' ' || true)"
                    fi
                    stages
                    curl -sf "http://127.0.0.1:$ADMIN_PORT/metrics" \
                        | awk '/^strom_connections_migrated_total/ {n += $2} END {print "    connections migrated: " n+0}'
                    stop_broker
                done
            done
        done
    done
done
