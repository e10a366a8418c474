"""The per-minute rollups (sql/migrations/0007_rollups.sql) equal the per-minute computation from
the current rows after a refresh, stay equal after corrections (new versions, retractions,
moved events) and crash replays, write only what changed, read only what recently arrived,
and can be rebuilt for a range (sql/maintenance/).

Needs JOURNEY_TEST_CLICKHOUSE and JOURNEY_BIN (scripts/test.sh sets both); fails without them.
"""

from __future__ import annotations

import math

import sqlgen
from sqlgen import DAY, HOUR, MINUTE, fmt, fmt_s
from sqlgen_db import MAINTENANCE, ch  # noqa: F401  (ch is a fixture)


def flow(ch, where: str = "1") -> dict:  # noqa: F811
    return {(r["minute"], r["from_channel"], r["to_channel"]): (r["transitions"], r["gap_ms_median"])
            for r in ch.rows(f"SELECT * FROM flow_minute_current WHERE {where}")}


def scenarios(ch, where: str = "1") -> dict:  # noqa: F811
    return {(r["minute"], r["rule"], r["channel"], r["topic"], r["region"]): r["hits"]
            for r in ch.rows(f"SELECT * FROM scenario_minute_current WHERE {where}")}


def events(ch, where: str = "1") -> dict:  # noqa: F811
    return {(r["minute"], r["channel"], r["region"]): r["events"]
            for r in ch.rows(f"SELECT * FROM events_minute_current WHERE {where}")}


def assert_flow(actual: dict, expected: dict) -> None:
    assert expected
    assert actual.keys() == expected.keys(), (
        f"missing {sorted(expected.keys() - actual.keys())[:3]}, extra {sorted(actual.keys() - expected.keys())[:3]}")
    bad = [(k, actual[k], v) for k, v in expected.items()
           if actual[k][0] != v[0] or not math.isclose(actual[k][1], v[1], rel_tol=1e-12)]
    assert not bad, bad[:3]


def assert_counts(actual: dict, expected: dict) -> None:
    assert expected
    assert actual == expected, (
        f"missing {sorted(expected.keys() - actual.keys())[:3]}, extra {sorted(actual.keys() - expected.keys())[:3]}, "
        f"different {[(k, actual[k], v) for k, v in expected.items() if k in actual and actual[k] != v][:3]}")


def written_after(ch, table: str, keys: str, since: str) -> set:  # noqa: F811
    return {tuple(r.values()) for r in ch.rows(
        f"SELECT DISTINCT {keys} FROM {table} WHERE computed_at > {{since:DateTime64(6, 'UTC')}}", {"since": since})}


def test_rollups_equal_the_per_minute_computation(ch):  # noqa: F811
    ds = sqlgen.generate()
    ds.load(ch)
    ch.refresh()
    assert_flow(flow(ch), sqlgen.flow_minute(ds))
    assert_counts(scenarios(ch), sqlgen.scenario_minute(ds))
    assert_counts(events(ch), sqlgen.events_minute(ds))
    # Refreshing again with nothing new writes nothing.
    since = ch.scalar("SELECT toString(max(computed_at)) FROM flow_minute")
    ch.refresh()
    assert written_after(ch, "flow_minute", "minute", since) == set()


def test_rollups_follow_corrections_and_replays_and_write_only_changes(ch):  # noqa: F811
    ds = sqlgen.generate()
    done = ds.load(ch)
    ch.refresh()
    before = {"flow": sqlgen.flow_minute(ds), "scenarios": sqlgen.scenario_minute(ds), "events": sqlgen.events_minute(ds)}
    assert_flow(flow(ch), before["flow"])
    since = {t: ch.scalar(f"SELECT toString(max(computed_at)) FROM {t}")
             for t in ("flow_minute", "scenario_minute", "events_minute")}

    sqlgen.corrections(ds)
    ds.load(ch, done)
    ch.refresh()
    after = {"flow": sqlgen.flow_minute(ds), "scenarios": sqlgen.scenario_minute(ds), "events": sqlgen.events_minute(ds)}
    assert_flow(flow(ch), after["flow"])
    assert_counts(scenarios(ch), after["scenarios"])
    assert_counts(events(ch), after["events"])

    # The corrections really changed each rollup, including groups that vanished, and the
    # refresh wrote exactly the groups whose value changed (the replayed batches touched
    # nearly every minute but changed nothing).
    for name, table, keys in (("flow", "flow_minute", "minute, from_channel, to_channel"),
                              ("scenarios", "scenario_minute", "minute, rule, channel, topic, region"),
                              ("events", "events_minute", "minute, channel, region")):
        changed = {k for k in before[name].keys() | after[name].keys() if before[name].get(k) != after[name].get(k)}
        vanished = before[name].keys() - after[name].keys()
        assert changed and (vanished or name == "events"), name
        assert written_after(ch, table, keys, since[table]) == changed, name


