#!/bin/bash
# ClickHouse container init (docker-entrypoint-initdb.d): creates the `journey` database and
# applies sql/migrations/*.sql in name order, each file in one `clickhouse client --multiquery`
# session (so a file's SET statements apply to the rest of it). The files are used as they
# are: nothing is substituted. Every migration is idempotent (IF NOT EXISTS, OR REPLACE, inserts
# that collapse), so the `journey migrate` service that runs afterwards applies them again,
# harmlessly, records them in schema_migrations and sets the events retention from its config.
#
# The official image replaces the `default` user by CLICKHOUSE_USER, so connect as that user.
# JOURNEY_SQL_DIR (default /journey-sql, the compose mount of sql/) is for running it elsewhere.
set -euo pipefail
db="${JOURNEY_DATABASE:-journey}"
dir="${JOURNEY_SQL_DIR:-/journey-sql}"
client=(clickhouse client --user "${CLICKHOUSE_USER:-default}" --password "${CLICKHOUSE_PASSWORD:-}")
"${client[@]}" --query "CREATE DATABASE IF NOT EXISTS ${db}"
shopt -s nullglob
files=("${dir}"/migrations/*.sql)
if ((${#files[@]} == 0)); then
    echo "no migrations in ${dir}/migrations" >&2
    exit 1
fi
for f in "${files[@]}"; do
    echo "applying ${f}"
    "${client[@]}" --database "${db}" --multiquery <"${f}"
done
