#!/usr/bin/env python3
"""ClickHouse HTTP interface over chDB, for local development and tests.

No modern clickhouse-server can be installed on the dev machines, but the
engine itself ships in-process as chDB. This front serves the part of
ClickHouse's HTTP protocol that the Rust `clickhouse` crate (0.15) and curl
use, so the pipeline talks to it exactly as it would to a real server:

* `GET|POST /?query=...`, the query in the body, or both (the URL part, a
  newline, then the body: how `INSERT ... FORMAT X` carries binary data);
* `multipart/form-data` bodies with `query` and `param_<name>` fields (what
  the crate sends when a query has server-side parameters);
* `database`, `default_format`, `query_id`, `param_<name>` and ClickHouse
  settings as URL parameters;
* `decompress=1` request bodies and `compress=1` responses in ClickHouse's
  native compressed framing (LZ4 or none, CityHash128 checksums); HTTP
  `Content-Encoding` / `Accept-Encoding` lz4, gzip, deflate and xz;
* `/ping`, errors as `Code: N. DB::Exception: ...` with the
  `X-ClickHouse-Exception-Code` header and ClickHouse's HTTP status mapping.

Guarantees: one chDB session serves all requests and executes them one at
a time; settings and `database` apply to their request only, as on a real
server without `session_id`. An INSERT is committed iff the response is 200:
the whole body is received (spooled to memory or a temp file) before the
data is streamed into chDB's streaming-insert API, so a client that aborts
mid-body commits nothing. Insert data never goes through the SQL text, which
chDB cuts at the first blank line.

Not supported: sessions (`session_id` is ignored), external tables,
multi-statement requests, progress headers.
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import json
import logging
import lzma
import os
import re
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterable, Iterator
from urllib.parse import parse_qsl, urlsplit

import chdb.session
import lz4.block
import lz4.frame
from clickhouse_cityhash.cityhash import CityHash128

try:  # Optional: only needed for zstd-compressed requests or responses.
    import zstandard
except ImportError:  # pragma: no cover - depends on the environment
    zstandard = None

log = logging.getLogger("chdb_server")

# Body bytes kept in memory before spilling to a temp file.
SPOOL_MEMORY_BYTES = 64 << 20
# How much of the request is scanned for the `INSERT ... FORMAT x` head.
SQL_HEAD_BYTES = 1 << 20
# Chunk size used when reading bodies and feeding chDB.
IO_CHUNK = 1 << 20
# ClickHouse's max_compress_block_size: the uncompressed size of one frame.
NATIVE_BLOCK_BYTES = 1 << 20
# A sane cap for one compressed frame (ClickHouse caps at 1 GiB as well).
NATIVE_MAX_FRAME_BYTES = 1 << 30
# Idle keep-alive connections are closed after this long (ClickHouse uses
# 10 s; the crate's pool drops idle connections after 2 s).
KEEP_ALIVE_IDLE_S = 30
# A request whose body stalls this long is abandoned.
REQUEST_IO_TIMEOUT_S = 3600

NATIVE_METHOD_NONE = 0x02
NATIVE_METHOD_LZ4 = 0x82
NATIVE_METHOD_ZSTD = 0x90
UINT64_MASK = (1 << 64) - 1

# URL parameters the HTTP handler consumes itself; never applied as settings.
HTTP_ONLY_PARAMS = frozenset(
    {
        "query", "database", "default_format", "query_id", "user", "password",
        "quota_key", "compress", "decompress", "session_id", "session_timeout",
        "session_check", "role", "buffer_size", "wait_end_of_query",
        "client_protocol_version", "stacktrace", "enable_http_compression",
        "http_zlib_compression_level",
        "http_native_compression_disable_checksumming_on_decompress",
        "send_progress_in_http_headers", "http_headers_progress_interval_ms",
        "http_response_headers", "add_http_cors_header",
    }
)
# Real settings this front deliberately does not apply: inserts are always
# synchronous here (which satisfies async-insert semantics), and `readonly`
# would stop the per-request settings from being reset.
IGNORED_SETTINGS = frozenset(
    {
        "readonly", "async_insert", "wait_for_async_insert",
        "wait_for_async_insert_timeout", "async_insert_deduplicate",
        "async_insert_busy_timeout_ms", "async_insert_max_data_size",
    }
)
# The session's database is tracked separately (see Engine._use_database).
UNTRACKED_SETTINGS = frozenset({"database"})

# exceptionCodeToHTTPStatus in ClickHouse's server, by error name.
_STATUS_BY_ERROR = {
    401: {"REQUIRED_PASSWORD"},
    403: {"UNKNOWN_USER", "WRONG_PASSWORD", "AUTHENTICATION_FAILED", "SET_NON_GRANTED_ROLE", "ACCESS_DENIED"},
    400: {
        "BAD_ARGUMENTS", "CANNOT_COMPILE_REGEXP", "CANNOT_PARSE_TEXT", "CANNOT_PARSE_ESCAPE_SEQUENCE",
        "CANNOT_PARSE_QUOTED_STRING", "CANNOT_PARSE_DATE", "CANNOT_PARSE_DATETIME", "CANNOT_PARSE_NUMBER",
        "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING", "CANNOT_PARSE_IPV4", "CANNOT_PARSE_IPV6",
        "CANNOT_PARSE_INPUT_ASSERTION_FAILED", "CANNOT_PARSE_UUID", "DUPLICATE_COLUMN", "ILLEGAL_COLUMN",
        "UNKNOWN_ELEMENT_IN_AST", "UNKNOWN_TYPE_OF_AST_NODE", "THERE_IS_NO_COLUMN", "TOO_DEEP_AST",
        "TOO_BIG_AST", "UNEXPECTED_AST_STRUCTURE", "SYNTAX_ERROR", "INCORRECT_DATA", "TYPE_MISMATCH",
        "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
    },
    404: {
        "UNKNOWN_TABLE", "UNKNOWN_FUNCTION", "UNKNOWN_IDENTIFIER", "UNKNOWN_TYPE", "UNKNOWN_STORAGE",
        "UNKNOWN_DATABASE", "UNKNOWN_SETTING", "UNKNOWN_DIRECTION_OF_SORTING", "UNKNOWN_AGGREGATE_FUNCTION",
        "UNKNOWN_FORMAT", "UNKNOWN_DATABASE_ENGINE", "UNKNOWN_TYPE_OF_QUERY", "UNKNOWN_ROLE",
    },
    413: {"QUERY_IS_TOO_LARGE"},
    501: {"NOT_IMPLEMENTED"},
    503: {"SOCKET_TIMEOUT", "CANNOT_OPEN_FILE", "CANNOT_SCHEDULE_TASK"},
    411: {"HTTP_LENGTH_REQUIRED"},
    408: {"TIMEOUT_EXCEEDED"},
    415: {"UNSUPPORTED_MEDIA_TYPE"},
}
STATUS_BY_ERROR = {name: status for status, names in _STATUS_BY_ERROR.items() for name in names}

# Codes used by this front itself; replaced at startup by the engine's own
# table (errorCodeToName), these are only the fallback.
ERROR_CODES = {
    "CANNOT_READ_ALL_DATA": 33,
    "CHECKSUM_DOESNT_MATCH": 40,
    "NOT_IMPLEMENTED": 48,
    "SYNTAX_ERROR": 62,
    "UNKNOWN_COMPRESSION_METHOD": 89,
    "READONLY": 164,
    "CANNOT_DECOMPRESS": 271,
    "STD_EXCEPTION": 1001,
}

_CODE_RE = re.compile(r"Code: (\d+)\. ", re.S)
_NAME_RE = re.compile(r"\(([A-Z][A-Z0-9_]*)\)\s*(?:\(version [^)]*\)\s*)?$")
_WORD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_NUMBER_RE = re.compile(r"[0-9][0-9A-Za-z_.]*")
_SETTING_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLAIN_NUMBER_RE = re.compile(r"-?[0-9]+(\.[0-9]+)?")


class ChError(Exception):
    """An error reported to the client the way ClickHouse reports it."""

    def __init__(self, code: int, message: str, name: str | None = None):
        super().__init__(message)
        self.code = code
        self.name = name
        self.message = message

    @classmethod
    def named(cls, name: str, message: str) -> "ChError":
        return cls(ERROR_CODES.get(name, 1001), message, name)

    @classmethod
    def from_engine(cls, exc: BaseException) -> "ChError":
        """Keeps chDB's own `Code: N. DB::Exception: ...` text, minus wrapper prefixes."""
        text = str(exc).strip()
        m = _CODE_RE.search(text)
        if not m:
            return cls.named("STD_EXCEPTION", f"{type(exc).__name__}: {text}")
        name = _NAME_RE.search(text)
        body = text[m.end():]
        if body.startswith("DB::Exception: "):
            body = body[len("DB::Exception: "):]
        return cls(int(m.group(1)), body, name.group(1) if name else None)

    def http_status(self) -> int:
        return STATUS_BY_ERROR.get(self.name or "", 500)

    def text(self) -> str:
        message = self.message
        if self.name and f"({self.name})" not in message:
            message = f"{message} ({self.name})"
        return f"Code: {self.code}. DB::Exception: {message}\n"