def test_refresh_reads_only_what_recently_arrived(ch):  # noqa: F811
    """With a month of old rows (inserted_at a day ago) and a handful of new ones, each refresh
    reads a few granules, not its tables, and its result equals a plain GROUP BY over FINAL."""
    base = sqlgen.base_day() - 7 * DAY
    old = "now() - INTERVAL 1 DAY"
    ch.execute(f"""
        INSERT INTO events (event_id, event_time, ingest_time, channel, event_type, customer_id, region, version, inserted_at)
        SELECT concat('B', toString(number)) AS id, toDateTime64({base / 1000}, 3, 'UTC') + toIntervalMillisecond(number * 2500) AS t,
               t, ['APP', 'WEB', 'IVR', 'CONTACT_CENTRE'][number % 4 + 1], 'x', concat('B', toString(number % 5000)),
               ['north', 'south'][number % 2 + 1], 0, {old}
        FROM numbers(1000000)""")
    ch.execute(f"""
        INSERT INTO sessions (session_id, customer_id, start_time, end_time, duration_ms, event_count, channels, path,
                              topics, assisted, first_event_id, last_event_id, version, retracted, region,
                              tr_from, tr_to, tr_time, tr_gap_ms, inserted_at)
        SELECT concat('BS', toString(number)), concat('B', toString(number % 20000)) AS c,
               toDateTime64({base / 1000}, 3, 'UTC') + toIntervalMillisecond(number * 6000) AS t,
               t + toIntervalMillisecond(20000), 20000, 3, ['APP', 'WEB', 'IVR'], 'APP>WEB>IVR', ['billing'], false,
               'e1', 'e3', 1, false, 'north', ['APP', 'WEB'], ['WEB', 'IVR'],
               [t + toIntervalMillisecond(10000), t + toIntervalMillisecond(20000)], [10000, 10000 + number % 7], {old}
        FROM numbers(400000)""")
    ch.execute(f"""
        INSERT INTO scenario_hits (hit_id, rule, rule_version, customer_id, session_id, event_time, trigger_event_id,
                                   matched_event_ids, path, topic, channel, region, severity, version, retracted, inserted_at)
        SELECT concat('BH', toString(number)), ['app_to_call', 'repeat_call', 'ivr_failure'][number % 3 + 1], 1,
               concat('B', toString(number % 5000)), '', toDateTime64({base / 1000}, 3, 'UTC') + toIntervalMillisecond(number * 5000),
               'e1', [], 'APP>IVR', 'billing', 'APP', 'north', 'high', 1, false, {old}
        FROM numbers(500000)""")
    sizes = {t: ch.scalar(f"SELECT count() FROM {t}") for t in ("events", "session_timeline", "scenario_hits")}
    ch.refresh()  # nothing recent: the rollups stay empty
    assert ch.scalar("SELECT count() FROM flow_minute") == 0

    # New rows: two events, a new version of two sessions (one loses its second transition,
    # one is retracted) and of two hits (one retracted): all at old times.
    t = base + 3 * DAY
    ch.insert("events", [{"event_id": f"N{i}", "event_time": fmt(t + i * 61_000), "ingest_time": fmt(t), "channel": "SMS",
                          "event_type": "x", "customer_id": "B1", "region": "east", "version": 0} for i in range(2)])
    s1, s2 = 30000, 123456  # session numbers in the bulk insert
    rows = ch.rows(f"SELECT * FROM sessions WHERE session_id IN ('BS{s1}', 'BS{s2}') ORDER BY session_id")
    rows[0].update(version=2, tr_from=["APP"], tr_to=["WEB"], tr_time=rows[0]["tr_time"][:1], tr_gap_ms=[10000])
    rows[1].update(version=2, retracted=True, tr_from=[], tr_to=[], tr_time=[], tr_gap_ms=[], region="")
    for r in rows:
        del r["inserted_at"]
    ch.insert("sessions", rows)
    hits = ch.rows("SELECT * FROM scenario_hits WHERE hit_id IN ('BH1000', 'BH2000') ORDER BY hit_id")
    hits[0].update(version=2, retracted=True)
    hits[1].update(version=2, channel="WEB")
    for r in hits:
        del r["inserted_at"]
    ch.insert("scenario_hits", hits)
    ch.refresh()

    # Each step of a refresh reads a few granules (8192 rows) through a sorting key or the
    # inserted_at index: a fixed amount, whatever the size of the tables (1 million rows here).
    # Besides them it reads the few rows of the small parts the inserts above made, whole
    # (how many depends on whether the server has merged them yet: `small`).
    reads = {r["view"]: r["read_rows"] for r in ch.rows(
        "SELECT view, read_rows FROM system.view_refreshes WHERE database = currentDatabase()")}
    granule, small = 8192, 64
    assert reads["events_minute_refresh"] <= 4 * granule + small, (reads, sizes)
    assert reads["scenario_minute_refresh"] <= 6 * granule + small, (reads, sizes)
    assert reads["flow_minute_refresh"] <= 24 * granule + small, (reads, sizes)
    # Together a small fraction of the tables. How many granules the touched minutes meet
    # depends on where today's date puts them in the parts (12 of flow's 24 on 2026-12-02),
    # so this is bounded by the steps' own bounds (34 granules), about a tenth of the tables.
    assert sum(reads.values()) < 0.11 * sum(sizes.values()), (reads, sizes)

    # What was computed equals the plain computation for the touched minutes.
    touched = f"(SELECT DISTINCT toStartOfMinute(arrayJoin(tr_time)) FROM sessions WHERE session_id IN ('BS{s1}', 'BS{s2}'))"
    plain = {(r["m"], r["f"], r["t"]): (r["n"], r["g"]) for r in ch.rows(f"""
        SELECT toStartOfMinute(tt) AS m, f, t, count() AS n, quantileExactInclusive(0.5)(g) AS g
        FROM sessions_current ARRAY JOIN tr_from AS f, tr_to AS t, tr_time AS tt, tr_gap_ms AS g
        WHERE toStartOfMinute(tt) IN {touched} GROUP BY m, f, t""")}
    assert_flow(flow(ch), plain)
    plain_events = {(r["m"], r["channel"], r["region"]): r["n"] for r in ch.rows(f"""
        SELECT toStartOfMinute(event_time) AS m, channel, region, count() AS n FROM events FINAL
        WHERE toStartOfMinute(event_time) IN ('{fmt_s(t - t % MINUTE)}', '{fmt_s(t + 61_000 - (t + 61_000) % MINUTE)}')
        GROUP BY m, channel, region""")}
    assert_counts(events(ch), plain_events)
    plain_hits = {(r["m"], r["rule"], r["channel"], r["topic"], r["region"]): r["n"] for r in ch.rows("""
        SELECT toStartOfMinute(event_time) AS m, rule, channel, topic, region, count() AS n FROM scenario_hits_current
        WHERE toStartOfMinute(event_time) IN (SELECT toStartOfMinute(event_time) FROM scenario_hits
                                             WHERE hit_id IN ('BH1000', 'BH2000'))
        GROUP BY m, rule, channel, topic, region""")}
    assert_counts(scenarios(ch), plain_hits)


