# shellcheck shell=bash
# Shared helpers for scripts/infra.sh, demo.sh and test.sh. Source it:
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# It sets no shell options and starts nothing; it only defines variables
# (paths, ports, addresses; every port overridable by env) and functions.

JOURNEY_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
JOURNEY_LOCAL="$JOURNEY_REPO/.local"  # git-ignored: venv, data dirs, pid files, logs
JOURNEY_VENV="$JOURNEY_LOCAL/venv"
JOURNEY_RUN="$JOURNEY_LOCAL/run"      # pid files
JOURNEY_LOGS="$JOURNEY_LOCAL/log"     # service stdout/stderr

JOURNEY_KAFKA_PORT="${JOURNEY_KAFKA_PORT:-9092}"
JOURNEY_TANSU_PORT="${JOURNEY_TANSU_PORT:-19092}"
JOURNEY_CLICKHOUSE_PORT="${JOURNEY_CLICKHOUSE_PORT:-8123}"  # the chDB front
JOURNEY_CH18_PORT="${JOURNEY_CH18_PORT:-18123}"             # clickhouse-server 18.16, HTTP
JOURNEY_CH18_TCP_PORT="${JOURNEY_CH18_TCP_PORT:-19000}"     # clickhouse-server 18.16, native
JOURNEY_WAIT_S="${JOURNEY_WAIT_S:-60}"                      # how long to wait for a service

JOURNEY_KAFKA_BROKERS="127.0.0.1:$JOURNEY_KAFKA_PORT"
JOURNEY_TANSU_BROKERS="127.0.0.1:$JOURNEY_TANSU_PORT"
JOURNEY_CLICKHOUSE_URL="http://127.0.0.1:$JOURNEY_CLICKHOUSE_PORT"
JOURNEY_CH18_URL="http://127.0.0.1:$JOURNEY_CH18_PORT"

# log MESSAGE... : a timestamped line on stderr.
log() {
    printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2
}

# die MESSAGE... : log and exit 1.
die() {
    log "error: $*"
    exit 1
}

# port_open PORT [HOST] : true if something accepts TCP connections there.
port_open() {
    local port="$1" host="${2:-127.0.0.1}"
    timeout 2 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null
}

# http_ok URL : true if URL answers 200.
http_ok() {
    if command -v curl >/dev/null; then
        curl -fsS -o /dev/null --max-time 3 "$1" 2>/dev/null
    else
        python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)' "$1" 2>/dev/null
    fi
}

# pid_alive PID : true if PID runs (a zombie does not count: the init of
# some sandboxes never reaps orphans).
pid_alive() {
    local pid="$1" state
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" || return 1
    [[ -n "$state" && "$state" != Z ]]
}

# _wait_until NAME LOGFILE PID CHECK... : polls CHECK until it succeeds, the
# process PID (if given) dies, or JOURNEY_WAIT_S passes.
_wait_until() {
    local name="$1" logfile="$2" pid="$3"
    shift 3
    local deadline=$((SECONDS + JOURNEY_WAIT_S))
    until "$@"; do
        if [[ -n "$pid" ]] && ! pid_alive "$pid"; then
            die "$name exited during startup; see $logfile"
        fi
        if ((SECONDS >= deadline)); then
            die "$name did not come up within ${JOURNEY_WAIT_S}s; see $logfile"
        fi
        sleep 0.2
    done
}

# wait_port NAME PORT LOGFILE [PID] : waits until PORT accepts connections.
wait_port() {
    _wait_until "$1" "$3" "${4:-}" port_open "$2"
}

# wait_http NAME URL LOGFILE [PID] : waits until URL answers 200.
wait_http() {
    _wait_until "$1" "$3" "${4:-}" http_ok "$2"
}

# journey_bin : builds the journey CLI and prints its path on stdout.
# Profile from JOURNEY_PROFILE (default dev: one build serves demo and tests; the dev
# profile optimises dependencies, see Cargo.toml); honours CARGO_TARGET_DIR.
journey_bin() {
    local profile="${JOURNEY_PROFILE:-dev}" dir
    case "$profile" in
        dev | debug) profile=dev dir=debug ;;
        *) dir="$profile" ;;
    esac
    log "building journey ($profile profile)"
    (cd "$JOURNEY_REPO" && cargo build --profile "$profile" -p journey-pipeline --bin journey >&2) ||
        die "cargo build failed"
    local target="${CARGO_TARGET_DIR:-$JOURNEY_REPO/target}"
    [[ "$target" = /* ]] || target="$JOURNEY_REPO/$target"
    printf '%s\n' "$target/$dir/journey"
}

# ensure_pii_key : exports JOURNEY_PII_KEY, generating a local one under .local/ on first use.
# Production passes its own key through the environment; none is ever committed.
ensure_pii_key() {
    if [[ -z "${JOURNEY_PII_KEY:-}" ]]; then
        local f="$JOURNEY_LOCAL/pii.key"
        if [[ ! -s "$f" ]]; then
            mkdir -p "$JOURNEY_LOCAL"
            (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$f")
        fi
        JOURNEY_PII_KEY="$(cat "$f")"
    fi
    export JOURNEY_PII_KEY
}

# running_services : names of local services that are up now (one per line).
running_services() {
    "$JOURNEY_REPO/scripts/infra.sh" status | awk '$2 == "running" {print $1}'
}

# stop_started BEFORE... : stops the services that are running now but were not in BEFORE.
stop_started() {
    local s started=()
    for s in $(running_services); do
        [[ " $* " == *" $s "* ]] || started+=("$s")
    done
    if ((${#started[@]})); then
        log "stopping what this script started: ${started[*]}"
        "$JOURNEY_REPO/scripts/infra.sh" down "${started[@]}" >&2 || true
    fi
}
