#!/usr/bin/env bash
# Runs every test of the repository: installs the test clients (idempotent, quiet), builds the
# workspace once in release mode, runs the Rust tests, then the black-box tests in tests/ (pytest)
# and tests/node/ (node --test) against the built `strom` binary.
#
# Usage: bash scripts/test-all.sh            (from anywhere; needs root or sudo for apt-get)
# Env:   SKIP_INSTALL=1   skip apt/pip/npm    SKIP_CARGO=1   use the already built binary
#        PYTEST_ARGS=...  extra pytest args   STROM_BIN=...  broker binary to test
#
# Every step runs even if an earlier one failed; the script exits non-zero if any failed and
# ends with one line "N passed, M failed, K skipped" summing the Rust, Python and Node test
# results (a step that failed without reporting test counts, e.g. the build, counts as one
# failure; pytest's expected failures count as skipped).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
export STROM_BIN="${STROM_BIN:-$TARGET_DIR/release/strom}"
LOGDIR="$(mktemp -d "${TMPDIR:-/tmp}/strom-test-all.XXXXXX")"
trap 'rm -rf "$LOGDIR"' EXIT

START=$SECONDS
FAILED_STEPS=()
STEP_FAILED_COUNTED=0 # failures already counted by a runner for the current step
TOTAL_PASSED=0
TOTAL_FAILED=0
TOTAL_SKIPPED=0
SUMMARY_LINES=()

section() {
    printf '\n========== %s ==========\n' "$*"
}

# run_step NAME COMMAND...: runs a step, records failure, never aborts the script.
run_step() {
    local name="$1"
    shift
    section "$name"
    local t0=$SECONDS rc=0
    STEP_FAILED_COUNTED=0
    "$@" || rc=$?
    if [[ $rc -eq 0 ]]; then
        echo "-- $name: ok ($((SECONDS - t0)) s)"
    else
        echo "-- $name: FAILED (exit $rc, $((SECONDS - t0)) s)"
        FAILED_STEPS+=("$name")
        if [[ $STEP_FAILED_COUNTED -eq 0 ]]; then
            TOTAL_FAILED=$((TOTAL_FAILED + 1))
        fi
    fi
}

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "need root to run: $*" >&2
        return 1
    fi
}

APT_UPDATED=0
apt_install() {
    if [[ $APT_UPDATED -eq 0 ]]; then
        as_root apt-get update -qq || return 1
        APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null || return 1
}

