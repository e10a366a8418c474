"""A record on journey.events.raw decodes with third-party tools (confluent-kafka + fastavro)
using only the .avsc files in schemas/, to the same fields the generator wrote.

Needs the `journey` binary (JOURNEY_BIN) and a Kafka broker (JOURNEY_TEST_KAFKA); a missing
one fails the test, it never skips.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import pathlib
import subprocess
import time
import uuid

import fastavro
from confluent_kafka import Consumer

REPO = pathlib.Path(__file__).resolve().parents[2]
BROKERS = os.environ.get("JOURNEY_TEST_KAFKA", "127.0.0.1:9092")


def journey_bin() -> str:
    path = os.environ.get("JOURNEY_BIN")
    assert path and os.access(path, os.X_OK), "set JOURNEY_BIN to the built journey binary (scripts/test.sh does)"
    return path


def run_journey(args: list[str], env: dict[str, str]) -> None:
    subprocess.run([journey_bin(), *args], cwd=REPO, env={**os.environ, **env}, check=True, timeout=300)


def manifest_id(file: str) -> int:
    manifest = json.loads((REPO / "schemas" / "manifest.json").read_text())
    return next(s["id"] for s in manifest["schemas"] if s["file"] == file)


def to_ms(value) -> int:
    if isinstance(value, dt.datetime):
        return int(value.timestamp() * 1000)
    return int(value)


def test_raw_records_decode_with_fastavro(tmp_path):
    topic = f"t{uuid.uuid4().hex[:10]}.journey.events.raw"
    env = {
        "JOURNEY__KAFKA__BROKERS": BROKERS,
        "JOURNEY__TOPICS__RAW": topic,
        "JOURNEY__TOPICS__DLQ": topic + ".dlq",
        "JOURNEY__TOPICS__SESSIONS": topic + ".sessions",
        "JOURNEY__TOPICS__SCENARIOS": topic + ".scenarios",
        "JOURNEY__TOPICS__LATE": topic + ".late",
        "JOURNEY__GENERATOR__START_MS": "1790000000000",
    }
    common = ["generate", "--events", "400", "--seed", "5", "--customers", "60"]
    run_journey(common, env)
    out = tmp_path / "events.jsonl"
    run_journey([*common, "--output", str(out)], env)
    expected = {}
    for line in out.read_text().splitlines():
        e = json.loads(line)
        expected[e["event_id"]] = e
    assert len(expected) == 400

    schema = fastavro.parse_schema(json.loads((REPO / "schemas" / "ChannelEvent.avsc").read_text()))
    current_id = manifest_id("ChannelEvent.avsc")
    consumer = Consumer(
        {
            "bootstrap.servers": BROKERS,
            "group.id": f"fastavro-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    seen = {}
    deadline = time.time() + 60
    try:
        while len(seen) < len(expected) and time.time() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            value = msg.value()
            assert value[0] == 0, "Confluent magic byte"
            assert int.from_bytes(value[1:5], "big") == current_id
            record = fastavro.schemaless_reader(io.BytesIO(value[5:]), schema)
            seen[record["event_id"]] = (msg.key(), record)
    finally:
        consumer.close()
    assert set(seen) == set(expected)
    for event_id, (key, record) in seen.items():
        e = expected[event_id]
        assert to_ms(record["event_time"]) == e["event_time"]
        assert to_ms(record["ingest_time"]) == e["ingest_time"]
        for field in ("channel", "event_type"):
            assert record[field] == e[field]
        for field in ("customer_id", "msisdn", "app_instance_id", "topic", "outcome", "line", "agent_id", "region"):
            assert record[field] == e.get(field), field
        assert dict(record["attrs"]) == e.get("attrs", {})
        best = next(
            f"{p}:{e[f]}" for f, p in (("customer_id", "c"), ("msisdn", "m"), ("app_instance_id", "a")) if e.get(f)
        )
        assert key.decode() == best, "records are keyed by the best customer identifier"
