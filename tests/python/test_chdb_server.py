"""Black-box tests of scripts/chdb_server.py, the ClickHouse HTTP front over chDB.

Each test talks HTTP to a real server process on a free loopback port with
its own temporary data dir, the way the Rust `clickhouse` crate does.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import lz4.block
import lz4.frame
import pytest
from clickhouse_cityhash.cityhash import CityHash128

REPO = Path(__file__).resolve().parents[2]
SERVER = REPO / "scripts" / "chdb_server.py"


# --- helpers ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Front:
    """A chdb_server.py process and a tiny HTTP client for it."""

    def __init__(self, data_dir: Path, log_path: Path):
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Front":
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER), "--host", "127.0.0.1", "--port", str(self.port),
             "--data-dir", str(self.data_dir), "--log-file", str(self.log_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read().decode()}\n{self.log()}")
            try:
                if self.request("GET", "/ping")[0] == 200:
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"server did not answer /ping in time\n{self.log()}")

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def request(self, method, path, body=None, headers=None, conn=None):
        own = conn is None
        conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {},
                         encode_chunked=bool(headers and headers.get("Transfer-Encoding") == "chunked"))
            resp = conn.getresponse()
            return resp.status, resp.headers, resp.read()
        finally:
            if own:
                conn.close()

    def post(self, sql: str | bytes = b"", **params):
        body = sql.encode() if isinstance(sql, str) else sql
        return self.request("POST", "/?" + urllib.parse.urlencode(params), body)

    def ok(self, sql: str | bytes = b"", **params) -> bytes:
        status, headers, body = self.post(sql, **params)
        assert status == 200, body.decode(errors="replace")
        return body


def native_frame(data: bytes, method: int = 0x82) -> bytes:
    """One block of ClickHouse's compressed framing, as the crate writes it."""
    payload = lz4.block.compress(data, store_size=False) if method == 0x82 else data
    frame = struct.pack("<BII", method, 9 + len(payload), len(data)) + payload
    h = CityHash128(frame)
    return struct.pack("<QQ", h >> 64, h & ((1 << 64) - 1)) + frame


def native_unframe(stream: bytes) -> bytes:
    """Decodes a compress=1 response, checking every block's checksum."""
    out, pos = bytearray(), 0
    while pos < len(stream):
        checksum = stream[pos:pos + 16]
        method, csize, usize = struct.unpack_from("<BII", stream, pos + 16)
        frame = stream[pos + 16:pos + 16 + csize]
        h = CityHash128(frame)
        assert checksum == struct.pack("<QQ", h >> 64, h & ((1 << 64) - 1)), "bad checksum"
        assert method == 0x82
        out += lz4.block.decompress(frame[9:], uncompressed_size=usize)
        pos += 16 + csize
    return bytes(out)


def row_binary(rows) -> bytes:
    """RowBinary for (id UInt32, payload String)."""
    out = bytearray()
    for ident, payload in rows:
        out += struct.pack("<I", ident)
        n = len(payload)
        while True:  # LEB128 length
            byte = n & 0x7F
            n >>= 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                break
        out += payload
    return bytes(out)


TRICKY = [
    (1, b"plain"),
    (2, b"two\n\nblank lines"),
    (3, b"\x00\x00nul\x00bytes\x00"),
    (4, b""),
    (5, b"\r\n\r\n"),
    (6, b"\n\nFORMAT RowBinary\n\n"),
    (7, bytes(range(256))),
    (10, b"\n"),  # id 10 is 0x0a: the data itself starts with a newline
    (32, b" "),  # id 32 is 0x20: the data itself starts with a space
]


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    base = tmp_path_factory.mktemp("front")
    server = Front(base / "data", base / "server.log").start()
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture
def table(front, request):
    name = "t_" + request.node.name.replace("[", "_").replace("]", "_").replace("-", "_")
    front.ok(f"DROP TABLE IF EXISTS {name}")
    front.ok(f"CREATE TABLE {name} (id UInt32, payload String) ENGINE = MergeTree ORDER BY id")
    return name


# --- tests ------------------------------------------------------------------


def test_ping(front):
    assert front.request("GET", "/ping")[::2] == (200, b"Ok.\n")
    assert front.request("GET", "/")[::2] == (200, b"Ok.\n")
    assert front.request("GET", "/nope")[0] == 404


