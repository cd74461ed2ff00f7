#!/usr/bin/env bash
# Chaos runs (tests/chaos/): three nodes on 127.0.1.1-3 in a private network namespace made
# here (`unshare --net`, only `lo`), producers (idempotent and not, acks=all) and readers
# writing a history while a seeded nemesis kills, pauses, partitions (nftables), slows or stalls
# (a replication proxy), power-cuts and corrupts nodes one at a time; then a final heal and read
# and the checker's report (lost, duplicated, reordered, inconsistent offsets, availability per
# fault). Prints one line per fault and the report; exits 0 without violations, 1 with, 2 on
# bad usage.
#
# Usage: bash scripts/chaos.sh [--cycles N] [--seed S] [--out DIR] [--max-fault-s X]
#                              [--budget-s Y] [--rate R]
#        (after cargo build --release --bin strom; it does not build; needs root, .venv and
#        nft, see scripts/test-all.sh)
# Defaults: --cycles 200, --seed from the clock (printed), --out a new /tmp/strom-chaos.* dir.
# Env:   STROM_BIN=path  broker binary (default target/release/strom)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export STROM_BIN="${STROM_BIN:-target/release/strom}"
if [[ ! -x "$STROM_BIN" ]]; then
    echo "no broker binary at $STROM_BIN: build it with cargo build --release --bin strom, or set STROM_BIN" >&2
    exit 2
fi
if [[ ! -x .venv/bin/python ]]; then
    echo "no .venv: run scripts/test-all.sh once (or python3 -m venv .venv && .venv/bin/pip install -r tests/requirements.txt)" >&2
    exit 2
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "needs root: a network namespace, cgroups and nftables rules" >&2
    exit 2
fi
command -v nft >/dev/null 2>&1 || echo "warning: nft not found (apt-get install nftables): the network faults will be skipped" >&2

ARGS=("$@")
given() {
    local a
    for a in "${ARGS[@]}"; do
        [[ $a == "$1" || $a == "$1="* ]] && return 0
    done
    return 1
}
given --cycles || ARGS=(--cycles 200 "${ARGS[@]}")
given --out || ARGS+=(--out "$(mktemp -d "${TMPDIR:-/tmp}/strom-chaos.XXXXXX")")
IP="$(command -v ip || echo /usr/sbin/ip)"
# The namespace lives as long as run.py, which the shell execs once `lo` is up.
exec unshare --net -- sh -c '"$1" link set lo up && shift && exec "$@"' sh "$IP" \
    .venv/bin/python tests/chaos/run.py --bin "$STROM_BIN" "${ARGS[@]}"
