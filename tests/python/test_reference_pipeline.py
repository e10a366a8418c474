"""The whole pipeline checked from outside: a file of events it has never seen goes through
`journey replay` -> Kafka -> `journey process` -> ClickHouse, and what ClickHouse then holds
(`events_current`, `sessions_current`, `scenario_hits_current`, and the dashboards' rollups
`flow_minute_current`, `events_minute_current`, `scenario_minute_current` once refreshed)
must equal what the independent Python reference (`reference.py`) computes from the same file
in batch.

The file: generated journeys over two days with anonymous app installs that log in later,
delayed and duplicated events, null topics, ties in time and windows met exactly or missed by
a millisecond (`reference.prepared_events`). The correction horizon covers the whole data
set, so every late event and every late identity link still corrects the results, as the
issue requires: the live result must be the batch one. Five lines no pipeline may accept
(broken JSON, an unknown channel, no identifier, no time, an unknown field) stand among the
good ones: each must reach the dead-letter topic untouched, with its reason and line.

Needs the `journey` binary (JOURNEY_BIN), a Kafka broker (JOURNEY_TEST_KAFKA), ClickHouse
(JOURNEY_TEST_CLICKHOUSE) and JOURNEY_PII_KEY; scripts/test.sh provides them all, and a
missing one fails the test, it never skips.
"""

from __future__ import annotations

import os
import time
import uuid

from confluent_kafka import Consumer

from reference import (assert_covered, canonical, channel_path, evaluate, is_key, prepared_events, rule_file, run_journey,
                       runs, sessions, stitched)
from sqlgen_db import ClickHouse, server_url

BROKERS = os.environ.get("JOURNEY_TEST_KAFKA", "127.0.0.1:9092")
GAP_MS = 30 * 60_000
MAX_DURATION_MS = 24 * 3_600_000


BAD_LINES = {
    "malformed_json": '{"event_id": "bad-1", "event_time": 1700000000000, "channel": "APP"',
    "unknown_channel": '{"event_id": "bad-2", "event_time": 1700000000000, "channel": "TELEPATHY", '
                       '"event_type": "x", "customer_id": "BAD"}',
    "missing_identifier": '{"event_id": "bad-3", "event_time": 1700000000000, "channel": "APP", "event_type": "x"}',
    "missing_event_time": '{"event_id": "bad-4", "channel": "APP", "event_type": "x", "customer_id": "BAD"}',
    "unknown_field": '{"event_id": "bad-5", "event_time": 1700000000000, "channel": "APP", "event_type": "x", '
                     '"customer_id": "BAD", "mood": "grumpy"}',
}