def test_rebuild_statements_recompute_a_range(ch):  # noqa: F811
    """Rows that no refresh saw (inserted long ago) appear after the rebuild of their range;
    minutes outside it stay untouched, and a stale group inside it is zeroed."""
    ds = sqlgen.generate()
    old = fmt_s(sqlgen.base_day())  # inserted_at three weeks ago: invisible to the refresh
    for table, objs in ds.batches:
        ch.insert(table, [{**o.row(), "inserted_at": old} for o in objs])
    ch.refresh()
    assert ch.scalar("SELECT count() FROM flow_minute") == 0
    frm, to = ds.base + 2 * DAY, ds.base + 9 * DAY + 7 * HOUR
    stale = {"minute": fmt_s(frm + HOUR), "from_channel": "SMS", "to_channel": "SMS", "transitions": 99,
             "gap_ms_median": 1.0, "computed_at": fmt(sqlgen.base_day())}
    ch.insert("flow_minute", [stale])
    params = {"from": fmt_s(frm), "to": fmt_s(to)}
    for table in ("flow_minute", "scenario_minute", "events_minute"):
        ch.execute((MAINTENANCE / f"rebuild_{table}.sql").read_text(), params)
    inside = lambda d: {k: v for k, v in d.items() if fmt_s(frm) <= k[0] < fmt_s(to)}  # noqa: E731
    assert_flow(flow(ch), inside(sqlgen.flow_minute(ds)))
    assert_counts(scenarios(ch), inside(sqlgen.scenario_minute(ds)))
    assert_counts(events(ch), inside(sqlgen.events_minute(ds)))

    # The time index itself can be rebuilt from sessions (here: after losing it entirely).
    ch.execute("TRUNCATE TABLE session_timeline")
    ch.execute((MAINTENANCE / "rebuild_session_timeline.sql").read_text(),
               {"from": fmt_s(ds.base - DAY), "to": fmt_s(ds.base + 30 * DAY)})
    ch.execute("TRUNCATE TABLE flow_minute")
    ch.execute((MAINTENANCE / "rebuild_flow_minute.sql").read_text(), params)
    assert_flow(flow(ch), inside(sqlgen.flow_minute(ds)))
