"""Every documented query in sql/queries/ runs against a fresh, migrated database holding the
generated data set (tests/python/sqlgen.py) and returns exactly what plain Python computes
from the same data, corrections and retractions included.

Needs JOURNEY_TEST_CLICKHOUSE and JOURNEY_BIN (scripts/test.sh sets both); fails without them.
"""

from __future__ import annotations

import math
import re
import urllib.parse

import pytest

import sqlgen
from sqlgen import DAY, HOUR, fmt, fmt_date
from sqlgen_db import QUERIES, ch  # noqa: F401  (ch is a fixture)

# query file -> the test below that checks it
TESTED = {
    "events_per_channel_minute.sql": "test_events_per_channel_minute",
    "channel_flow.sql": "test_channel_flow",
    "top_paths.sql": "test_top_paths",
    "scenario_hit_rates.sql": "test_scenario_hit_rates",
    "customer_journey.sql": "test_customer_journey",
    "churn_scenario_exposure.sql": "test_churn_scenario_exposure",
    "churn_repeat_contact.sql": "test_churn_repeat_contact",
    "churn_left_self_service.sql": "test_churn_left_self_service",
    "churn_path_lift.sql": "test_churn_path_lift",
}


def same(actual, expected) -> bool:
    if isinstance(expected, float) or isinstance(actual, float):
        if actual is None or expected is None:
            return actual is expected
        return math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-9)
    return actual == expected


def assert_rows(actual: list[dict], expected: list[dict], what: str) -> None:
    assert expected, f"{what}: the data set gives no rows to compare; widen the parameters"
    assert [list(r) for r in actual[:1]] == [list(r) for r in expected[:1]], f"{what}: columns differ"
    diffs = [(i, a, e) for i, (a, e) in enumerate(zip(actual, expected))
             if any(not same(a[k], e[k]) for k in e)]
    assert len(actual) == len(expected) and not diffs, (
        f"{what}: {len(actual)} rows, expected {len(expected)}; first differences: {diffs[:3]}"
        + ("" if diffs else f"; extra/missing: {actual[len(expected):][:3] or expected[len(actual):][:3]}")
    )


@pytest.fixture
def data(ch):  # noqa: F811
    ds = sqlgen.generate()
    ds.load(ch)
    return ds


def run(ch, name: str, params: dict) -> list[dict]:  # noqa: F811
    return ch.run_file(QUERIES / name, params)


def test_every_query_file_is_tested_and_documented(ch):  # noqa: F811
    files = sorted(p.name for p in QUERIES.glob("*.sql"))
    assert files == sorted(TESTED), f"query files without a test (or tests without a file): {set(files) ^ set(TESTED)}"
    for name in files:
        assert TESTED[name] in globals(), f"{name}: {TESTED[name]} is missing"
        text = (QUERIES / name).read_text()
        header = "\n".join(line for line in text.splitlines() if line.startswith("--"))
        body = "\n".join(line for line in text.splitlines() if not line.startswith("--"))
        for part in ("For:", "Reads:", "Parameters:", "Example:", "Columns"):
            assert part in header, f"{name}: header lacks {part!r}"
        assert f"--data-binary @sql/queries/{name}" in header, f"{name}: the example does not run this file"
        for param in set(re.findall(r"\{(\w+):", body)):
            assert f"{{{param}:" in header, f"{name}: parameter {param} is not documented"
            assert f"param_{param}=" in header, f"{name}: the example does not pass param_{param}"
        # The documented example runs as written (here against the empty test database).
        url = re.search(r"'(http://127\.0\.0\.1:8123/\?[^']+)'", header).group(1)
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query, keep_blank_values=True))
        assert query.pop("database") == "journey", name
        ch.execute(text, {k[len("param_"):]: v for k, v in query.items() if k.startswith("param_")},
                   {k: v for k, v in query.items() if not k.startswith("param_")})


def test_events_per_channel_minute(ch, data):  # noqa: F811
    ch.refresh(("events_minute_refresh",))
    base = data.base
    for frm, to, channel, region in [
        (base, base + sqlgen.DAYS * DAY, "", ""),
        (base + 2 * DAY + 3 * HOUR, base + 4 * DAY, "APP", ""),
        (base + 1 * DAY, base + 9 * DAY + 30 * 60_000, "", "north"),
        (base + 5 * DAY, base + 12 * DAY, "CONTACT_CENTRE", "east"),
    ]:
        params = {"from": fmt(frm), "to": fmt(to), "channel": channel, "region": region}
        assert_rows(run(ch, "events_per_channel_minute.sql", params),
                    sqlgen.q_events_per_channel_minute(data, frm, to, channel, region), str(params))


def test_channel_flow(ch, data):  # noqa: F811
    base = data.base
    for frm, to, topic, region, scenario in [
        (base, base + sqlgen.DAYS * DAY, "", "", ""),
        (base + 2 * DAY + 123_456, base + 6 * DAY, "", "", ""),
        (base, base + sqlgen.DAYS * DAY, "billing", "", ""),
        (base, base + sqlgen.DAYS * DAY, "", "north", ""),
        (base, base + sqlgen.DAYS * DAY, "", "", "app_to_call"),
        (base + 3 * DAY, base + 13 * DAY, "network", "south", "repeat_call"),
    ]:
        params = {"from": fmt(frm), "to": fmt(to), "topic": topic, "region": region, "scenario": scenario}
        assert_rows(run(ch, "channel_flow.sql", params),
                    sqlgen.q_channel_flow(data, frm, to, topic, region, scenario), str(params))