def test_select_tsv(front):
    status, headers, body = front.post("SELECT 1 AS x, 'a\tb' AS s", default_format="TSV")
    assert status == 200
    assert body == b"1\ta\\tb\n"
    assert headers["X-ClickHouse-Format"] == "TSV"
    assert json.loads(headers["X-ClickHouse-Summary"])["result_rows"] == "1"
    # Query text in the URL only, GET, default format TabSeparated.
    status, _, body = front.request("GET", "/?query=" + urllib.parse.quote("SELECT 2+2"))
    assert (status, body) == (200, b"4\n")


def test_select_row_binary_with_names_and_types(front):
    body = front.ok("SELECT toUInt32(7) AS n, 'hi' AS s", default_format="RowBinaryWithNamesAndTypes")
    assert body == b"\x02\x01n\x01s\x06UInt32\x06String" + struct.pack("<I", 7) + b"\x02hi"
    # A FORMAT clause in the query wins over default_format, as in ClickHouse.
    status, headers, body = front.post("SELECT 1 AS x FORMAT JSONEachRow", default_format="RowBinary")
    assert body == b'{"x":1}\n'
    assert headers["X-ClickHouse-Format"] == "JSONEachRow"


def test_url_params_are_escaped_values(front):
    tricky = "it's a \"quote\" ' OR 1=1 -- \\\\ and a tab\\t"
    body = front.ok(
        "SELECT {s:String} AS s, {n:UInt64} AS n, {a:Array(String)} AS a FORMAT JSONEachRow",
        param_s=tricky, param_n="42", param_a="['x','y''z']",
    )
    row = json.loads(body)
    assert row == {"s": "it's a \"quote\" ' OR 1=1 -- \\ and a tab\t", "n": 42, "a": ["x", "y'z"]}


