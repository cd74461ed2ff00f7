#!/usr/bin/env bash
# Measures the performance targets of docs/performance.md in one run: first this machine's
# ceilings (strom-bench limits), then Strom with the broker on core 0 and the load generator on
# core 1. Writes one JSON report and one SVG chart per measurement to OUT.
#
# Usage: bash scripts/bench-targets.sh [OUT]         (after cargo build --release --workspace)
# Env:   DATA=dir      data directory (default ./bench-data, wiped first; put it on the disk
#                      you want to measure)
#        PORT=n        broker port on 127.0.0.1 (default 19200)
#        SOAK_S=n      length of the memory soak run (default 600)
#        QUICK=1       short runs (5 s, 60 s soak), to try the script out
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

OUT=${1:-bench-results}
DATA=${DATA:-$PWD/bench-data}
PORT=${PORT:-19200}
RUN_S=20
SOAK_S=${SOAK_S:-600}
if [[ -n "${QUICK:-}" ]]; then
    RUN_S=5
    SOAK_S=60
fi
BENCH=(taskset -c 1 target/release/strom-bench -b "127.0.0.1:$PORT")
mkdir -p "$OUT"
rm -rf "$DATA"
mkdir -p "$DATA"

echo "== limits"
taskset -c 1 target/release/strom-bench limits --dir "$DATA" --json-out "$OUT/limits.json"

taskset -c 0 target/release/strom --data-dir "$DATA/strom" --listen "127.0.0.1:$PORT" --cores 1 \
    >"$OUT/broker.log" 2>&1 &
BROKER=$!
trap 'kill $BROKER 2>/dev/null || true; wait $BROKER 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
done

run() { # name, then strom-bench run flags
    local name=$1
    shift
    echo "== $name"
    "${BENCH[@]}" run --limits "$OUT/limits.json" --json-out "$OUT/$name.json" --svg-out "$OUT/$name.svg" "$@"
}

# Produce, 1 KiB records, acks=1, linger 5 ms, as fast as the broker takes them.
run produce-acks1 --topic acks1 --rate max --acks 1 --linger-ms 5 --warmup-s 3 --duration-s "$RUN_S"
# Produce with acks=all; log.flush.on.ack=true (the default) fdatasyncs before answering.
run produce-acksall --topic acksall --rate max --acks -1 --linger-ms 5 --warmup-s 3 --duration-s "$RUN_S"
# Consume, catching up from the page cache: read what produce-acks1 wrote.
run consume-catchup --topic acks1 --producers 0 --consumers 1 --consume-from earliest \
    --fetch-partition-max-bytes 4194304 --warmup-s 0 --duration-s 60
# The sustainable maximum at publish p99 <= 5 ms (no linger: latency-sensitive settings).
run find-max --topic findmax --find-max --target-p99-ms 5 --acks 1 --linger-ms 0 --warmup-s 1 \
    --step-s "$((RUN_S / 2))"
HALF=$(python3 -c "import json; r = json.load(open('$OUT/find-max.json')); print(int(r['find_max']['sustainable_messages_per_s'] / 2))")
# Publish and end-to-end latency at half of it.
run latency-half --topic half --rate "$HALF" --acks 1 --linger-ms 0 --consumers 1 --fetch-max-wait-ms 500 \
    --warmup-s 3 --duration-s "$RUN_S"
# Memory: a long run at a moderate rate; broker RSS must stay flat.
run soak --topic soak --rate 20MB/s --acks 1 --consumers 1 --warmup-s 5 --duration-s "$SOAK_S"
echo "reports in $OUT"