install_system_packages() {
    local pkgs=()
    command -v kcat >/dev/null 2>&1 || pkgs+=(kcat)
    command -v python3 >/dev/null 2>&1 || pkgs+=(python3)
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        pkgs+=(python3-venv)
    fi
    command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
    command -v npm >/dev/null 2>&1 || pkgs+=(npm)
    # The replication tests run every node in a private network namespace.
    command -v unshare >/dev/null 2>&1 || pkgs+=(util-linux)
    command -v ip >/dev/null 2>&1 || pkgs+=(iproute2)
    command -v nft >/dev/null 2>&1 || pkgs+=(nftables)
    if [[ ${#pkgs[@]} -gt 0 ]]; then
        echo "installing: ${pkgs[*]}"
        apt_install "${pkgs[@]}" || return 1
    fi
    echo "kcat: $(command -v kcat), python3: $(python3 --version 2>&1), node: $(node --version)"
}

install_python_env() {
    if [[ -x .venv/bin/python ]] && ! .venv/bin/python -c 'import sys' >/dev/null 2>&1; then
        echo "removing a broken .venv"
        rm -rf .venv
    fi
    if [[ ! -x .venv/bin/python ]]; then
        python3 -m venv .venv || return 1
    fi
    .venv/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt || return 1
    .venv/bin/python -c 'import confluent_kafka, kafka, pytest; print("confluent-kafka", confluent_kafka.__version__, "| kafka-python", kafka.__version__, "| pytest", pytest.__version__)'
}

install_node_env() {
    (cd tests/node && npm ci --no-audit --no-fund --loglevel=error >/dev/null) || return 1
    echo "kafkajs $(node -p 'require("./tests/node/node_modules/kafkajs/package.json").version')"
}

cargo_test() {
    local rc=0 counts
    # Overflow checks on (see [profile.release-checked] in Cargo.toml).
    STROM_EXPECT_OVERFLOW_CHECKS=1 cargo test --profile release-checked --workspace 2>&1 | tee "$LOGDIR/cargo-test.log" || rc=$?
    counts=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } } END { printf "%d %d", p, f }' "$LOGDIR/cargo-test.log")
    local p=${counts% *} f=${counts#* }
    TOTAL_PASSED=$((TOTAL_PASSED + p))
    TOTAL_FAILED=$((TOTAL_FAILED + f))
    SUMMARY_LINES+=("cargo test   passed=$p failed=$f")
    [[ $f -gt 0 ]] && STEP_FAILED_COUNTED=1
    return $rc
}

run_pytest() {
    local rc=0 counts p f s
    # shellcheck disable=SC2086
    .venv/bin/pytest -q -p no:cacheprovider --timeout=120 --junitxml="$LOGDIR/pytest.xml" \
        ${PYTEST_ARGS:-} tests/ || rc=$?
    if [[ -f "$LOGDIR/pytest.xml" ]]; then
        counts=$(.venv/bin/python - "$LOGDIR/pytest.xml" <<'EOF'
import sys
import xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
t = f = e = s = 0
for su in suites:
    t += int(su.get("tests", 0)); f += int(su.get("failures", 0))
    e += int(su.get("errors", 0)); s += int(su.get("skipped", 0))
print(t - f - e - s, f + e, s)
EOF
        ) || counts="0 0 0"
        read -r p f s <<<"$counts"
        TOTAL_PASSED=$((TOTAL_PASSED + p))
        TOTAL_FAILED=$((TOTAL_FAILED + f))
        TOTAL_SKIPPED=$((TOTAL_SKIPPED + s))
        SUMMARY_LINES+=("pytest       passed=$p failed=$f skipped/xfail=$s")
        [[ $f -gt 0 ]] && STEP_FAILED_COUNTED=1
    fi
    return $rc
}

run_node() {
    local rc=0
    node --test --test-reporter=spec --test-reporter-destination=stdout \
        --test-reporter=tap --test-reporter-destination="$LOGDIR/node.tap" tests/node/ || rc=$?
    if [[ -f "$LOGDIR/node.tap" ]]; then
        local p f
        p=$(awk '/^# pass /{print $3}' "$LOGDIR/node.tap" | tail -1)
        f=$(awk '/^# fail /{print $3}' "$LOGDIR/node.tap" | tail -1)
        p=${p:-0}
        f=${f:-0}
        TOTAL_PASSED=$((TOTAL_PASSED + p))
        TOTAL_FAILED=$((TOTAL_FAILED + f))
        SUMMARY_LINES+=("node --test  passed=$p failed=$f")
        [[ $f -gt 0 ]] && STEP_FAILED_COUNTED=1
    fi
    return $rc
}

# rustfmt ships with rustup's default profile; a minimal toolchain gets the component first.
cargo_fmt_check() {
    if ! cargo fmt --version >/dev/null 2>&1; then
        rustup component add rustfmt || return 1
    fi
    cargo fmt --all --check
}

if [[ -z "${SKIP_INSTALL:-}" ]]; then
    run_step "install system packages (apt)" install_system_packages
    run_step "install Python test env (.venv)" install_python_env
    run_step "install Node test env (npm ci)" install_node_env
fi
if [[ -z "${SKIP_CARGO:-}" ]]; then
    run_step "cargo build --release --workspace" cargo build --release --workspace
    run_step "cargo test --profile release-checked --workspace (overflow checks on)" cargo_test
    run_step "cargo fmt --check (rustfmt defaults)" cargo_fmt_check
    run_step "cargo clippy (warnings are errors)" cargo clippy --release --workspace --all-targets -- -D warnings
    # Criterion's test mode runs every microbenchmark once: they build and work, nothing is timed.
    run_step "cargo bench -p strom-perf -- --test (microbenchmarks, smoke)" cargo bench -p strom-perf -- --test
fi
run_step "pytest tests/ (black-box: kcat, confluent-kafka, kafka-python, raw protocol)" run_pytest
run_step "node --test tests/node/ (kafkajs)" run_node

section "summary ($((SECONDS - START)) s)"
for line in "${SUMMARY_LINES[@]}"; do
    echo "$line"
done
if [[ ${#FAILED_STEPS[@]} -gt 0 ]]; then
    echo "failed steps:"
    printf '  - %s\n' "${FAILED_STEPS[@]}"
fi
echo "$TOTAL_PASSED passed, $TOTAL_FAILED failed, $TOTAL_SKIPPED skipped"
[[ ${#FAILED_STEPS[@]} -eq 0 && $TOTAL_FAILED -eq 0 ]]
