"""The migrations in sql/migrations/ apply cleanly through `journey migrate`, again on top of the
docker-compose init, and through sql/docker-init.sh itself; `SELECT *` views show the new
columns; the events retention follows `clickhouse.events_retention_days`; the *_current views
hold exactly the current rows.

Needs JOURNEY_TEST_CLICKHOUSE and JOURNEY_BIN (scripts/test.sh sets both); fails without them.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import sqlgen
from sqlgen import DAY, fmt
from sqlgen_db import REPO, ClickHouse, ch, checksum, migrate, server_url, statements  # noqa: F401  (ch is a fixture)

MIGRATIONS = sorted(p.name for p in (REPO / "sql" / "migrations").glob("*.sql"))
TABLES = {"events", "sessions", "scenario_hits", "alerts", "identity_links", "churn", "session_timeline",
          "flow_minute", "scenario_minute", "events_minute", "schema_migrations"}
VIEWS = {"events_current", "sessions_current", "scenario_hits_current", "alerts_current", "identity_links_current",
         "flow_minute_current", "scenario_minute_current", "events_minute_current"}
REFRESHABLE = {"flow_minute_refresh", "scenario_minute_refresh", "events_minute_refresh"}


def objects(ch) -> dict[str, str]:  # noqa: F811
    return {r["name"]: r["engine"] for r in ch.rows(
        "SELECT name, engine FROM system.tables WHERE database = currentDatabase()")}


def test_migrations_apply_cleanly_twice_and_again_after_the_docker_init(ch):  # noqa: F811
    first = objects(ch)
    assert TABLES <= first.keys() and VIEWS <= first.keys() and REFRESHABLE <= first.keys(), first
    assert {first[v] for v in VIEWS} == {"View"}
    assert {first[v] for v in REFRESHABLE} == {"MaterializedView"}
    refreshes = ch.rows("SELECT view, exception FROM system.view_refreshes WHERE database = currentDatabase()")
    assert {r["view"] for r in refreshes} == REFRESHABLE

    out = migrate(ch.database)
    assert "applied: []" in out, out
    assert objects(ch) == first

    # docker-compose: the init already ran every file, then `journey migrate` runs them all
    # again with an empty schema_migrations. That must succeed and change nothing.
    ch.execute("TRUNCATE TABLE schema_migrations")
    out = migrate(ch.database)
    assert all(name in out for name in MIGRATIONS) and "already applied: []" in out, out
    assert objects(ch) == first
    assert ch.scalar("SELECT count() FROM schema_migrations") == len(MIGRATIONS)


def test_upgrade_of_a_database_with_data_keeps_its_rows_out_of_the_refresh(ch):  # noqa: F811
    """A database created before the analytics layer (0001 only, with rows): after `journey
    migrate` its old rows carry inserted_at 1970 (the refresh leaves history to the rebuild
    statements), new rows the time of their insert, and old sessions are in the time index."""
    old = ClickHouse(server_url(), ch.database + "_old")
    ClickHouse(old.url, "default").execute(f"CREATE DATABASE {old.database}")
    try:
        first = (REPO / "sql" / "migrations" / MIGRATIONS[0]).read_text()
        for stmt in statements(first):
            old.execute(stmt)
        old.execute("CREATE TABLE schema_migrations (name String, checksum String, applied_at DateTime DEFAULT now()) "
                    "ENGINE = MergeTree ORDER BY name")
        old.insert("schema_migrations", [{"name": MIGRATIONS[0], "checksum": checksum(first)}])
        ds = sqlgen.generate(customers=10)
        old.insert("events", [e.row() for e in ds.events])
        old.insert("sessions", [{k: v for k, v in s.row().items() if not k.startswith("tr_") and k != "region"}
                                for s in ds.sessions])
        out = migrate(old.database)
        assert f"already applied: [{MIGRATIONS[0]!r}]".replace("'", '"') in out, out
        assert old.scalar("SELECT countIf(inserted_at != 0) FROM events") == 0
        assert old.scalar("SELECT countIf(inserted_at != 0) FROM sessions") == 0
        # Every session row still there (merges may have dropped superseded versions) is in
        # the time index, the current versions included.
        pairs = "SELECT DISTINCT session_id, version FROM {} ORDER BY session_id, version"
        assert old.rows(pairs.format("session_timeline WHERE k = 0")) == old.rows(pairs.format("sessions"))
        assert {(s.session_id, s.version) for s in ds.latest_session.values()} <= \
            {(r["session_id"], r["version"]) for r in old.rows(pairs.format("session_timeline"))}
        old.insert("events", [{"event_id": "fresh", "event_time": fmt(ds.base), "channel": "APP"}])
        assert old.scalar("SELECT dateDiff('second', inserted_at, now()) < 120 FROM events WHERE event_id = 'fresh'") == 1
        old.refresh()
        assert old.scalar("SELECT sum(events) FROM events_minute_current") == 1
    finally:
        ClickHouse(old.url, "default").execute(f"DROP DATABASE IF EXISTS {old.database} SYNC")


def test_select_star_views_show_the_new_columns(ch):  # noqa: F811
    def columns(table):
        return [r["name"] for r in ch.rows(f"DESCRIBE TABLE {table}")]

    for table, view in (("sessions", "sessions_current"), ("events", "events_current"),
                        ("scenario_hits", "scenario_hits_current"), ("alerts", "alerts_current"),
                        ("identity_links", "identity_links_current")):
        assert columns(view) == columns(table), view
    assert columns("sessions")[-6:] == ["region", "tr_from", "tr_to", "tr_time", "tr_gap_ms", "inserted_at"]
    assert columns("events")[-1] == "inserted_at"
    # The sink does not send inserted_at: the server stamps it.
    ch.insert("events", [{"event_id": "e1", "event_time": fmt(sqlgen.base_day()), "channel": "APP"}])
    assert ch.scalar("SELECT dateDiff('second', inserted_at, now()) < 120 FROM events_current") == 1


def test_events_retention_follows_the_config(ch):  # noqa: F811
    def ttl() -> str:
        return ch.scalar("SELECT engine_full FROM system.tables WHERE database = currentDatabase() AND name = 'events'")

    def run(days: int) -> str:
        return migrate(ch.database, {"JOURNEY__CLICKHOUSE__EVENTS_RETENTION_DAYS": str(days), "RUST_LOG": "info"})

    assert "TTL toDateTime(event_time) + toIntervalDay(400)" in ttl()
    assert "events retention changed" in run(30)
    assert "TTL toDateTime(event_time) + toIntervalDay(30) " in ttl()
    modified = ch.scalar("SELECT toString(metadata_modification_time) FROM system.tables "
                         "WHERE database = currentDatabase() AND name = 'events'")
    assert "events retention changed" not in run(30)  # idempotent: no ALTER when it already holds
    assert ch.scalar("SELECT toString(metadata_modification_time) FROM system.tables "
                     "WHERE database = currentDatabase() AND name = 'events'") == modified

    # The TTL really drops events older than the retention.
    now = sqlgen.base_day() + 21 * DAY
    ch.insert("events", [{"event_id": "old", "event_time": fmt(now - 40 * DAY), "channel": "APP"},
                         {"event_id": "new", "event_time": fmt(now - 10 * DAY), "channel": "APP"}])
    ch.execute("OPTIMIZE TABLE events FINAL")
    assert [r["event_id"] for r in ch.rows("SELECT event_id FROM events ORDER BY event_id")] == ["new"]

    assert "events retention changed" in run(400)
    assert "toIntervalDay(400)" in ttl()


def _latest(rows: list[dict], key) -> list[dict]:
    best = {}
    for r in rows:
        k = key(r)
        if k not in best or r["version"] > best[k]["version"]:
            best[k] = r
    return sorted(best.values(), key=key)


def test_current_views_hold_exactly_the_current_rows(ch):  # noqa: F811
    alerts = [
        {"alert_id": "a1", "rule": "app_to_call", "group_key": "region=north,topic=billing",
         "dims": {"region": "north", "topic": "billing"}, "window_start": "2025-03-03 10:00:00.000",
         "window_end": "2025-03-03 10:15:00.000", "observed": 42.0, "baseline": 10.0, "threshold": 25.0,
         "severity": "high", "state": state, "fired_at": "2025-03-03 10:15:02.000",
         "resolved_at": resolved, "webhook_status": hook, "version": v}
        for v, state, resolved, hook in ((1, "firing", None, "pending"), (3, "resolved", "2025-03-03 11:00:00.000", "delivered"),
                                         (2, "firing", None, "delivered"))
    ] + [{"alert_id": "a2", "rule": "repeat_call", "group_key": "region=south", "dims": {"region": "south"},
          "window_start": "2025-03-03 10:00:00.000", "window_end": "2025-03-03 10:15:00.000", "observed": 9.0,
          "baseline": 2.0, "threshold": 6.0, "severity": "medium", "state": "firing",
          "fired_at": "2025-03-03 10:15:01.000", "resolved_at": None, "webhook_status": "failed", "version": 1}]
    ch.insert("alerts", alerts[:2])
    ch.insert("alerts", alerts[2:])
    got = ch.rows("SELECT alert_id, state, resolved_at, webhook_status, version FROM alerts_current ORDER BY alert_id")
    assert got == [{k: r[k] for k in ("alert_id", "state", "resolved_at", "webhook_status", "version")}
                   for r in _latest(alerts, lambda r: r["alert_id"])]

    links = [{"identifier_kind": kind, "identifier": ident, "customer_id": cust, "linked_at": "2025-03-03 10:00:00.000",
              "version": v}
             for kind, ident, cust, v in (("msisdn", "h1f00", "m:h1f00", 1), ("msisdn", "h1f00", "C00001", 2),
                                          ("app", "a-9", "C00002", 5), ("customer", "C00001", "C00001", 1),
                                          ("app", "a-9", "C00001", 4))]
    ch.insert("identity_links", links)
    got = ch.rows("SELECT identifier_kind, identifier, customer_id, version FROM identity_links_current "
                  "ORDER BY identifier_kind, identifier")
    key = lambda r: (r["identifier_kind"], r["identifier"])  # noqa: E731
    assert got == [{k: r[k] for k in ("identifier_kind", "identifier", "customer_id", "version")}
                   for r in _latest(links, key)]

    ds = sqlgen.generate(customers=30)
    ds.load(ch)
    assert sorted(r["hit_id"] for r in ch.rows("SELECT hit_id FROM scenario_hits_current")) == \
        sorted(h.hit_id for h in sqlgen.current_hits(ds))
    churn = ch.rows("SELECT customer_id, toString(churn_date) AS day FROM churn FINAL ORDER BY customer_id")
    assert churn == [{"customer_id": c.customer, "day": sqlgen.fmt_date(c.day)}
                     for c in sorted(sqlgen.current_churn(ds).values(), key=lambda c: c.customer)]


SHIM = '''#!{python}
"""Stands in for `clickhouse client` in the docker-init test: an in-process ClickHouse (chDB)
with its data in FAKE_CLICKHOUSE_DATA; runs --query, or stdin with --multiquery, in one session."""
import os, sys
import chdb.session
args, database, query, multi = sys.argv[1:], "default", None, False
assert args[0] == "client", args
i = 1
while i < len(args):
    a = args[i]
    if a in ("--database", "--query", "--user", "--password"):
        if a == "--database":
            database = args[i + 1]
        if a == "--query":
            query = args[i + 1]
        i += 2
        continue
    if a in ("--multiquery", "-n"):
        multi = True
    i += 1
sql = query if query is not None else sys.stdin.read()
assert query is not None or multi, "stdin needs --multiquery"
with open(os.environ["FAKE_CLICKHOUSE_LOG"], "a") as log:
    log.write(" ".join(args) + "\\n")
s = chdb.session.Session(os.environ["FAKE_CLICKHOUSE_DATA"])
try:
    sys.stdout.write(s.query(f"USE {{database}};\\n" + sql, "TabSeparated").bytes().decode())
finally:
    s.close()
'''


def test_docker_init_applies_every_migration_in_one_session_each(ch, tmp_path: pathlib.Path):  # noqa: F811
    """sql/docker-init.sh, run as the container's entrypoint would (with a stand-in for
    `clickhouse client`), creates the same objects as `journey migrate`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "clickhouse"
    shim.write_text(SHIM.format(python=sys.executable))
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "JOURNEY_SQL_DIR": str(REPO / "sql"),
           "JOURNEY_DATABASE": "journey", "CLICKHOUSE_USER": "journey", "CLICKHOUSE_PASSWORD": "secret",
           "FAKE_CLICKHOUSE_DATA": str(tmp_path / "data"), "FAKE_CLICKHOUSE_LOG": str(tmp_path / "calls.log")}
    p = subprocess.run([str(REPO / "sql" / "docker-init.sh")], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert len(calls) == 1 + len(MIGRATIONS) and all("--user journey --password secret" in c for c in calls), calls
    assert p.stdout.split() == [w for name in MIGRATIONS for w in ("applying", str(REPO / "sql" / "migrations" / name))]
    listed = subprocess.run(
        [str(shim), "client", "--query",
         "SELECT name, engine FROM system.tables WHERE database = 'journey' AND name != 'schema_migrations' ORDER BY name"],
        env=env, capture_output=True, text=True, timeout=120, check=True).stdout
    by_init = dict(line.split("\t") for line in listed.splitlines())
    by_migrate = {k: v for k, v in objects(ch).items() if k != "schema_migrations"}
    assert by_init == by_migrate
