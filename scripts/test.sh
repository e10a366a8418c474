#!/usr/bin/env bash
# The whole test suite in one command: installs and starts local infrastructure (two Kafka
# implementations, the modern ClickHouse engine and a real old clickhouse-server), runs every
# Rust and Python test against them, and stops what it started. A test that needs a server
# never skips: an unreachable server fails it. Unformatted code and clippy warnings fail it too.
#
#   scripts/test.sh [extra cargo-nextest arguments]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$JOURNEY_REPO"

if ! cargo nextest --version >/dev/null 2>&1; then
    log "installing cargo-nextest"
    cargo install cargo-nextest --locked >&2
fi

before="$(running_services | tr '\n' ' ')"
trap 'stop_started $before' EXIT
JOURNEY_BIN="$(JOURNEY_PROFILE=dev journey_bin)"
export JOURNEY_BIN
# A broker this script starts begins empty (see infra.sh); one already running is used as it is.
JOURNEY_KAFKA_FRESH=1 "$JOURNEY_REPO/scripts/infra.sh" up
ensure_pii_key
export JOURNEY_TEST_KAFKA="$JOURNEY_KAFKA_BROKERS"
export JOURNEY_TEST_TANSU="$JOURNEY_TANSU_BROKERS"
export JOURNEY_TEST_CLICKHOUSE="$JOURNEY_CLICKHOUSE_URL"
export JOURNEY_TEST_CH18="$JOURNEY_CH18_URL"

status=0
# Formatting and lints first: cheap, and a warning fails the suite like a test does.
log "lints (cargo fmt --check, cargo clippy -D warnings)"
cargo fmt --all --check || status=$?
cargo clippy --workspace --all-targets -- -D warnings || status=$?
log "rust tests (cargo nextest)"
cargo nextest run --workspace --no-fail-fast "$@" || status=$?
log "python tests (pytest)"
"$JOURNEY_VENV/bin/python" -m pytest tests/python -q -p no:cacheprovider || status=$?
if ((status)); then
    log "FAILED (exit $status)"
else
    log "all tests passed"
fi
exit "$status"
