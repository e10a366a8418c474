#!/bin/bash
# ClickHouse container init (docker-entrypoint-initdb.d): creates the `journey` database and
# applies sql/migrations/*.sql in name order. Every migration is idempotent (IF NOT EXISTS),
# so the `journey migrate` service that runs afterwards records them in schema_migrations
# without changing anything.
set -euo pipefail
db="${JOURNEY_DATABASE:-journey}"
clickhouse client --query "CREATE DATABASE IF NOT EXISTS ${db}"
for f in /journey-sql/migrations/*.sql; do
    echo "applying ${f}"
    clickhouse client --database "${db}" --multiquery < "${f}"
done
