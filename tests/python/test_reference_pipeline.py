"""The whole pipeline checked from outside: a file of events it has never seen goes through
`journey replay` -> Kafka -> `journey process` -> ClickHouse, and what ClickHouse then holds
(`events_current`, `sessions_current`, `scenario_hits_current`) must equal what the
independent Python reference (`reference.py`) computes from the same file in batch.

The file: generated journeys over two days with anonymous app installs that log in later,
delayed and duplicated events, null topics, ties in time and windows met exactly or missed by
a millisecond (`reference.prepared_events`). The correction horizon covers the whole data
set, so every late event and every late identity link still corrects the results, as the
issue requires: the live result must be the batch one.

Needs the `journey` binary (JOURNEY_BIN), a Kafka broker (JOURNEY_TEST_KAFKA), ClickHouse
(JOURNEY_TEST_CLICKHOUSE) and JOURNEY_PII_KEY; scripts/test.sh provides them all, and a
missing one fails the test, it never skips.
"""

from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request
import uuid

from reference import canonical, evaluate, prepared_events, rule_file, run_journey, sessions, stitched
from test_reference_scenarios import assert_covered

BROKERS = os.environ.get("JOURNEY_TEST_KAFKA", "127.0.0.1:9092")
CLICKHOUSE = os.environ.get("JOURNEY_TEST_CLICKHOUSE", "http://127.0.0.1:8123")
GAP_MS = 30 * 60_000
MAX_DURATION_MS = 24 * 3_600_000


def query(database: str, sql: str) -> list[dict]:
    return [json.loads(line) for line in execute(database, sql + " FORMAT JSONEachRow").splitlines() if line]


def execute(database: str, sql: str) -> str:
    url = CLICKHOUSE + "/?" + urllib.parse.urlencode({"database": database, "query": sql})
    with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=60) as r:
        return r.read().decode()


def test_clickhouse_holds_what_an_independent_batch_computation_gives(tmp_path):
    check_pipeline(tmp_path, seed=29)


def check_pipeline(tmp_path, *, seed: int, delayed_share: float = 0.1, generator: dict[str, str] | None = None,
                   partitions: int = 3) -> None:
    """The comparison, on data generated with `seed` (and `generator` settings)."""
    events_file = tmp_path / "events.jsonl"
    lines = prepared_events(events_file, events=12000, population=800, days=2, seed=seed, delayed_share=delayed_share,
                            env=generator)
    rules_file = tmp_path / "rules.toml"
    rules = rule_file(rules_file)

    run_id = "t_ref_" + uuid.uuid4().hex[:10]
    env = {
        "JOURNEY__KAFKA__BROKERS": BROKERS,
        "JOURNEY__CLICKHOUSE__URL": CLICKHOUSE,
        "JOURNEY__CLICKHOUSE__DATABASE": run_id,
        "JOURNEY__TOPICS__PARTITIONS": str(partitions),
        "JOURNEY__PROCESS__GROUP_ID": run_id + "-group",
        "JOURNEY__PROCESS__IDLE_TIMEOUT": "2s",
        "JOURNEY__PROCESS__FLUSH_INTERVAL": "500ms",
        # The edge customers span seven days: the whole file stays within the horizon.
        "JOURNEY__PROCESS__CORRECTION_HORIZON": "10d",
        "JOURNEY__PROCESS__METRICS_ADDR": '""',
        "JOURNEY__DETECT__RULES": str(rules_file),
    }
    for topic in ("raw", "dlq", "sessions", "scenarios", "late", "keyed", "identity", "state"):
        env[f"JOURNEY__TOPICS__{topic.upper()}"] = f"{run_id}.{topic}"
    try:
        run_and_compare(env, run_id, events_file, lines, rules)
    finally:
        # The topics go with the broker, which the test script starts empty.
        execute("default", f"DROP DATABASE IF EXISTS {run_id}")


