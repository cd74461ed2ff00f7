#!/usr/bin/env bash
# A local Strom cluster on this machine: N nodes, node i on the loopback address 127.0.1.(i+1)
# with the client listener on :9092, the controller on :9093, replication on :9094 (+ shard) and
# the admin server on :9644. Data and logs go to ./strom-cluster/node-<i> (STROM_CLUSTER_DIR
# overrides).
#
# Usage: scripts/cluster.sh up [N]    start the nodes that are not running (N = 3 by default),
#                                     wait until the cluster has a controller and N live brokers,
#                                     print the bootstrap string
#        scripts/cluster.sh status    the controller's view, as each node sees it
#        scripts/cluster.sh down      stop every node (SIGTERM; data is kept)
#        scripts/cluster.sh clean     stop every node and remove the cluster directory
#
# Env: STROM_BIN (the broker binary; default: target/release/strom of this repository, built
#      with `cargo build --release` if missing), STROM_CORES (shards per node; default 1),
#      STROM_CLUSTER_TIMEOUT (seconds `up` waits; default 30). Extra `-o key=value` settings for
#      every node can follow `up N`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${STROM_CLUSTER_DIR:-$PWD/strom-cluster}"
CORES="${STROM_CORES:-1}"
TIMEOUT="${STROM_CLUSTER_TIMEOUT:-30}"

binary() {
    if [[ -n "${STROM_BIN:-}" ]]; then
        echo "$STROM_BIN"
        return
    fi
    local bin="$ROOT/target/release/strom"
    if [[ ! -x "$bin" ]]; then
        echo "building $bin ..." >&2
        (cd "$ROOT" && cargo build --release --bin strom >&2)
    fi
    echo "$bin"
}

ip_of() { echo "127.0.1.$(($1 + 1))"; }

node_count() {
    local n=0
    while [[ -d "$DIR/node-$n" ]]; do n=$((n + 1)); done
    echo "$n"
}

running() {
    local pidfile="$DIR/node-$1/pid"
    [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

# One node's view: "controller=<id> live=<n>" from its /v1/status (empty if it does not answer).
view_of() {
    python3 - "$(ip_of "$1")" <<'EOF'
import json, sys, urllib.request
try:
    with urllib.request.urlopen(f"http://{sys.argv[1]}:9644/v1/status", timeout=1) as r:
        c = json.load(r).get("cluster") or {}
    live = sum(1 for b in c.get("brokers", []) if not b["fenced"])
    print(f"controller={c.get('controller_id', -1)} live={live}")
except Exception:
    pass
EOF
}

up() {
    local n="${1:-3}"
    shift || true
    if ! [[ "$n" =~ ^[1-9][0-9]*$ ]] || ((n > 200)); then
        echo "usage: $0 up [N] [-o key=value ...]   (1 <= N <= 200)" >&2
        exit 2
    fi
    local bin voters="" bootstrap="" i
    bin="$(binary)"
    for ((i = 0; i < n; i++)); do
        voters+="${voters:+,}$i@$(ip_of "$i"):9093"
        bootstrap+="${bootstrap:+,}$(ip_of "$i"):9092"
    done
    mkdir -p "$DIR"
    for ((i = 0; i < n; i++)); do
        local node="$DIR/node-$i" ip
        ip="$(ip_of "$i")"
        mkdir -p "$node"
        if running "$i"; then
            continue
        fi
        # setsid: the nodes outlive this script and the terminal it ran in.
        setsid "$bin" --cores "$CORES" --data-dir "$node/data" \
            -o "node.id=$i" -o "controller.quorum.voters=$voters" \
            -o "listeners=PLAINTEXT://$ip:9092,CONTROLLER://$ip:9093,REPLICATION://$ip:9094" \
            -o "admin.listeners=$ip:9644" "$@" \
            >>"$node/strom.log" 2>&1 </dev/null &
        echo $! >"$node/pid"
        echo "node $i: pid $!, $ip:9092, log $node/strom.log"
    done
    local deadline=$((SECONDS + TIMEOUT)) ok
    while :; do
        ok=1
        for ((i = 0; i < n; i++)); do
            if ! running "$i"; then
                echo "node $i exited; its log ($DIR/node-$i/strom.log) ends with:" >&2
                tail -n 20 "$DIR/node-$i/strom.log" >&2
                exit 1
            fi
            local v
            v="$(view_of "$i")"
            if [[ "$v" != controller=* || "$v" == controller=-1* || "$v" != *"live=$n" ]]; then
                ok=0
            fi
        done
        ((ok)) && break
        if ((SECONDS >= deadline)); then
            echo "the cluster did not form within ${TIMEOUT}s; see $DIR/node-*/strom.log" >&2
            exit 1
        fi
        sleep 0.2
    done
    echo "cluster up: $n node(s), $(view_of 0 | cut -d' ' -f1)"
    echo "bootstrap: $bootstrap"
}

status() {
    local n i
    n="$(node_count)"
    if ((n == 0)); then
        echo "no cluster in $DIR"
        return
    fi
    for ((i = 0; i < n; i++)); do
        if running "$i"; then
            echo "node $i ($(ip_of "$i"):9092): running, $(view_of "$i")"
        else
            echo "node $i ($(ip_of "$i"):9092): stopped"
        fi
    done
}

down() {
    local n i pids=()
    n="$(node_count)"
    for ((i = 0; i < n; i++)); do
        if running "$i"; then
            pids+=("$(cat "$DIR/node-$i/pid")")
            kill -TERM "${pids[-1]}"
        fi
    done
    local deadline=$((SECONDS + 30)) p
    for p in "${pids[@]}"; do
        while kill -0 "$p" 2>/dev/null; do
            if ((SECONDS >= deadline)); then
                kill -KILL "$p" 2>/dev/null || true
                break
            fi
            sleep 0.1
        done
    done
    echo "cluster down: ${#pids[@]} node(s) stopped"
}

case "${1:-}" in
up)
    shift
    up "$@"
    ;;
status) status ;;
down) down ;;
clean)
    down
    rm -rf "$DIR"
    echo "removed $DIR"
    ;;
*)
    sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
