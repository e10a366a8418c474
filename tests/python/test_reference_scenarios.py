"""Scenario hits checked against an independent evaluator written from the rule semantics
alone (`reference.py`, Python, sharing no code with the Rust detector).

Generated journeys (with delayed and duplicated events, null topics, ties in time, windows met
exactly and missed by a millisecond: see `reference.prepared_events`) are written to a file;
`journey scenarios backtest --input` stitches and evaluates them; the reference stitches them
again (union-find over the identifiers) and evaluates every rule by the definitions. Both must
find exactly the same hits, with the same matched events and detection times, under the
documented canonical customer.

Needs the `journey` binary (JOURNEY_BIN) and JOURNEY_PII_KEY (scripts/test.sh sets both);
without them the test fails, it never skips.
"""

from __future__ import annotations

import json

from reference import (assert_covered, canonical, evaluate, hits_per_rule, is_key, prepared_events, rule_file,
                       run_journey, stitched)


def test_backtest_hits_equal_an_independent_evaluation(tmp_path):
    events_file = tmp_path / "events.jsonl"
    lines = prepared_events(events_file, events=30000, population=3000, days=7, seed=17)
    rules_file = tmp_path / "rules.toml"
    rules = rule_file(rules_file)
    hits_file = tmp_path / "hits.jsonl"
    report = json.loads(run_journey(["scenarios", "backtest", "--rules", str(rules_file), "--input", str(events_file),
                                     "--output", str(hits_file), "--json"]))

    components = stitched(lines)
    want = set()
    keys = {}
    for evs in components:
        key = canonical(evs)
        for rule in rules:
            for trigger, time, matched in evaluate(rule, evs):
                want.add((rule["name"], trigger, time, matched))
                keys[(rule["name"], trigger)] = key

    got = set()
    hit_lines = hits_file.read_text().splitlines()
    for line in hit_lines:
        h = json.loads(line)
        assert not h["retracted"]
        got.add((h["rule"], h["trigger_event_id"], h["event_time"], tuple(h["matched_event_ids"])))
        key = keys.get((h["rule"], h["trigger_event_id"]))
        assert key is not None and is_key(h["customer_id"], key), (h, key)

    assert len(got) == len(hit_lines), "one line per hit"
    assert got == want, (sorted(got - want)[:5], sorted(want - got)[:5])
    assert {r: c["hits"] for r, c in report["rules"].items()} == hits_per_rule(rules, want)
    assert report["customers"] == len(components)
    assert_covered(rules, components, want)

