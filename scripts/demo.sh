#!/usr/bin/env bash
# The demo in one command: installs what it needs, starts local Kafka + ClickHouse, publishes
# generated customer journeys, processes them and prints what landed in ClickHouse.
#
#   scripts/demo.sh [--events N] [--no-wait]
#
# --events N   how many events to generate (default 200000)
# --no-wait    exit after the summary, stopping the services this script started;
#              without it the processor keeps running live until Ctrl-C.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

events=200000
no_wait=0
while (($#)); do
    case "$1" in
        --events) events="${2:?--events needs a number}"; shift 2 ;;
        --events=*) events="${1#*=}"; shift ;;
        --no-wait) no_wait=1; shift ;;
        -h | --help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ "$events" =~ ^[0-9]+$ ]] || die "--events must be a whole number, got '$events'"

before="$(running_services | tr '\n' ' ')"
JOURNEY_BIN="$(journey_bin)"
export JOURNEY_BIN
if ((no_wait)); then
    trap 'stop_started $before' EXIT
fi
"$JOURNEY_REPO/scripts/infra.sh" up kafka clickhouse
ensure_pii_key
export JOURNEY__KAFKA__BROKERS="${JOURNEY__KAFKA__BROKERS:-$JOURNEY_KAFKA_BROKERS}"
export JOURNEY__CLICKHOUSE__URL="${JOURNEY__CLICKHOUSE__URL:-$JOURNEY_CLICKHOUSE_URL}"
args=(demo --events "$events")
((no_wait)) && args+=(--no-wait)
cd "$JOURNEY_REPO"
"$JOURNEY_BIN" "${args[@]}"