def test_multipart_params_like_the_crate(front):
    boundary = "clickhouse-rs-boundary-abc123"
    fields = [("query", "SELECT {a:UInt8} + 1 AS a, {z:String} AS z"), ("param_a", "41"), ("param_z", "l'ast")]
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields
    ) + f"--{boundary}--\r\n".encode()
    status, _, out = front.request(
        "POST", "/?default_format=JSONEachRow", body,
        {"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert status == 200, out
    assert json.loads(out) == {"a": 42, "z": "l'ast"}


def test_row_binary_insert_keeps_blank_lines_and_nul_bytes(front, table):
    data = row_binary(TRICKY)
    status, headers, body = front.post(data, query=f"INSERT INTO {table} FORMAT RowBinary")
    assert status == 200, body
    assert json.loads(headers["X-ClickHouse-Summary"])["written_rows"] == str(len(TRICKY))
    assert front.ok(f"SELECT id, payload FROM {table} ORDER BY id FORMAT RowBinary") == data


def test_insert_with_query_and_data_in_body(front, table):
    data = row_binary(TRICKY)
    front.ok(f"INSERT INTO {table} (id, payload) FORMAT RowBinary\n".encode() + data)
    front.ok(f"INSERT INTO {table} VALUES (100, 'a\n\nb'), (101, concat('x', 'y'))")
    assert front.ok(f"SELECT id, payload FROM {table} WHERE id < 100 ORDER BY id FORMAT RowBinary") == data
    out = front.ok(f"SELECT payload FROM {table} WHERE id >= 100 ORDER BY id FORMAT JSONEachRow")
    assert [json.loads(line)["payload"] for line in out.splitlines()] == ["a\n\nb", "xy"]


def test_large_chunked_insert_is_not_truncated(front, table):
    rows = [(i, b"\n\n\x00" + i.to_bytes(4, "little") * 5) for i in range(100_000)]
    data = row_binary(rows)
    assert len(data) > 2_000_000
    pieces = [data[i:i + 65_537] for i in range(0, len(data), 65_537)]
    status, _, body = front.request(
        "POST", "/?" + urllib.parse.urlencode({"query": f"INSERT INTO {table} FORMAT RowBinary"}),
        iter(pieces), {"Transfer-Encoding": "chunked"},
    )
    assert status == 200, body
    assert front.ok(f"SELECT id, payload FROM {table} ORDER BY id FORMAT RowBinary") == data


def test_compressed_insert_like_the_crate(front, table):
    """What Insert<T> sends: RowBinaryWithNamesAndTypes, decompress=1, chunked, database param."""
    header = b"\x02\x02id\x07payload\x06UInt32\x06String"
    data = header + row_binary(TRICKY)
    framed = native_frame(data[:40]) + native_frame(data[40:]) + native_frame(b"", 0x02)
    pieces = [framed[i:i + 7] for i in range(0, len(framed), 7)]  # frames split across chunks
    query = f"INSERT INTO {table}(id,payload) FORMAT RowBinaryWithNamesAndTypes"
    status, _, body = front.request(
        "POST", "/?" + urllib.parse.urlencode({"database": "default", "query": query, "decompress": "1"}),
        iter(pieces), {"Transfer-Encoding": "chunked"},
    )
    assert status == 200, body
    assert front.ok(f"SELECT id, payload FROM {table} ORDER BY id FORMAT RowBinary") == row_binary(TRICKY)


def test_compressed_request_and_response(front):
    sql = b"SELECT number, repeat('ab', 10) FROM numbers(100000)"
    expected = front.ok(sql)
    body = front.ok(native_frame(sql), decompress="1", compress="1")
    assert body != expected
    assert native_unframe(body) == expected
    assert len(expected) > 1 << 20  # more than one response block


def test_http_lz4_response_encoding(front):
    """The crate sends Accept-Encoding: lz4 and expects an LZ4 frame back."""
    sql = b"SELECT number FROM numbers(1000)"
    expected = front.ok(sql)
    status, headers, body = front.request("POST", "/", sql, {"Accept-Encoding": "lz4"})
    assert status == 200
    assert headers["Content-Encoding"] == "lz4"
    assert lz4.frame.decompress(body) == expected
    status, headers, body = front.request(
        "POST", "/?enable_http_compression=0", sql, {"Accept-Encoding": "lz4"})
    assert headers.get("Content-Encoding") is None and body == expected


def test_corrupted_compressed_block_is_rejected(front):
    frame = bytearray(native_frame(b"SELECT 1"))
    frame[-1] ^= 0xFF
    status, headers, body = front.post(bytes(frame), decompress="1")
    assert status == 500
    assert headers["X-ClickHouse-Exception-Code"] == "40"
    assert body.startswith(b"Code: 40. DB::Exception: Checksum doesn't match")


def test_chunked_query_body(front):
    pieces = [b"SELECT ", b"40 ", b"+ 2"]
    status, _, body = front.request("POST", "/", iter(pieces), {"Transfer-Encoding": "chunked"})
    assert (status, body) == (200, b"42\n")


def test_keep_alive_reuses_one_connection(front):
    conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=30)
    try:
        assert front.request("POST", "/", b"SELECT 1", conn=conn)[2] == b"1\n"
        sock = conn.sock
        assert front.request("POST", "/", b"SELECT nope_nope", conn=conn)[0] == 404
        assert front.request("POST", "/", iter([b"SELECT 3"]), {"Transfer-Encoding": "chunked"}, conn=conn)[2] == b"3\n"
        assert front.request("GET", "/ping", conn=conn)[2] == b"Ok.\n"
        assert conn.sock is sock
    finally:
        conn.close()


def test_errors_look_like_clickhouse(front):
    status, headers, body = front.post("SELECT * FROM no_such_table")
    assert status == 404
    assert headers["X-ClickHouse-Exception-Code"] == "60"
    assert body.startswith(b"Code: 60. DB::Exception: ") and b"(UNKNOWN_TABLE)" in body

    status, headers, body = front.post("SELEC 1")
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (400, "62")

    status, headers, body = front.post("SELECT throwIf(1, 'boom')")
    assert status == 500
    assert body.startswith(f"Code: {headers['X-ClickHouse-Exception-Code']}. DB::Exception: ".encode())
    assert b"boom" in body

    status, headers, body = front.request("GET", "/?query=" + urllib.parse.quote("CREATE TABLE x (a UInt8) ENGINE = Memory"))
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (500, "164")


def test_bad_insert_data_fails_and_commits_nothing(front, table):
    status, headers, body = front.post(b"\x01\x00", query=f"INSERT INTO {table} FORMAT RowBinary")
    assert status != 200
    assert headers["X-ClickHouse-Exception-Code"] == "33"
    assert front.ok(f"SELECT count() FROM {table}") == b"0\n"


def test_aborted_body_commits_nothing(front, table):
    data = row_binary(TRICKY)
    query = urllib.parse.quote(f"INSERT INTO {table} FORMAT RowBinary")
    with socket.create_connection(("127.0.0.1", front.port)) as s:
        s.sendall(f"POST /?query={query} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data) + 100}\r\n\r\n".encode() + data)
    time.sleep(0.3)
    assert front.ok(f"SELECT count() FROM {table}") == b"0\n"


def test_settings_and_database_apply_to_one_request_only(front):
    q = "SELECT getSetting('max_block_size'), currentDatabase()"
    default = front.ok(q)
    front.ok("CREATE DATABASE IF NOT EXISTS other")
    assert front.ok(q, max_block_size="1234", database="other") == b"1234\tother\n"
    assert front.ok(q) == default
    # Statements that change session state do not leak either.
    front.ok("SET max_block_size = 77")
    front.ok("USE other")
    assert front.ok(q) == default
    # HTTP-only and unknown parameters are accepted.
    front.ok("SELECT 1", wait_end_of_query="1", async_insert="1", session_id="s",
             insert_deduplication_token="tok", no_such_setting_xyz="1", client_protocol_version="54492")
    status, headers, _ = front.post("SELECT 1", database="no_such_db")
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (404, "81")


def test_insert_deduplication_token(front):
    """The sink retries a batch with the same token; MergeTree must drop the repeat."""
    front.ok("DROP TABLE IF EXISTS dedup")
    front.ok("CREATE TABLE dedup (id UInt32) ENGINE = MergeTree ORDER BY id "
             "SETTINGS non_replicated_deduplication_window = 100")
    for token in ("batch-1", "batch-1", "batch-2"):
        front.ok(b"1\n2\n", query="INSERT INTO dedup FORMAT TSV", insert_deduplication_token=token)
    assert front.ok("SELECT count() FROM dedup") == b"4\n"
    assert front.ok("SELECT getSetting('insert_deduplication_token')") == b"\n"


def test_ddl_and_introspection(front, table):
    front.ok(f"INSERT INTO {table} VALUES (1, 'a')")
    front.ok(f"INSERT INTO {table} VALUES (1, 'b')")
    assert front.ok(f"EXISTS TABLE {table}") == b"1\n"
    assert table.encode() in front.ok("SHOW TABLES").split(b"\n")
    front.ok(f"OPTIMIZE TABLE {table} FINAL")
    # What the crate runs before an insert with validation on.
    body = front.ok(f"DESCRIBE TABLE {table}", default_format="RowBinaryWithNamesAndTypes",
                    describe_include_subcolumns="0")
    assert body.startswith(b"\x07\x04name\x04type\x0cdefault_type")
    assert b"\x02id\x06UInt32" in body


def test_data_persists_across_restart_and_dir_is_locked(tmp_path):
    first = Front(tmp_path / "data", tmp_path / "a.log").start()
    try:
        first.ok("CREATE DATABASE journey_test")
        first.ok("CREATE TABLE journey_test.t (id UInt32, payload String) ENGINE = MergeTree ORDER BY id")
        first.ok(row_binary(TRICKY), query="INSERT INTO journey_test.t FORMAT RowBinary")
        second = subprocess.run(
            [sys.executable, str(SERVER), "--port", str(free_port()), "--data-dir", str(tmp_path / "data")],
            capture_output=True, timeout=60,
        )
        assert second.returncode != 0 and b"in use" in second.stderr
    finally:
        assert first.stop() == 0, first.log()
    again = Front(tmp_path / "data", tmp_path / "b.log").start()
    try:
        assert again.ok("SELECT id, payload FROM journey_test.t ORDER BY id FORMAT RowBinary") == row_binary(TRICKY)
    finally:
        assert again.stop() == 0
    # One line per request, no bodies.
    log = first.log()
    assert "INSERT INTO journey_test.t FORMAT RowBinary" in log
    assert "blank lines" not in log
