"""ClickHouse access for the SQL tests: a tiny HTTP client, a fresh database per test created
by the real `journey migrate`, and a refresh helper for the refreshable rollups.

Needs JOURNEY_TEST_CLICKHOUSE (the server's HTTP URL) and JOURNEY_BIN (the journey binary);
scripts/test.sh sets both. A missing or unreachable one fails the test, it never skips.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
QUERIES = REPO / "sql" / "queries"
MAINTENANCE = REPO / "sql" / "maintenance"
ROLLUP_VIEWS = ("events_minute_refresh", "scenario_minute_refresh", "flow_minute_refresh")


class QueryError(Exception):
    """ClickHouse answered with an error."""


def server_url() -> str:
    url = os.environ.get("JOURNEY_TEST_CLICKHOUSE")
    if not url:
        pytest.fail("JOURNEY_TEST_CLICKHOUSE is not set (scripts/test.sh sets it; e.g. http://127.0.0.1:8123)")
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/ping", timeout=10) as r:
            r.read()
    except OSError as e:
        pytest.fail(f"ClickHouse at {url} is unreachable: {e} (start it with scripts/infra.sh up clickhouse)")
    return url.rstrip("/")


def journey_bin() -> str:
    path = os.environ.get("JOURNEY_BIN")
    if not path or not os.access(path, os.X_OK):
        pytest.fail("JOURNEY_BIN must point at the built journey binary (cargo build -p journey-pipeline --bin journey)")
    return path


class ClickHouse:
    """One database on one server, over HTTP."""

    def __init__(self, url: str, database: str):
        self.url = url
        self.database = database

    def _post(self, body: bytes, params: dict[str, str]) -> bytes:
        q = urllib.parse.urlencode({"database": self.database, **params})
        req = urllib.request.Request(f"{self.url}/?{q}", data=body, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=600) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            raise QueryError(e.read().decode(errors="replace")) from None

    def execute(self, sql: str, params: dict | None = None, settings: dict | None = None) -> bytes:
        """Runs one statement; `params` become param_<name> (ClickHouse query parameters)."""
        args = {f"param_{k}": str(v) for k, v in (params or {}).items()}
        args.update({k: str(v) for k, v in (settings or {}).items()})
        return self._post(sql.encode(), args)

    def rows(self, sql: str, params: dict | None = None, settings: dict | None = None) -> list[dict]:
        """A SELECT's rows as dicts (numbers unquoted)."""
        out = self.execute(
            sql, params,
            {"default_format": "JSONEachRow", "output_format_json_quote_64bit_integers": 0, **(settings or {})},
        )
        return [json.loads(line) for line in out.decode().splitlines() if line]

    def scalar(self, sql: str, params: dict | None = None):
        rows = self.rows(sql, params)
        assert len(rows) == 1, rows
        return next(iter(rows[0].values()))

    def insert(self, table: str, rows: list[dict]) -> None:
        """INSERT ... FORMAT JSONEachRow, one batch."""
        if not rows:
            return
        body = "\n".join(json.dumps(r, separators=(",", ":")) for r in rows).encode()
        self._post(body, {"query": f"INSERT INTO {table} FORMAT JSONEachRow"})

    def run_file(self, path: pathlib.Path, params: dict) -> list[dict]:
        """Runs a documented query file as a client would (curl --data-binary @file)."""
        return self.rows(path.read_text(), params)

    def refresh(self, views=ROLLUP_VIEWS) -> None:
        """Runs each refreshable view once more, starting after everything inserted so far.

        The view also refreshes on its own schedule, and a refresh that is running when the
        caller asks may have started before the caller's last insert: so refresh until one
        that started in a later second than now has succeeded (last_success_time is when the
        last successful refresh started).
        """
        since = self.scalar("SELECT toUnixTimestamp(now())")
        for view in views:
            deadline = time.monotonic() + 120
            while True:
                time.sleep(0.2)
                self.execute(f"SYSTEM REFRESH VIEW {view}")
                self.execute(f"SYSTEM WAIT VIEW {view}")
                state = self.rows(
                    "SELECT toUnixTimestamp(last_success_time) AS started, exception FROM system.view_refreshes "
                    "WHERE database = currentDatabase() AND view = {view:String}",
                    {"view": view},
                )[0]
                if state["exception"]:
                    raise QueryError(f"{view}: {state['exception']}")
                if state["started"] is not None and state["started"] > since:
                    break
                assert time.monotonic() < deadline, f"{view} did not refresh after {since}: {state}"


def statements(sql: str) -> list[str]:
    """A migration's statements, split as `journey migrate` splits them (`;` ends a line)."""
    out, cur = [], ""
    for line in sql.splitlines():
        i = line.find("--")
        code = line[:i] if i >= 0 and "'" not in line[:i] else line
        code = code.rstrip()
        if not code.strip():
            continue
        if code.endswith(";"):
            cur += code[:-1]
            if cur.strip():
                out.append(cur.strip())
            cur = ""
        else:
            cur += code + "\n"
    if cur.strip():
        out.append(cur.strip())
    return out


def checksum(text: str) -> str:
    """The checksum `journey migrate` records (FNV-1a 64 of the file, hex)."""
    h = 0xCBF29CE484222325
    for b in text.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def migrate(database: str, extra_env: dict[str, str] | None = None) -> str:
    """`journey migrate` into `database`; returns its output, logs included (fails the test on an error)."""
    env = {
        **os.environ,
        "JOURNEY__CLICKHOUSE__URL": server_url(),
        "JOURNEY__CLICKHOUSE__DATABASE": database,
        **(extra_env or {}),
    }
    p = subprocess.run([journey_bin(), "migrate"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        pytest.fail(f"journey migrate failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p.stdout + p.stderr


@pytest.fixture
def ch():
    """A fresh database with every migration applied by `journey migrate`; dropped afterwards."""
    url = server_url()
    database = f"sqltest_{uuid.uuid4().hex[:12]}"
    migrate(database)
    db = ClickHouse(url, database)
    try:
        yield db
    finally:
        ClickHouse(url, "default").execute(f"DROP DATABASE IF EXISTS {database} SYNC")