def run_and_compare(env: dict[str, str], run_id: str, events_file, lines: list[str], rules: list[dict]) -> None:
    """Runs the pipeline on `events_file` into database `run_id`, then compares."""
    run_journey(["topics", "create"], env)
    run_journey(["migrate"], env)
    run_journey(["replay", str(events_file)], env)
    run_journey(["process", "--exit-when-idle", "8s"], env, timeout=900)

    components = stitched(lines)
    # events_current: every distinct event once, and each reference customer under one key of
    # its own (its canonical key, where that does not need the phone pseudonym's key).
    in_events = {r["event_id"]: r["customer_id"] for r in query(run_id, "SELECT event_id, customer_id FROM events_current")}
    assert sum(len(evs) for evs in components) == len(in_events) == sum(1 for _ in query(run_id, "SELECT 1 FROM events_current"))
    key_of = []
    for evs in components:
        keys = {in_events.get(e["event_id"]) for e in evs}
        assert len(keys) == 1 and None not in keys, keys
        key = keys.pop()
        want = canonical(evs)
        assert key == want or (want == "m:" and key.startswith("m:")), (key, want)
        key_of.append(key)
    assert len(set(key_of)) == len(components), "two customers under one key"
    assert in_events["EDGE-merge-b-0"] == "EDGE-merge-a", "a late link merged no customers"

    want_sessions = {(key, *s) for key, evs in zip(key_of, components) for s in sessions(evs, GAP_MS, MAX_DURATION_MS)}
    got_sessions = {
        (r["customer_id"], int(r["s"]), int(r["e"]), int(r["duration_ms"]), int(r["event_count"]), r["path"],
         tuple(r["channels"]), tuple(r["topics"]), bool(r["assisted"]))
        for r in query(run_id, "SELECT customer_id, toUnixTimestamp64Milli(start_time) AS s, "
                               "toUnixTimestamp64Milli(end_time) AS e, duration_ms, event_count, path, channels, topics, "
                               "assisted FROM sessions_current")
    }
    assert got_sessions == want_sessions, (sorted(got_sessions - want_sessions)[:5], sorted(want_sessions - got_sessions)[:5])
    assert any(s[4] > 1 and ">" in s[5] for s in want_sessions), "no session crossed channels"
    assert any(s[3] == MAX_DURATION_MS for s in want_sessions), "no session met max_duration"

    # Hits, with what leads from a hit to the journey: the session of its trigger event (by
    # the session's customer and start), the channel path of the matched events, the
    # trigger's topic and the rule's severity.
    session_start = {}
    for evs in components:
        # An event is in the latest session that starts at or before it (a session's events
        # all come before the next session's first one).
        for start, *_ in reversed(sessions(evs, GAP_MS, MAX_DURATION_MS)):
            for e in evs:
                if start <= e["event_time"] and e["event_id"] not in session_start:
                    session_start[e["event_id"]] = start
    by_id = {e["event_id"]: e for evs in components for e in evs}

    def path(ids: tuple) -> str:
        channels = [by_id[i]["channel"] for i in ids]
        return ">".join(c for k, c in enumerate(channels) if k == 0 or c != channels[k - 1])

    want_hits = set()
    for key, evs in zip(key_of, components):
        for rule in rules:
            for trigger, time, matched in evaluate(rule, evs):
                want_hits.add((rule["name"], key, trigger, time, matched, path(matched), by_id[trigger].get("topic") or "",
                               rule.get("severity", "warning"), (key, session_start[trigger])))
    starts = {r["session_id"]: (r["customer_id"], int(r["s"]))
              for r in query(run_id, "SELECT session_id, customer_id, toUnixTimestamp64Milli(start_time) AS s FROM sessions_current")}
    got_hits = {
        (r["rule"], r["customer_id"], r["trigger_event_id"], int(r["t"]), tuple(r["matched_event_ids"]), r["path"], r["topic"],
         r["severity"], starts.get(r["session_id"]))
        for r in query(run_id, "SELECT rule, customer_id, trigger_event_id, toUnixTimestamp64Milli(event_time) AS t, "
                               "matched_event_ids, path, topic, severity, session_id FROM scenario_hits_current")
    }
    assert got_hits == want_hits, (sorted(got_hits - want_hits)[:5], sorted(want_hits - got_hits)[:5])
    assert_covered(rules, components, {(rule, trigger, *rest) for rule, _, trigger, *rest in want_hits})
