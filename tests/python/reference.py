"""An independent reference of the pipeline's semantics, written in Python from the docs alone
(docs/SCENARIOS.md, docs/ARCHITECTURE.md) and sharing no code with the Rust crates: identity
stitching (connected components of linked identifiers), sessions (gap and max_duration on
events ordered by time and id) and the three rule kinds. The tests beside it run the
`journey` binary on generated data it changes in ways the generator never does, and compare.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import subprocess
import time
import tomllib

REPO = pathlib.Path(__file__).resolve().parents[2]


def journey_bin() -> str:
    path = os.environ.get("JOURNEY_BIN")
    assert path and os.access(path, os.X_OK), "set JOURNEY_BIN to the built journey binary (scripts/test.sh does)"
    return path


def run_journey(args: list[str], env: dict[str, str] | None = None, timeout: int = 600) -> str:
    """Runs `journey ARGS` from the repository (so config/journey.example.toml applies, under
    `env`'s overrides) and returns its standard output."""
    assert os.environ.get("JOURNEY_PII_KEY"), "set JOURNEY_PII_KEY (scripts/test.sh does)"
    done = subprocess.run([journey_bin(), *args], cwd=REPO, env={**os.environ, **(env or {})}, check=True,
                          timeout=timeout, capture_output=True, text=True)
    return done.stdout


# Beyond the built-in set: three steps, lists, line, region, attributes, `same` on other
# fields, a count and an absence with `same`.
EXTRA_RULES = """
[[rule]]
name = "bot_ivr_agent"
kind = "sequence"
within = "2h"
same = ["region"]
steps = [{ channel = "VOICE_BOT" }, { channel = ["IVR", "APP"] }, { event_type = "contact.start", line = "front" }]

[[rule]]
name = "screen_then_chat"
kind = "sequence"
within = "45m"
same = ["topic"]
steps = [{ attrs = { screen = ["tariff_screen", "balance_screen", "roaming_screen"] } }, { channel = "CHAT" }]

[[rule]]
name = "same_channel_twice"
kind = "sequence"
within = "3d"
same = ["channel", "topic"]
steps = [{ outcome = ["abandoned", "transferred", "error"] }, { event_type = "contact.start" }]

[[rule]]
name = "topic_storm"
kind = "count"
within = "2d"
at_least = 2
same = ["topic"]
match = { event_type = "contact.start", region = ["north", "central", "volga"] }

[[rule]]
name = "no_follow_up_in_region"
kind = "absence"
within = "6h"
same = ["region"]
trigger = { channel = "CONTACT_CENTRE", event_type = "contact.start" }
followed_by = { channel = ["APP", "WEB"] }
"""


def rule_file(path: pathlib.Path) -> list[dict]:
    """Writes the built-in rules and `EXTRA_RULES` to `path` and returns them parsed."""
    path.write_text((REPO / "config" / "scenarios.toml").read_text() + EXTRA_RULES)
    return tomllib.loads(path.read_text())["rule"]


def duration_ms(text: str) -> int:
    """A rule's duration ("500ms", "10s", "30m", "72h", "7d") in milliseconds."""
    units = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
    for unit in ("ms", "s", "m", "h", "d"):
        if text.endswith(unit) and text[: -len(unit)].isdigit():
            return int(text[: -len(unit)]) * units[unit]
    raise ValueError(text)


# ---------------------------------------------------------------- the reference


def field(e: dict, name: str):
    """A `same` field of an event; None when missing (attrs.<key> reads the attribute)."""
    if name.startswith("attrs."):
        return (e.get("attrs") or {}).get(name[len("attrs."):])
    return e.get(name)


def matches(pred: dict, e: dict) -> bool:
    """Every field the predicate names has one of its values; a missing field matches nothing."""
    for key, want in pred.items():
        if key == "attrs":
            for k, v in want.items():
                got = (e.get("attrs") or {}).get(k)
                if got is None or got not in (v if isinstance(v, list) else [v]):
                    return False
            continue
        got = e.get(key)
        if got is None or got not in (want if isinstance(want, list) else [want]):
            return False
    return True


def same(fields: list[str], a: dict, b: dict) -> bool:
    """Equal on every field, and null equals nothing (not even null)."""
    return all(field(a, f) is not None and field(a, f) == field(b, f) for f in fields)


def evaluate(rule: dict, evs: list[dict]) -> list[tuple]:
    """Hits of one rule over one customer's sorted, distinct events, by the definitions:
    (trigger id, detection time, matched ids)."""
    within = duration_ms(rule["within"])
    fields = rule.get("same", [])
    out = []
    if rule["kind"] == "sequence":
        steps = rule["steps"]
        for k, last in enumerate(evs):
            if not matches(steps[-1], last):
                continue
            # The latest earlier event for each step, going backwards, all `same` as the last
            # and no earlier than last.time - within: latest choices leave the most room for
            # the steps before them, so a chain exists iff this one does.
            chain, pos = [k], k
            for step in reversed(steps[:-1]):
                pos = next(
                    (i for i in range(pos - 1, -1, -1)
                     if evs[i]["event_time"] >= last["event_time"] - within
                     and matches(step, evs[i]) and same(fields, evs[i], last)),
                    None,
                )
                if pos is None:
                    break
                chain.append(pos)
            if pos is not None:
                out.append((last["event_id"], last["event_time"], tuple(evs[i]["event_id"] for i in reversed(chain))))
    elif rule["kind"] == "absence":
        for t, trig in enumerate(evs):
            if not matches(rule["trigger"], trig):
                continue
            followed = any(
                f["event_time"] - trig["event_time"] <= within and matches(rule["followed_by"], f) and same(fields, trig, f)
                for f in evs[t + 1:]
            )
            if not followed:
                out.append((trig["event_id"], trig["event_time"] + within, (trig["event_id"],)))
    elif rule["kind"] == "count":
        for k, e in enumerate(evs):
            if not matches(rule["match"], e):
                continue
            counted = [m for m in evs[: k + 1]
                       if e["event_time"] - m["event_time"] <= within and matches(rule["match"], m) and same(fields, m, e)]
            if len(counted) >= rule["at_least"]:
                out.append((e["event_id"], e["event_time"], tuple(m["event_id"] for m in counted)))
    else:
        raise ValueError(rule["kind"])
    return out


def customers(events: list[dict]) -> list[list[dict]]:
    """Connected components of linked identifiers, each with its events."""
    parent: dict[tuple, tuple] = {}

    def root(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def ids(e):
        return [(k, e[k]) for k in ("customer_id", "msisdn", "app_instance_id") if e.get(k)]

    for e in events:
        first, *rest = ids(e)
        for other in rest:
            parent[root(other)] = root(first)
    groups: dict[tuple, list[dict]] = {}
    for e in events:
        groups.setdefault(root(ids(e)[0]), []).append(e)
    return list(groups.values())


def canonical(evs: list[dict]) -> str:
    """The documented canonical key, where it does not need the phone pseudonym's key."""
    crm = sorted({e["customer_id"] for e in evs if e.get("customer_id")}, key=str.encode)
    if crm:
        return crm[0]
    if any(e.get("msisdn") for e in evs):
        return "m:"
    return "a:" + min((e["app_instance_id"] for e in evs if e.get("app_instance_id")), key=str.encode)


def is_key(got: str, want: str) -> bool:
    """Whether the pipeline's customer key `got` is the documented `canonical` one; a phone-
    keyed customer is named by the keyed pseudonym, which only the pipeline knows."""
    return got == want or (want == "m:" and got.startswith("m:"))


def hits_per_rule(rules: list[dict], hits) -> dict[str, int]:
    """How many of `hits` (tuples led by the rule name) each rule has, zero included."""
    per_rule = {r["name"]: 0 for r in rules}
    for rule, *_ in hits:
        per_rule[rule] += 1
    return per_rule


def assert_covered(rules: list[dict], components: list[list[dict]], hits: set[tuple]) -> None:
    """What the comparison must have met: every rule with hits, ties in time, windows met
    exactly, and absence triggers without the `same` field."""
    per_rule = hits_per_rule(rules, hits)
    assert not [r for r, n in per_rule.items() if n == 0], per_rule
    times = [(e["event_time"], cid) for cid, evs in enumerate(components) for e in evs]
    assert len(times) > len(set(times)), "no two events of a customer at the same time"
    exact = {duration_ms(r["within"]) for r in rules}
    assert any(e["event_time"] - m["event_time"] in exact for evs in components for e in evs for m in evs), "no window met exactly"
    nameless = {e["event_id"] for evs in components for e in evs if e["event_type"] == "contact.start" and e.get("topic") is None}
    assert any(rule == "unresolved_contact" and trigger in nameless for rule, trigger, *_ in hits)


def window_edges(t0: int) -> list[dict]:
    """Customers whose built-in scenarios complete exactly `within` after they start, and
    others one millisecond later, so that both sides of every inclusive window occur; one
    whose session meets `max_duration`; two that a later link merges."""
    out = []
    shapes = [
        ("app_then_call", 30 * 60_000, [("APP", "screen.view", None), ("CONTACT_CENTRE", "contact.start", None)]),
        ("ivr_to_agent", 10 * 60_000, [("IVR", "ivr.menu", None), ("CONTACT_CENTRE", "contact.start", None)]),
        ("repeat_contact", 72 * 3_600_000, [("CHAT", "contact.start", None), ("RETAIL", "contact.start", None)]),
        ("unresolved_contact", 48 * 3_600_000, [("CHAT", "contact.start", None), ("APP", "self_service.completed", "resolved")]),
        ("contact_storm", 7 * 86_400_000, [("EMAIL", "contact.start", None), ("CHAT", "contact.start", None),
                                           ("RETAIL", "contact.start", None)]),
    ]
    for name, within, steps in shapes:
        for over in (0, 1):
            customer = f"EDGE-{name}-{over}"
            for i, (channel, event_type, outcome) in enumerate(steps):
                # The first and the last step `within` (+ over) apart, any others between.
                at = t0 if i == 0 else t0 + within + over if i == len(steps) - 1 else t0 + within // 2
                e = {"event_id": f"{customer}-{i}", "event_time": at, "channel": channel, "event_type": event_type,
                     "customer_id": customer, "topic": "edge"}
                if outcome:
                    e["outcome"] = outcome
                out.append(e)
    # A customer active every 20 minutes for 25 hours: its session is cut at max_duration
    # (24 h), the event exactly 24 h after the first one still inside it.
    channels = ["APP", "WEB", "CHAT", "APP", "IVR"]
    for i in range(76):
        out.append({"event_id": f"EDGE-long-{i:03}", "event_time": t0 + i * 20 * 60_000, "channel": channels[i % 5],
                    "event_type": "screen.view", "customer_id": "EDGE-long"})
    # Two CRM customers active at the same time, then linked by a phone both use: one
    # customer from then on, under the smaller id, with the other's sessions merged in.
    for i in range(6):
        for who in ("a", "b"):
            out.append({"event_id": f"EDGE-merge-{who}-{i}", "event_time": t0 + 3_600_000 + i * 5 * 60_000 + (who == "b") * 60_000,
                        "channel": "APP" if who == "a" else "WEB", "event_type": "screen.view", "customer_id": f"EDGE-merge-{who}"})
    for i, who in enumerate(("b", "a")):
        out.append({"event_id": f"EDGE-merge-link-{who}", "event_time": t0 + 3_600_000 + (40 + 5 * i) * 60_000,
                    "channel": "CONTACT_CENTRE", "event_type": "contact.start", "customer_id": f"EDGE-merge-{who}",
                    "msisdn": "70000000042", "topic": "edge"})
    # In time order, so that a live pipeline reading them after the generated events meets
    # none older than the watermark by more than the span of the generated data.
    return sorted(out, key=lambda e: e["event_time"])


def prepared_events(path: pathlib.Path, *, events: int, population: int, days: int, seed: int,
                    delayed_share: float = 0.1, env: dict[str, str] | None = None) -> list[str]:
    """Generated journeys, changed in ways the generator never does, written to `path` as JSON
    lines (arrival order) and returned: delayed and duplicated events; 8% of events without a
    topic, so that `same` meets nulls (the generator always sets one on contacts); a third of
    the times cut to the whole minute, so that ties in time (ordered by id) and windows met
    exactly occur; then the customers of `window_edges`. `env` reaches the generator (its
    `[generator]` settings: `JOURNEY__GENERATOR__DISORDER__MAX_DELAY`, ...)."""
    # Eight days before today's midnight, so that the latest edge customer (a week after the
    # start) is still in the past.
    start = (int(time.time()) // 86_400 - 8) * 86_400_000
    run_journey(["generate", "--events", str(events), "--customers", str(population), "--days", str(days),
                 "--start", str(start), "--seed", str(seed), "--delayed-share", str(delayed_share), "--duplicate-share", "0.03",
                 "--malformed-share", "0", "--output", str(path)], env)
    rng = random.Random(seed)
    lines = []
    changes: dict[str, tuple[bool, bool]] = {}
    for line in path.read_text().splitlines():
        e = json.loads(line)
        # A duplicate is changed as its original was, so it stays a duplicate.
        drop_topic, to_minute = changes.setdefault(e["event_id"], (rng.random() < 0.08, rng.random() < 0.33))
        if drop_topic:
            e.pop("topic", None)
        if to_minute:
            e["event_time"] -= e["event_time"] % 60_000
        lines.append(json.dumps(e))
    lines += [json.dumps(e) for e in window_edges(min(json.loads(line)["event_time"] for line in lines))]
    path.write_text("\n".join(lines) + "\n")
    return lines


def stitched(lines: list[str]) -> list[list[dict]]:
    """The customers of the events (distinct by id, the first copy kept), each customer's
    events sorted by (event_time, event_id bytes)."""
    distinct: dict[str, dict] = {}
    for line in lines:
        e = json.loads(line)
        distinct.setdefault(e["event_id"], e)
    components = customers(list(distinct.values()))
    for evs in components:
        evs.sort(key=lambda e: (e["event_time"], e["event_id"].encode()))
    return components


def runs(evs: list[dict], gap_ms: int, max_duration_ms: int) -> list[list[dict]]:
    """The sessions of one customer's sorted events, as their events: maximal runs whose
    consecutive events are less than `gap_ms` apart, split before the first event more than
    `max_duration_ms` after the run's first one."""
    out: list[list[dict]] = []
    for e in evs:
        run = out[-1] if out else None
        if run and e["event_time"] - run[-1]["event_time"] < gap_ms and e["event_time"] - run[0]["event_time"] <= max_duration_ms:
            run.append(e)
        else:
            out.append([e])
    return out


def channel_path(evs: list[dict]) -> str:
    """The channels of `evs` in order, a repeated one once: `APP>IVR>CONTACT_CENTRE`."""
    path = [evs[0]["channel"]]
    for e in evs[1:]:
        if e["channel"] != path[-1]:
            path.append(e["channel"])
    return ">".join(path)


def sessions(evs: list[dict], gap_ms: int, max_duration_ms: int) -> list[tuple]:
    """Sessions of one customer's sorted events (see `runs`), each as (start, end, duration,
    event count, channel path, distinct channels and topics in order of first appearance,
    whether it holds an assisted contact: an event of type `contact.start`)."""
    out = []
    for run in runs(evs, gap_ms, max_duration_ms):
        channels = tuple(dict.fromkeys(e["channel"] for e in run))
        topics = tuple(dict.fromkeys(e["topic"] for e in run if e.get("topic") is not None))
        assisted = any(e["event_type"] == "contact.start" for e in run)
        start, end = run[0]["event_time"], run[-1]["event_time"]
        out.append((start, end, end - start, len(run), channel_path(run), channels, topics, assisted))
    return out