# --- SQL scanning -----------------------------------------------------------


@dataclass
class Token:
    kind: str  # word | quoted | string | number | punct
    text: str
    start: int
    end: int
    depth: int


def _skip_quoted(text: str, i: int) -> int:
    """Returns the index just past the quoted literal or identifier at `i`."""
    quote = text[i]
    j = i + 1
    n = len(text)
    while j < n:
        ch = text[j]
        if ch == "\\":
            j += 2
            continue
        if ch == quote:
            if j + 1 < n and text[j + 1] == quote:
                j += 2
                continue
            return j + 1
        j += 1
    return n


def tokens(text: str) -> Iterator[Token]:
    """Lexes just enough SQL to find top-level keywords: skips comments and literals."""
    i, n, depth = 0, len(text), 0
    while i < n:
        ch = text[i]
        if ch in " \t\r\n\f\v":
            i += 1
        elif text.startswith("--", i) or (ch == "#" and text[i + 1:i + 2] in (" ", "!")):
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif ch in "'\"`":
            j = _skip_quoted(text, i)
            yield Token("string" if ch == "'" else "quoted", text[i:j], i, j, depth)
            i = j
        elif ch in "([{":
            depth += 1
            i += 1
        elif ch in ")]}":
            depth -= 1
            i += 1
        elif m := _WORD_RE.match(text, i):
            yield Token("word", m.group(), i, m.end(), depth)
            i = m.end()
        elif m := _NUMBER_RE.match(text, i):
            yield Token("number", m.group(), i, m.end(), depth)
            i = m.end()
        else:
            yield Token("punct", ch, i, i + 1, depth)
            i += 1


