"""The request log: one SQLite file the server appends to and `tunekit monitor` reads.

SQLite (standard library) rather than a log shipper: one file that can be copied, queried with any SQLite
tool, and written from many server threads at once. WAL mode lets the monitor read while the server writes.
Every text field is redacted again on write, so PII never reaches the disk even when a caller forgets.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunekit.data.pii import redact_pii
from tunekit.errors import UserError

SCHEMA_VERSION = 1
# Marks the file as ours, so `tunekit monitor some.db` can tell a tunekit log from any other SQLite file.
LOG_KIND = "tunekit-request-log"

# Scalar columns are queryable as such; lists and dicts are stored as JSON text.
_JSON_FIELDS = ("messages", "guard_events", "citations")
_BOOL_FIELDS = ("guard_blocked", "schema_failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    model TEXT NOT NULL,
    key_id TEXT,
    messages TEXT NOT NULL,
    response TEXT,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    status INTEGER NOT NULL,
    error TEXT,
    guard_blocked INTEGER NOT NULL DEFAULT 0,
    guard_events TEXT NOT NULL DEFAULT '[]',
    schema_failed INTEGER NOT NULL DEFAULT 0,
    citations TEXT NOT NULL DEFAULT '[]',
    predicted_label TEXT
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts);
"""


@dataclass
class RequestRecord:
    """One served request, as the server saw it. Texts are PII-redacted (the log redacts again on write)."""

    ts: str  # ISO 8601 UTC, e.g. utc_now()
    endpoint: str  # "/v1/chat/completions" | "/v1/completions"
    model: str  # the requested model/adapter name
    key_id: str | None  # key_id_for(api_key): a short hash, never the key
    messages: list[dict]  # the input turns ({"role", "content"})
    response: str | None  # the output text
    input_tokens: int
    output_tokens: int
    latency_ms: float
    status: int  # HTTP status
    error: str | None = None
    guard_blocked: bool = False
    guard_events: list[dict] = field(default_factory=list)  # {"stage", "policy", "action", "reason"}
    schema_failed: bool = False
    citations: list[dict] = field(default_factory=list)
    predicted_label: str | None = None

    @property
    def failed(self) -> bool:
        return self.status >= 400 or self.guard_blocked or self.schema_failed

    def user_text(self) -> str:
        """The user turns as one text: what drift is measured on (system prompts are shared boilerplate)."""
        return "\n".join(content_text(m.get("content")) for m in self.messages if m.get("role") == "user")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def key_id_for(api_key: str | None) -> str | None:
    """A short, stable id for an API key: enough to tell clients apart, useless for calling the API."""
    if not api_key:
        return None
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:12]


def content_text(content: Any) -> str:
    """Text of a message content: a string, or OpenAI content parts ([{"type": "text", "text": ...}])."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def redact_value(value: Any) -> Any:
    """Redact PII in every string inside `value` (strings, lists and dicts, recursively)."""
    if isinstance(value, str):
        return redact_pii(value)
    if isinstance(value, list):
        return [redact_value(v) for v in value]
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    return value


class RequestLog:
    """Append-only request log in SQLite. Safe to share across threads: writes are serialised by a lock."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # One connection shared under a lock: simpler than one per thread and fast enough for a server
        # whose requests take hundreds of milliseconds each (an insert takes tens of microseconds).
        self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0)
        with self._lock:
            self._check_kind()
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across app crashes
            self._conn.executescript(_SCHEMA)
            self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('kind', ?)", (LOG_KIND,))
            self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            self._conn.commit()

    @classmethod
    def open_existing(cls, path: str | Path) -> RequestLog:
        """Open a log for reading; a missing file or another kind of file is a user error, never created."""
        path = Path(path)
        if not path.is_file():
            raise UserError("request log does not exist", where=str(path),
                            fix="point at the serve.log_db file (default RUN/serve/requests.db)")
        try:
            return cls(path)
        except sqlite3.DatabaseError as exc:
            raise UserError(f"not a tunekit request log ({exc})", where=str(path)) from None

    def _check_kind(self) -> None:
        tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            return  # a new, empty file: ours to initialise
        kind = None
        if "meta" in tables:
            row = self._conn.execute("SELECT value FROM meta WHERE key='kind'").fetchone()
            kind = row[0] if row else None
        if kind != LOG_KIND:
            self._conn.close()
            raise UserError("not a tunekit request log (an SQLite file with other tables)", where=str(self.path))

    def write(self, record: RequestRecord) -> None:
        row = _to_row(record)
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._lock:
            self._conn.execute(f"INSERT INTO requests ({columns}) VALUES ({marks})", tuple(row.values()))
            self._conn.commit()

    def read(self, since: str | None = None) -> list[RequestRecord]:
        """Records in write order; with `since` (ISO 8601), only those at or after it."""
        names = [f.name for f in fields(RequestRecord)]
        query = f"SELECT {', '.join(names)} FROM requests"
        args: tuple[Any, ...] = ()
        if since:
            query += " WHERE ts >= ?"
            args = (since,)
        with self._lock:
            rows = self._conn.execute(query + " ORDER BY id", args).fetchall()
        return [_from_row(dict(zip(names, r))) for r in rows]

    def count(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> RequestLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _to_row(record: RequestRecord) -> dict[str, Any]:
    row = asdict(record)
    for name in ("messages", "response", "error", "guard_events", "citations", "predicted_label"):
        row[name] = redact_value(row[name])
    for name in _JSON_FIELDS:
        row[name] = json.dumps(row[name], ensure_ascii=False)
    for name in _BOOL_FIELDS:
        row[name] = int(bool(row[name]))
    return row


def _from_row(row: dict[str, Any]) -> RequestRecord:
    for name in _JSON_FIELDS:
        row[name] = json.loads(row[name])
    for name in _BOOL_FIELDS:
        row[name] = bool(row[name])
    return RequestRecord(**row)