def dead_letters(topic: str, count: int) -> list:
    """The first `count` records of `topic` (waiting up to a minute for them)."""
    consumer = Consumer({"bootstrap.servers": BROKERS, "group.id": f"dlq-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    got = []
    deadline = time.time() + 60
    try:
        while len(got) < count and time.time() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                got.append(msg)
        # Anything beyond `count` would be a good event lost to the dead letters.
        extra = consumer.poll(2.0)
        assert extra is None or extra.error(), "more dead letters than bad lines"
    finally:
        consumer.close()
    return got


def reference_flows(components: list[list[dict]]) -> dict[tuple, tuple[int, float]]:
    """The process map: per minute (of the later event) and pair of channels, the changes of
    channel between consecutive events of a session, and the median time between the two
    (the mean of the two middle values for an even count)."""
    gaps: dict[tuple, list[int]] = {}
    for evs in components:
        for run in runs(evs, GAP_MS, MAX_DURATION_MS):
            for a, b in zip(run, run[1:]):
                if a["channel"] != b["channel"]:
                    gaps.setdefault((b["event_time"] // 60_000 * 60, a["channel"], b["channel"]), []).append(
                        b["event_time"] - a["event_time"])
    out = {}
    for k, g in gaps.items():
        g.sort()
        mid = len(g) // 2
        out[k] = (len(g), float(g[mid]) if len(g) % 2 else (g[mid - 1] + g[mid]) / 2)
    return out


def test_clickhouse_holds_what_an_independent_batch_computation_gives(tmp_path):
    check_pipeline(tmp_path, seed=29)


def check_pipeline(tmp_path, *, seed: int, delayed_share: float = 0.1, generator: dict[str, str] | None = None,
                   partitions: int = 3) -> None:
    """The comparison, on data generated with `seed` (and `generator` settings)."""
    events_file = tmp_path / "events.jsonl"
    lines = prepared_events(events_file, events=12000, population=800, days=2, seed=seed, delayed_share=delayed_share,
                            env=generator)
    # Lines no pipeline may accept, among the good ones: each must reach the dead-letter topic
    # untouched, with its reason and place, and nothing else may be lost.
    bad_at = {len(lines) * (k + 1) // (len(BAD_LINES) + 1): line for k, line in enumerate(BAD_LINES.values())}
    with_bad = []
    for i, line in enumerate(lines):
        if i in bad_at:
            with_bad.append(bad_at[i])
        with_bad.append(line)
    events_file.write_text("\n".join(with_bad) + "\n")
    rules_file = tmp_path / "rules.toml"
    rules = rule_file(rules_file)

    run_id = "t_ref_" + uuid.uuid4().hex[:10]
    env = {
        "JOURNEY__KAFKA__BROKERS": BROKERS,
        "JOURNEY__CLICKHOUSE__URL": server_url(),
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
        ClickHouse(server_url(), "default").execute(f"DROP DATABASE IF EXISTS {run_id}")


def run_and_compare(env: dict[str, str], run_id: str, events_file, lines: list[str], rules: list[dict]) -> None:
    """Runs the pipeline on `events_file` into database `run_id`, then compares."""
    run_journey(["topics", "create"], env)
    run_journey(["migrate"], env)
    run_journey(["replay", str(events_file)], env)
    run_journey(["process", "--exit-when-idle", "8s"], env, timeout=900)

    # The bad lines: dead-lettered untouched, with their reason, stage and line number.
    letters = dead_letters(env["JOURNEY__TOPICS__DLQ"], len(BAD_LINES))
    by_payload = {m.value().decode(): dict((k, v.decode()) for k, v in m.headers() or []) for m in letters}
    assert set(by_payload) == set(BAD_LINES.values())
    numbered = events_file.read_text().splitlines()
    for reason, line in BAD_LINES.items():
        h = by_payload[line]
        assert (h["journey.dlq.reason"], h["journey.dlq.stage"]) == (reason, "replay"), h
        assert h["journey.dlq.origin"] == f"{events_file}:{numbered.index(line) + 1}", h

    components = stitched(lines)
    ch = ClickHouse(server_url(), run_id)
    # events_current: every distinct event once, and each reference customer under one key of
    # its own (its canonical key, where that does not need the phone pseudonym's key).
    in_events = {r["event_id"]: r["customer_id"] for r in ch.rows("SELECT event_id, customer_id FROM events_current")}
    assert sum(len(evs) for evs in components) == len(in_events) == sum(1 for _ in ch.rows("SELECT 1 FROM events_current"))
    key_of = []
    for evs in components:
        keys = {in_events.get(e["event_id"]) for e in evs}
        assert len(keys) == 1 and None not in keys, keys
        key = keys.pop()
        want = canonical(evs)
        assert is_key(key, want), (key, want)
        key_of.append(key)
    assert len(set(key_of)) == len(components), "two customers under one key"
    assert in_events["EDGE-merge-b-0"] == "EDGE-merge-a", "a late link merged no customers"

    want_sessions = {(key, *s) for key, evs in zip(key_of, components) for s in sessions(evs, GAP_MS, MAX_DURATION_MS)}
    got_sessions = {
        (r["customer_id"], r["s"], r["e"], r["duration_ms"], r["event_count"], r["path"],
         tuple(r["channels"]), tuple(r["topics"]), r["assisted"])
        for r in ch.rows("SELECT customer_id, toUnixTimestamp64Milli(start_time) AS s, "
                               "toUnixTimestamp64Milli(end_time) AS e, duration_ms, event_count, path, channels, topics, "
                               "assisted FROM sessions_current")
    }
    assert got_sessions == want_sessions, (sorted(got_sessions - want_sessions)[:5], sorted(want_sessions - got_sessions)[:5])
    assert any(s[4] > 1 and ">" in s[5] for s in want_sessions), "no session crossed channels"
    assert any(s[3] == MAX_DURATION_MS for s in want_sessions), "no session met max_duration"

    # Hits, with what leads from a hit to the journey: the session of its trigger event (by
    # the session's customer and start), the channel path of the matched events, the
    # trigger's topic and the rule's severity.
    session_start = {e["event_id"]: run[0]["event_time"]
                     for evs in components for run in runs(evs, GAP_MS, MAX_DURATION_MS) for e in run}
    by_id = {e["event_id"]: e for evs in components for e in evs}

    want_hits = set()
    for key, evs in zip(key_of, components):
        for rule in rules:
            for trigger, at, matched in evaluate(rule, evs):
                want_hits.add((rule["name"], key, trigger, at, matched, channel_path([by_id[i] for i in matched]),
                               by_id[trigger].get("topic") or "",
                               rule.get("severity", "warning"), (key, session_start[trigger])))
    starts = {r["session_id"]: (r["customer_id"], r["s"])
              for r in ch.rows("SELECT session_id, customer_id, toUnixTimestamp64Milli(start_time) AS s FROM sessions_current")}
    got_hits = {
        (r["rule"], r["customer_id"], r["trigger_event_id"], r["t"], tuple(r["matched_event_ids"]), r["path"], r["topic"],
         r["severity"], starts.get(r["session_id"]))
        for r in ch.rows("SELECT rule, customer_id, trigger_event_id, toUnixTimestamp64Milli(event_time) AS t, "
                               "matched_event_ids, path, topic, severity, session_id FROM scenario_hits_current")
    }
    assert got_hits == want_hits, (sorted(got_hits - want_hits)[:5], sorted(want_hits - got_hits)[:5])

    # What the dashboards read: the per-minute rollups, once refreshed after the last insert.
    ch.refresh()
    want_flows = reference_flows(components)
    assert any(n % 2 == 0 for n, _ in want_flows.values()), "no even count: the median's mean of two is not met"
    got_flows = {(r["m"], r["from_channel"], r["to_channel"]): (r["transitions"], r["gap_ms_median"])
                 for r in ch.rows("SELECT toUnixTimestamp(minute) AS m, from_channel, to_channel, transitions, gap_ms_median "
                                  "FROM flow_minute_current")}
    assert got_flows == want_flows, (sorted(set(got_flows.items()) - set(want_flows.items()))[:5],
                                     sorted(set(want_flows.items()) - set(got_flows.items()))[:5])
    want_minutes: dict[tuple, int] = {}
    for e in by_id.values():
        k = (e["event_time"] // 60_000 * 60, e["channel"], e.get("region") or "")
        want_minutes[k] = want_minutes.get(k, 0) + 1
    got_minutes = {(r["m"], r["channel"], r["region"]): r["events"]
                   for r in ch.rows("SELECT toUnixTimestamp(minute) AS m, channel, region, events FROM events_minute_current")}
    assert got_minutes == want_minutes and want_minutes
    want_rates: dict[tuple, int] = {}
    for rule, _, trigger, at, *_ in want_hits:
        t = by_id[trigger]
        k = (at // 60_000 * 60, rule, t["channel"], t.get("topic") or "", t.get("region") or "")
        want_rates[k] = want_rates.get(k, 0) + 1
    got_rates = {(r["m"], r["rule"], r["channel"], r["topic"], r["region"]): r["hits"]
                 for r in ch.rows("SELECT toUnixTimestamp(minute) AS m, rule, channel, topic, region, hits "
                                  "FROM scenario_minute_current")}
    assert got_rates == want_rates and want_rates
    assert_covered(rules, components, {(rule, trigger, *rest) for rule, _, trigger, *rest in want_hits})