def _identifier(tok: Token) -> str | None:
    if tok.kind == "word":
        return tok.text
    if tok.kind == "quoted" and len(tok.text) >= 2:
        return tok.text[1:-1]
    return None


@dataclass
class InsertHead:
    """`INSERT INTO t (cols) [SETTINGS ...]` and where its inline data starts."""

    sql: str
    fmt: str
    data_offset: int


def parse_insert(text: str) -> InsertHead | None:
    """Splits `INSERT ... FORMAT f <data>` / `INSERT ... VALUES <data>`.

    Returns None for anything else (INSERT ... SELECT included), and for a
    head that is not complete within `text`. Data starts where ClickHouse's
    parser starts it: after spaces/tabs and at most one line break.
    """
    toks = tokens(text)
    first = next(toks, None)
    if first is None or first.kind != "word" or first.text.upper() != "INSERT":
        return None
    # The target comes right after INSERT [INTO] [TABLE | FUNCTION]; keywords
    # count only after it, so a table called `format` is not a keyword.
    target_seen = False
    for tok in toks:
        if not target_seen:
            if tok.kind == "word" and tok.text.upper() in ("INTO", "TABLE", "FUNCTION"):
                continue
            target_seen = True
            continue
        if tok.depth != 0 or tok.kind != "word" or text[tok.start - 1:tok.start] == ".":
            continue
        keyword = tok.text.upper()
        if keyword == "FORMAT":
            name_tok = next(toks, None)
            fmt = _identifier(name_tok) if name_tok else None
            if not fmt:
                return None
            pos = name_tok.end
            while pos < len(text) and text[pos] in " \t\f":
                pos += 1
            if text[pos:pos + 1] == "\r":
                pos += 1
            if text[pos:pos + 1] == "\n":
                pos += 1
            return InsertHead(text[:tok.start], fmt, pos)
        if keyword == "VALUES":
            return InsertHead(text[:tok.start], "Values", tok.end)
        if keyword in ("SELECT", "WITH", "FROM"):
            return None
    return None


def first_keyword(text: str) -> str:
    tok = next(tokens(text), None)
    return tok.text.upper() if tok is not None and tok.kind == "word" else ""


def output_format(text: str, known: frozenset[str]) -> str | None:
    """The `FORMAT x` clause of a query, if it has one at top level."""
    found = None
    toks = tokens(text)
    for tok in toks:
        if tok.depth == 0 and tok.kind == "word" and tok.text.upper() == "FORMAT":
            name_tok = next(toks, None)
            name = _identifier(name_tok) if name_tok else None
            if name and name.lower() in known:
                found = name
    return found