def test_top_paths(ch, data):  # noqa: F811
    base = data.base
    for frm, to, topic, region, limit in [
        (base, base + sqlgen.DAYS * DAY, "", "", 1000),
        (base, base + sqlgen.DAYS * DAY, "", "", 7),
        (base + DAY + 17_000, base + 8 * DAY, "roaming", "", 50),
        (base + 4 * DAY, base + 15 * DAY, "", "west", 5),
    ]:
        params = {"from": fmt(frm), "to": fmt(to), "topic": topic, "region": region, "limit": limit}
        assert_rows(run(ch, "top_paths.sql", params),
                    sqlgen.q_top_paths(data, frm, to, topic, region, limit), str(params))


def test_scenario_hit_rates(ch, data):  # noqa: F811
    ch.refresh(("scenario_minute_refresh",))
    base = data.base
    for frm, to, rule, channel, topic, region in [
        (base + 7 * DAY, base + sqlgen.DAYS * DAY, "", "", "", ""),
        (base + 8 * DAY, base + 11 * DAY, "app_to_call", "", "", ""),
        (base + 7 * DAY, base + 14 * DAY, "", "APP", "", ""),
        (base + 9 * DAY, base + 16 * DAY, "", "", "billing", "north"),
    ]:
        params = {"from": fmt(frm), "to": fmt(to), "rule": rule, "channel": channel, "topic": topic, "region": region}
        assert_rows(run(ch, "scenario_hit_rates.sql", params),
                    sqlgen.q_scenario_hit_rates(data, frm, to, rule, channel, topic, region), str(params))


def test_customer_journey(ch, data):  # noqa: F811
    current = {e.event_id: e for e in sqlgen.current_events(data)}
    moved_in = sorted({current[e.event_id].customer for e in data.events if e.customer != current[e.event_id].customer})
    moved_out = sorted({e.customer for e in data.events if e.customer != current[e.event_id].customer})
    no_session_hit = sorted(h.customer for h in sqlgen.current_hits(data) if not h.session_id)
    retracted = sorted(s.customer for s in data.latest_session.values() if s.retracted)
    customers = [data.customers[0], moved_in[0], moved_out[0], no_session_hit[0], retracted[0], data.customers[57]]
    base = data.base
    for customer in customers:
        for frm, to in [(base - DAY, base + 30 * DAY), (base + 3 * DAY + 1, base + 9 * DAY)]:
            params = {"customer": customer, "from": fmt(frm), "to": fmt(to)}
            expected = sqlgen.q_customer_journey(data, customer, frm, to)
            if frm < base:
                assert_rows(run(ch, "customer_journey.sql", params), expected, str(params))
            else:  # a sub-range may hold nothing for this customer
                assert run(ch, "customer_journey.sql", params) == expected, str(params)
    # A customer who never existed has no journey.
    assert run(ch, "customer_journey.sql", {"customer": "nobody", "from": fmt(base), "to": fmt(base + 30 * DAY)}) == []


def churn_params(data, lookback: int) -> tuple[dict, tuple]:
    frm, to, ref = data.base + 9 * DAY, data.base + 15 * DAY, data.base + sqlgen.DAYS * DAY
    params = {"from": fmt_date(frm), "to": fmt_date(to), "reference_date": fmt_date(ref), "lookback_days": lookback}
    return params, (frm, to, ref, lookback)


def test_churn_scenario_exposure(ch, data):  # noqa: F811
    for lookback in (90, 7, 3):
        params, args = churn_params(data, lookback)
        assert_rows(run(ch, "churn_scenario_exposure.sql", params),
                    sqlgen.q_churn_scenario_exposure(data, *args), str(params))


def test_churn_repeat_contact(ch, data):  # noqa: F811
    for lookback, repeat_days in ((90, 7), (7, 2), (90, 0)):
        params, args = churn_params(data, lookback)
        params["repeat_days"] = repeat_days
        expected = sqlgen.q_churn_repeat_contact(data, *args, repeat_days)
        if repeat_days:
            assert any(r["repeat_contacts"] for r in expected), "the data set has no repeat contacts"
        assert_rows(run(ch, "churn_repeat_contact.sql", params), expected, str(params))


def test_churn_left_self_service(ch, data):  # noqa: F811
    for lookback in (90, 7):
        params, args = churn_params(data, lookback)
        assert_rows(run(ch, "churn_left_self_service.sql", params),
                    sqlgen.q_churn_left_self_service(data, *args), str(params))


def test_churn_path_lift(ch, data):  # noqa: F811
    for lookback, min_support, limit in ((90, 1, 1000), (90, 3, 10), (7, 2, 1000)):
        params, args = churn_params(data, lookback)
        params.update(min_support=min_support, limit=limit)
        expected = sqlgen.q_churn_path_lift(data, *args, min_support, limit)
        assert any(r["lift"] is None for r in expected) or min_support > 1
        assert_rows(run(ch, "churn_path_lift.sql", params), expected, str(params))
