#!/usr/bin/env bash
# Power-loss cycles against one data directory (tests/powerloss.py): two producers write with
# acks=all, the broker is SIGKILLed at a random moment, every file is cut back to what a power
# loss could have left according to the broker's sync journal (test.fault.sync.journal), the
# broker restarts and everything is read back. Fails if an acknowledged record is lost or
# anything corrupt, foreign, duplicated or reordered is served. Prints one line per cycle and a
# summary line; on failure the work directory (data, journal, broker log) is kept.
#
# Usage: bash scripts/power-loss.sh          (after cargo build --release --bin strom; it does
#                                             not build; needs .venv, see scripts/test-all.sh)
# Env:   CYCLES=n        cycles (default 100)
#        SEED=n          seed of the random choices (default: from the clock, printed)
#        STROM_BIN=path  broker binary (default target/release/strom)
#        WORKDIR=dir     empty or missing directory for the run (default: a temp dir, removed
#                        after a passing run)
#        CORES=n         broker shards (default 1)
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

ARGS=(--cycles "${CYCLES:-100}" --bin "$STROM_BIN" --cores "${CORES:-1}")
[[ -n "${SEED:-}" ]] && ARGS+=(--seed "$SEED")
[[ -n "${WORKDIR:-}" ]] && ARGS+=(--workdir "$WORKDIR")
exec .venv/bin/python tests/powerloss.py "${ARGS[@]}"