def short_sql(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def quote_literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def setting_literal(value: str) -> str:
    return value if _PLAIN_NUMBER_RE.fullmatch(value) else quote_literal(value)


# --- compression ------------------------------------------------------------


def native_checksum(header_and_data: bytes) -> bytes:
    # ClickHouse stores CityHash128 v1.0.2 as (first, second) little-endian
    # words; this binding's integer holds them the other way round
    # (checked against clickhouse-server 18.16's decompress=1).
    h = CityHash128(header_and_data)
    return struct.pack("<QQ", h >> 64, h & UINT64_MASK)


def native_compress(data: bytes, block: int = NATIVE_BLOCK_BYTES) -> bytes:
    """Frames `data` as ClickHouse's compressed stream (`compress=1`), LZ4 blocks."""
    out = bytearray()
    for off in range(0, len(data), block):
        piece = data[off:off + block]
        compressed = lz4.block.compress(piece, store_size=False)
        frame = struct.pack("<BII", NATIVE_METHOD_LZ4, 9 + len(compressed), len(piece)) + compressed
        out += native_checksum(frame)
        out += frame
    return bytes(out)


class NativeDecoder:
    """Incrementally undoes ClickHouse's compressed framing (`decompress=1`)."""

    def __init__(self, verify_checksums: bool = True):
        self.buf = bytearray()
        self.verify = verify_checksums

    def feed(self, data: bytes) -> Iterator[bytes]:
        self.buf += data
        while len(self.buf) >= 25:
            method = self.buf[16]
            compressed_size, size = struct.unpack_from("<II", self.buf, 17)
            if compressed_size < 9 or compressed_size > NATIVE_MAX_FRAME_BYTES or size > NATIVE_MAX_FRAME_BYTES:
                raise ChError.named(
                    "CANNOT_DECOMPRESS",
                    f"Too large size_compressed_without_checksum: {compressed_size}. "
                    f"Most likely corrupted data",
                )
            total = 16 + compressed_size
            if len(self.buf) < total:
                return
            checksum = bytes(self.buf[:16])
            frame = bytes(self.buf[16:total])
            del self.buf[:total]
            if self.verify and native_checksum(frame) != checksum:
                raise ChError.named(
                    "CHECKSUM_DOESNT_MATCH",
                    f"Checksum doesn't match: corrupted data. Reference: {checksum.hex()}. "
                    f"Actual: {native_checksum(frame).hex()}. Size of compressed block: {compressed_size}",
                )
            yield self._decompress(method, frame[9:], size)

    @staticmethod
    def _decompress(method: int, payload: bytes, size: int) -> bytes:
        try:
            if method == NATIVE_METHOD_LZ4:
                out = lz4.block.decompress(payload, uncompressed_size=size)
            elif method == NATIVE_METHOD_NONE:
                out = payload
            elif method == NATIVE_METHOD_ZSTD and zstandard is not None:
                out = zstandard.ZstdDecompressor().decompress(payload, max_output_size=size)
            else:
                raise ChError.named("UNKNOWN_COMPRESSION_METHOD", f"Unknown compression method: {method:#x}")
        except ChError:
            raise
        except Exception as e:
            raise ChError.named("CANNOT_DECOMPRESS", f"Cannot decompress block: {e}") from e
        if len(out) != size:
            raise ChError.named("CANNOT_DECOMPRESS", f"Decompressed {len(out)} bytes, expected {size}")
        return out

    def finish(self) -> None:
        if self.buf:
            raise ChError.named(
                "CANNOT_READ_ALL_DATA",
                f"Cannot read all data: {len(self.buf)} trailing bytes of an incomplete compressed block",
            )


def http_decoder(encoding: str):
    """A streaming decompressor for a request's Content-Encoding, or None for identity."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj()
    if encoding == "xz":
        return lzma.LZMADecompressor()
    if encoding == "lz4":
        return lz4.frame.LZ4FrameDecompressor()
    if encoding == "zstd" and zstandard is not None:
        return zstandard.ZstdDecompressor().decompressobj()
    raise ChError.named("UNKNOWN_COMPRESSION_METHOD", f"Unknown Content-Encoding of HTTP request: {encoding}")


def http_encode(data: bytes, accept_encoding: str) -> tuple[bytes, str | None]:
    """Compresses a response with the first encoding the client accepts that we support."""
    for item in accept_encoding.split(","):
        enc = item.split(";")[0].strip().lower()
        if enc == "lz4":
            return lz4.frame.compress(data, block_linked=False), "lz4"
        if enc in ("gzip", "x-gzip"):
            return gzip.compress(data, compresslevel=3), enc
        if enc == "deflate":
            return zlib.compress(data, 3), enc
        if enc == "xz":
            return lzma.compress(data, preset=1), enc
        if enc == "zstd" and zstandard is not None:
            return zstandard.ZstdCompressor(level=3).compress(data), enc
    return data, None


def content_type_for(fmt: str) -> str:
    f = fmt.lower()
    if f.startswith(("tabseparated", "tsv")):
        return "text/tab-separated-values; charset=UTF-8"
    if f.startswith("csv"):
        return "text/csv; charset=UTF-8"
    if f in ("jsoneachrow", "jsonlines", "ndjson", "jsoncompacteachrow", "jsonstringseachrow"):
        return "application/x-ndjson; charset=UTF-8"
    if f.startswith("json"):
        return "application/json; charset=UTF-8"
    if f.startswith(("pretty", "vertical", "markdown", "values", "template", "xml", "prometheus")):
        return "text/plain; charset=UTF-8"
    return "application/octet-stream"


def parse_multipart(body: bytes, content_type: str) -> list[tuple[str, str]]:
    """Form fields of a multipart/form-data body (how the crate sends param_*)."""
    msg = Message()
    msg["content-type"] = content_type
    boundary = msg.get_param("boundary")
    if not boundary:
        raise ChError.named("BAD_ARGUMENTS", "multipart/form-data request without a boundary")
    delimiter = b"--" + str(boundary).encode()
    fields = []
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--"):
            break
        if part.startswith(b"\r\n"):
            part = part[2:]
        head, sep, value = part.partition(b"\r\n\r\n")
        if not sep:
            raise ChError.named("BAD_ARGUMENTS", "malformed multipart/form-data part")
        if value.endswith(b"\r\n"):
            value = value[:-2]
        disposition = Message()
        for line in head.decode("utf-8", "replace").split("\r\n"):
            if ":" in line:
                key, _, val = line.partition(":")
                disposition[key.strip()] = val.strip()
        name = disposition.get_param("name", header="content-disposition")
        if disposition.get_param("filename", header="content-disposition") is not None:
            raise ChError.named("NOT_IMPLEMENTED", "external tables are not supported by the chDB front")
        if name:
            fields.append((str(name), value.decode("utf-8", "replace")))
    return fields


# --- engine -----------------------------------------------------------------


@dataclass
class Outcome:
    """What a statement produced: output bytes and the numbers for X-ClickHouse-Summary."""

    body: bytes = b""
    read_rows: int = 0
    read_bytes: int = 0
    written_rows: int = 0
    written_bytes: int = 0
    result_rows: int = 0
    elapsed_ns: int = 0

    def summary(self) -> str:
        return json.dumps(
            {
                "read_rows": str(self.read_rows),
                "read_bytes": str(self.read_bytes),
                "written_rows": str(self.written_rows),
                "written_bytes": str(self.written_bytes),
                "total_rows_to_read": str(self.read_rows),
                "result_rows": str(self.result_rows),
                "result_bytes": str(len(self.body)),
                "elapsed_ns": str(self.elapsed_ns),
            },
            separators=(",", ":"),
        )


@dataclass
class RequestContext:
    """Per-request state applied to the shared session around one statement."""

    database: str = "default"
    settings: list[tuple[str, str]] = field(default_factory=list)


class Engine:
    """One chDB session, used by one request at a time."""

    def __init__(self, data_dir: str):
        self.lock = threading.Lock()
        self.session = chdb.session.Session(data_dir)
        self.current_db: str | None = None
        self.version = self._scalar("SELECT version()")
        self.timezone = self._scalar("SELECT timezone()")
        self.known_settings = frozenset(self._column("SELECT name FROM system.settings"))
        self.output_formats = frozenset(
            n.lower() for n in self._column("SELECT name FROM system.formats WHERE is_output")
        )
        self.http_compression_default = self._scalar(
            "SELECT value FROM system.settings WHERE name = 'enable_http_compression'"
        ) not in ("0", "false")
        for line in self._column("SELECT toString(number) || ' ' || errorCodeToName(number) FROM numbers(2000)"):
            code, _, name = line.partition(" ")
            if name:
                ERROR_CODES[name] = int(code)
        self.baseline = self._changed_settings()

    def close(self) -> None:
        self.session.close()

    # Raw helpers, called with the lock held or before serving starts.
    def _raw(self, sql: str, fmt: str = "TabSeparated"):
        try:
            return self.session.query(sql, fmt)
        except Exception as e:
            raise ChError.from_engine(e) from None

    def _column(self, sql: str) -> list[str]:
        out = self._raw(sql, "JSONCompactEachRow").bytes().decode()
        return [json.loads(line)[0] for line in out.splitlines() if line]

    def _scalar(self, sql: str) -> str:
        values = self._column(sql)
        return values[0] if values else ""

    def _changed_settings(self) -> dict[str, str]:
        out = self._raw(
            "SELECT name, value FROM system.settings WHERE changed", "JSONCompactEachRow"
        ).bytes().decode()
        pairs = (json.loads(line) for line in out.splitlines() if line)
        return {name: value for name, value in pairs if name not in UNTRACKED_SETTINGS}

    def classify_mutating(self, sql: str) -> bool:
        with self.lock:
            try:
                klass = self.session._conn._conn.classify_query(sql)["query_class"]
            except Exception:
                return False
        return klass.name in ("MUTATING", "MUTATING_GLOBAL")

    def _use_database(self, database: str) -> None:
        if database != self.current_db:
            self.current_db = None
            self._raw(f"USE {quote_identifier(database)}")
            self.current_db = database

    def _apply_settings(self, settings: list[tuple[str, str]]) -> list[str]:
        applied: dict[str, str] = {}
        for name, value in settings:
            if name in self.known_settings and name not in UNTRACKED_SETTINGS:
                applied[name] = value
            else:
                log.info("ignored setting %s (not applied by the chDB front)", name)
        if applied:
            self._raw("SET " + ", ".join(f"{n} = {setting_literal(v)}" for n, v in applied.items()))
        return list(applied)

    def _reset_settings(self, names: Iterable[str]) -> None:
        parts = [
            f"{n} = {setting_literal(self.baseline[n])}" if n in self.baseline else f"{n} = DEFAULT"
            for n in names
        ]
        if parts:
            self._raw("SET " + ", ".join(parts))

    def _reset_all_settings(self) -> None:
        now = self._changed_settings()
        changed = [n for n, v in now.items() if self.baseline.get(n) != v]
        changed += [n for n in self.baseline if n not in now]
        self._reset_settings(changed)

    def _run(self, ctx: RequestContext, statement_kind: str, action):
        """Runs `action` with the request's database and settings, then undoes them."""
        with self.lock:
            applied: list[str] = []
            try:
                self._use_database(ctx.database)
                applied = self._apply_settings(ctx.settings)
                return action()
            finally:
                try:
                    if statement_kind == "SET":
                        self._reset_all_settings()
                    else:
                        self._reset_settings(applied)
                    if statement_kind == "USE":
                        self.current_db = None
                except ChError as e:  # pragma: no cover - would mean a broken session
                    log.error("could not reset session state: %s", e.text().strip())
                    self.current_db = None

    def query(self, ctx: RequestContext, sql: str, fmt: str, params: dict[str, str]) -> Outcome:
        def action() -> Outcome:
            try:
                res = self.session.query(sql, fmt, params=params)
            except Exception as e:
                raise ChError.from_engine(e) from None
            return Outcome(
                body=res.bytes(),
                read_rows=_stat(res, "storage_rows_read"),
                read_bytes=_stat(res, "storage_bytes_read"),
                written_rows=_stat(res, "rows_written"),
                written_bytes=_stat(res, "bytes_written"),
                result_rows=_stat(res, "rows_read"),
                elapsed_ns=int(_stat(res, "elapsed", 0.0) * 1e9),
            )

        return self._run(ctx, first_keyword(sql), action)

    def insert(self, ctx: RequestContext, head: str, fmt: str, chunks: Iterable[bytes]) -> Outcome:
        def action() -> Outcome:
            try:
                inserter = self.session.send_insert(head, fmt)
            except Exception as e:
                raise ChError.from_engine(e) from None
            try:
                for chunk in chunks:
                    if chunk:
                        inserter.append(chunk)
                res = inserter.finish()
            except BaseException as e:
                try:
                    inserter.cancel()
                except Exception:
                    pass
                if isinstance(e, ChError):
                    raise
                if isinstance(e, Exception):
                    raise ChError.from_engine(e) from None
                raise
            return Outcome(
                written_rows=res.rows_written,
                written_bytes=res.bytes_written,
                elapsed_ns=int(res.elapsed * 1e9),
            )

        return self._run(ctx, "INSERT", action)


def _stat(res, name: str, default=0):
    getter = getattr(res, name, None)
    try:
        return getter() if getter else default
    except Exception:
        return default


# --- HTTP -------------------------------------------------------------------


class ClientGone(Exception):
    """The client closed the connection or sent a malformed body."""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "chdb-front"
    server: "Server"

    def version_string(self) -> str:
        return self.server_version

    def handle_one_request(self) -> None:
        # Same as the stdlib's, with a short timeout while idle between
        # requests and a long one once a request has started.
        try:
            self.connection.settimeout(KEEP_ALIVE_IDLE_S)
            self.raw_requestline = self.rfile.readline(65537)
            self.connection.settimeout(REQUEST_IO_TIMEOUT_S)
            if len(self.raw_requestline) > 65536:
                self.requestline = self.request_version = self.command = ""
                self.send_error(414)
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return
            method = getattr(self, "do_" + self.command, None)
            if method is None:
                self.send_error(501, f"Unsupported method ({self.command!r})")
                return
            method()
            self.wfile.flush()
        except (TimeoutError, socket.timeout, ConnectionError):
            self.close_connection = True

    def log_request(self, code="-", size="-") -> None:
        pass  # one line per request is logged by _handle instead

    def log_error(self, format: str, *args) -> None:
        log.warning("%s %s", self.client_address[0], format % args)

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        path = urlsplit(self.path).path
        status = 200 if path in ("/", "/ping", "/replicas_status") else 404
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=UTF-8")
        self.send_header("Content-Length", "4" if status == 200 else "0")
        self.end_headers()

    # Body handling.
    def _raw_body(self) -> Iterator[bytes]:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline(1024)
                if not line.endswith(b"\n"):
                    raise ClientGone("connection closed inside a chunked body")
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise ClientGone(f"bad chunk size line {line[:40]!r}") from None
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                while size:
                    data = self.rfile.read(min(size, IO_CHUNK))
                    if not data:
                        raise ClientGone("connection closed inside a chunk")
                    size -= len(data)
                    yield data
                if self.rfile.readline(3) not in (b"\r\n", b"\n"):
                    raise ClientGone("chunk not followed by CRLF")
        else:
            try:
                remaining = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                raise ClientGone("bad Content-Length") from None
            while remaining > 0:
                data = self.rfile.read(min(remaining, IO_CHUNK))
                if not data:
                    raise ClientGone("connection closed before the body was complete")
                remaining -= len(data)
                yield data

    def _read_body(self, decompress: bool, verify_checksums: bool) -> tempfile.SpooledTemporaryFile:
        """Reads the whole body, undoing HTTP and native compression, into a spool."""
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)
        decoder = http_decoder(self.headers.get("Content-Encoding", ""))
        native = NativeDecoder(verify_checksums) if decompress else None
        self.body_consumed = False
        for raw in self._raw_body():
            self.bytes_in += len(raw)
            pieces = [decoder.decompress(raw)] if decoder is not None else [raw]
            for piece in pieces:
                for out in native.feed(piece) if native else (piece,):
                    spool.write(out)
        self.body_consumed = True
        if decoder is not None and hasattr(decoder, "flush"):
            for out in native.feed(decoder.flush()) if native else (decoder.flush(),):
                spool.write(out)
        if native:
            native.finish()
        spool.seek(0)
        return spool

    def _drain_body(self) -> None:
        try:
            for _ in self._raw_body():
                pass
        except ClientGone:
            self.close_connection = True

    # Request handling.
    def _handle(self) -> None:
        started = time.monotonic()
        self.bytes_in = 0
        self.body_consumed = False
        url = urlsplit(self.path)
        params: dict[str, str] = {}
        ordered: list[tuple[str, str]] = []
        for k, v in parse_qsl(url.query, keep_blank_values=True):
            params[k] = v
            ordered.append((k, v))
        query_id = params.get("query_id") or str(uuid.uuid4())
        status = 200
        self.sql_for_log = ""
        try:
            if url.path in ("/ping", "/replicas_status") or (
                url.path == "/" and self.command == "GET" and "query" not in params
                and not self.headers.get("Content-Length") and not self.headers.get("Transfer-Encoding")
            ):
                self._drain_body()
                self._send(200, b"Ok.\n", [("Content-Type", "text/plain; charset=UTF-8")])
                return
            if url.path != "/":
                self._drain_body()
                status = 404
                self._send(404, f"There is no handle {url.path}\n\nUse / or /ping for health checks.\n".encode(),
                           [("Content-Type", "text/plain; charset=UTF-8")])
                return
            status = self._execute(params, ordered, query_id)
        except ChError as e:
            status = e.http_status()
            if not self.body_consumed:
                self.close_connection = True
            self._send_error(e, query_id)
        except ClientGone as e:
            status = 0
            self.close_connection = True
            log.warning("%s %s aborted: %s", self.client_address[0], self.command, e)
        except (ConnectionError, TimeoutError, socket.timeout):
            status = 0
            self.close_connection = True
        except Exception as e:  # a bug here must not take the server down
            log.exception("internal error")
            status = 500
            self.close_connection = True
            self._send_error(ChError.named("STD_EXCEPTION", f"{type(e).__name__}: {e}"), query_id)
        finally:
            log.info(
                "%s %s %s %.1fms in=%dB out=%dB qid=%s %s",
                self.client_address[0], self.command, status or "aborted",
                (time.monotonic() - started) * 1000, self.bytes_in, getattr(self, "bytes_out", 0),
                query_id, json.dumps(short_sql(self.sql_for_log), ensure_ascii=False),
            )

    def _execute(self, params: dict[str, str], ordered: list[tuple[str, str]], query_id: str) -> int:
        engine = self.server.engine
        spool = self._read_body(
            decompress=params.get("decompress", "0") not in ("0", "", "false"),
            verify_checksums=params.get("http_native_compression_disable_checksumming_on_decompress", "0")
            in ("0", "", "false"),
        )
        with spool:
            content_type = self.headers.get("Content-Type", "")
            if content_type.lower().startswith("multipart/form-data"):
                for k, v in parse_multipart(spool.read(), content_type):
                    params[k] = v
                    ordered.append((k, v))
                spool.seek(0)
                spool.truncate()

            ctx = RequestContext(database=params.get("database") or "default")
            sql_params: dict[str, str] = {}
            for k, v in ordered:
                if k.startswith("param_"):
                    sql_params[k[len("param_"):]] = params[k]
                elif k not in HTTP_ONLY_PARAMS and k not in IGNORED_SETTINGS and _SETTING_NAME_RE.fullmatch(k):
                    ctx.settings.append((k, params[k]))
            ctx.settings = list(dict(ctx.settings).items())

            query_param = params.get("query", "")
            prefix = (query_param + "\n").encode() if query_param else b""
            head = prefix + spool.read(SQL_HEAD_BYTES)
            if not head.strip():
                raise ChError.named("SYNTAX_ERROR", "Empty query")
            head_text = head.decode("latin-1")  # byte offsets == str offsets
            ins = parse_insert(head_text)

            if ins is not None:
                sql_text = ins.sql.encode("latin-1").decode("utf-8", "replace")
                self.sql_for_log = f"{sql_text.strip()} FORMAT {ins.fmt}"
                if self.command == "GET":
                    raise self._readonly_error()

                def chunks() -> Iterator[bytes]:
                    yield head[ins.data_offset:]
                    while data := spool.read(IO_CHUNK):
                        yield data

                outcome = engine.insert(ctx, sql_text, ins.fmt, chunks())
                fmt = None
            else:
                sql = (head + spool.read()).decode("utf-8", "replace")
                self.sql_for_log = sql
                if self.command == "GET" and engine.classify_mutating(sql):
                    raise self._readonly_error()
                default_fmt = params.get("default_format") or "TabSeparated"
                fmt = output_format(sql, engine.output_formats) or default_fmt
                outcome = engine.query(ctx, sql, default_fmt, sql_params)

        body = outcome.body
        headers = [
            ("X-ClickHouse-Query-Id", query_id),
            ("X-ClickHouse-Summary", outcome.summary()),
            ("X-ClickHouse-Timezone", engine.timezone),
            ("X-ClickHouse-Server-Display-Name", "chdb-front"),
        ]
        if fmt is not None:
            headers.append(("X-ClickHouse-Format", fmt))
            headers.append(("Content-Type", content_type_for(fmt)))
        else:
            headers.append(("Content-Type", "text/plain; charset=UTF-8"))
        if params.get("compress", "0") not in ("0", "", "false"):
            body = native_compress(body)
        enable_http = params.get("enable_http_compression")
        if (engine.http_compression_default if enable_http is None else enable_http not in ("0", "false")):
            body, encoding = http_encode(body, self.headers.get("Accept-Encoding", ""))
            if encoding:
                headers.append(("Content-Encoding", encoding))
        self._send(200, body, headers)
        return 200

    def _readonly_error(self) -> ChError:
        return ChError.named(
            "READONLY",
            "Cannot execute query in readonly mode. For queries over HTTP, method GET implies readonly. "
            "You should use method POST for modifying queries",
        )

    def _send_error(self, e: ChError, query_id: str) -> None:
        self._send(
            e.http_status(),
            e.text().encode(),
            [
                ("Content-Type", "text/plain; charset=UTF-8"),
                ("X-ClickHouse-Exception-Code", str(e.code)),
                ("X-ClickHouse-Query-Id", query_id),
                ("X-ClickHouse-Server-Display-Name", "chdb-front"),
            ],
        )

    def _send(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        else:
            self.send_header("Keep-Alive", f"timeout={KEEP_ALIVE_IDLE_S}")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.bytes_out = len(body)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], engine: Engine):
        super().__init__(address, Handler)
        self.engine = engine


def lock_data_dir(data_dir: str):
    """Holds an exclusive lock on the data dir for the life of the process."""
    os.makedirs(data_dir, exist_ok=True)
    handle = open(os.path.join(data_dir, ".chdb_server.lock"), "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        sys.exit(f"chdb_server: data dir {data_dir} is in use by pid {holder}")
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ClickHouse HTTP interface over chDB")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8123, help="HTTP port")
    parser.add_argument("--data-dir", required=True, help="chDB data directory (one process per dir)")
    parser.add_argument("--log-file", help="append logs here instead of stderr")
    args = parser.parse_args(argv)

    handler = logging.FileHandler(args.log_file) if args.log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)

    data_dir = os.path.abspath(args.data_dir)
    lock = lock_data_dir(data_dir)
    engine = Engine(data_dir)
    server = Server((args.host, args.port), engine)

    def stop(signum, _frame):
        log.info("signal %d: shutting down", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info(
        "chDB %s front listening on http://%s:%d data-dir=%s pid=%d",
        engine.version, args.host, server.server_address[1], data_dir, os.getpid(),
    )
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        # Let a statement in flight finish before closing the session.
        if engine.lock.acquire(timeout=30):
            engine.close()
        lock.close()
        log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
