"""The request log: one SQLite file the server appends to and `tunekit monitor` reads.

SQLite (standard library) rather than a log shipper: one file that can be copied, queried with any SQLite
tool, and written from many server threads at once. WAL mode lets the monitor read while the server writes.
Every text field is redacted again on write, so PII never reaches the disk even when a caller forgets.
Retention (`prune`) deletes rows by age and by size, a batch at a time, and hands freed pages back to the disk.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta, timezone
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

# Retention deletes this many rows per transaction, so the write lock (held against other writers of the file)
# and our connection lock (held against in-process readers) are each released every few milliseconds.
DELETE_BATCH = 1000
# Pages (4 KiB by default) handed back to the file system per incremental_vacuum step, for the same reason.
RECLAIM_PAGES = 2048
# Over the size cap, rows are deleted down to this share of it: pruning to just under the cap would delete a
# few rows again at every check; this way a prune happens once per ~10% of the cap written.
SIZE_TARGET = 0.9
# After a checkpoint the WAL file is cut back to this size; without a limit it keeps its largest size forever.
WAL_LIMIT_BYTES = 64 * 1024 * 1024

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


@dataclass(frozen=True)
class Retention:
    """How much of the log to keep; None means no limit of that kind."""

    max_age_days: float | None = None
    max_bytes: int | None = None


@dataclass
class Pruned:
    """What one retention pass did."""

    too_old: int = 0  # rows deleted for their age
    over_size: int = 0  # rows deleted (oldest first) to get under the size cap
    pages_freed: int = 0  # pages given back to the file system

    @property
    def rows(self) -> int:
        return self.too_old + self.over_size


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
            # Space freed by deleted rows is only returned to the disk in auto_vacuum mode, which must be chosen
            # before the first table exists (a no-op on an existing file). INCREMENTAL rather than FULL: FULL
            # moves pages on every commit, adding I/O to each insert; INCREMENTAL frees them when retention asks
            # (reclaim_space), in small steps. A plain VACUUM would rewrite the whole file, needing twice its
            # size on disk and holding the write lock for seconds per GB. Files made before this setting keep
            # auto_vacuum NONE: their freed pages are reused by new rows, so the file stops growing at the cap
            # but does not shrink (run `sqlite3 FILE "PRAGMA auto_vacuum=INCREMENTAL; VACUUM"` offline once).
            self._conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
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

    def stored_bytes(self) -> int:
        """Bytes the rows and indexes occupy: the file's pages less the free ones (the file can be larger until
        freed pages are reclaimed, and in a file without auto_vacuum it never shrinks)."""
        with self._lock:
            pages, free, size = (self._conn.execute(f"PRAGMA {name}").fetchone()[0]
                                 for name in ("page_count", "freelist_count", "page_size"))
        return (pages - free) * size

    def prune(self, retention: Retention, now: datetime | None = None) -> Pruned:
        """Delete rows older than `retention.max_age_days`, then the oldest rows while the log is larger than
        `retention.max_bytes`, then give the freed pages back to the disk. Cheap when nothing is due: an indexed
        lookup and a few pragmas."""
        pruned = Pruned()
        if retention.max_age_days is not None:
            cutoff = (now or datetime.now(timezone.utc)) - timedelta(days=retention.max_age_days)
            pruned.too_old = self.delete_before(cutoff.isoformat(timespec="milliseconds"))
        if retention.max_bytes is not None and self.stored_bytes() > retention.max_bytes:
            pruned.over_size = self.delete_oldest_until(int(retention.max_bytes * SIZE_TARGET))
        pruned.pages_freed = self.reclaim_space()
        return pruned

    def delete_before(self, ts: str) -> int:
        """Delete the rows logged before `ts` (ISO 8601 UTC, as utc_now writes it), a batch at a time."""
        deleted = 0
        while done := self._delete("SELECT id FROM requests WHERE ts < ? LIMIT ?", (ts, DELETE_BATCH)):
            deleted += done
        return deleted

    def delete_oldest_until(self, max_bytes: int) -> int:
        """Delete the oldest rows, a batch at a time, until the rows and indexes take at most `max_bytes`."""
        deleted = 0
        while (excess := self.stored_bytes() - max_bytes) > 0:
            batch = min(DELETE_BATCH, self._rows_holding(excess))
            done = self._delete("SELECT id FROM requests ORDER BY id LIMIT ?", (batch,))
            if not done:
                break  # the table is empty: what is left is the schema itself
            deleted += done
        return deleted

    def reclaim_space(self) -> int:
        """Give free pages back to the file system, a step at a time; returns how many. Only auto_vacuum=INCREMENTAL
        files can (see __init__); in others the free pages stay and are reused by new rows."""
        freed = 0
        while True:
            with self._lock:
                before = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
                if before:
                    # executescript, not execute: execute steps the pragma once, and each step frees one page.
                    self._conn.executescript(f"PRAGMA incremental_vacuum({RECLAIM_PAGES})")
                after = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
            freed += before - after
            if after == 0 or after == before:
                break
        if freed:
            with self._lock:  # the file is cut at a checkpoint; PASSIVE waits for no reader or writer
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        return freed

    def _rows_holding(self, excess: int) -> int:
        """About how many of the oldest rows hold `excess` bytes (at least one)."""
        with self._lock:
            first, last = self._conn.execute("SELECT MIN(id), MAX(id) FROM requests").fetchone()
        if first is None:
            return 1
        # Ids only grow and only the oldest rows are deleted, so the id span counts rows without a table scan.
        per_row = max(1, self.stored_bytes() // (last - first + 1))
        return max(1, -(-excess // per_row))

    def _delete(self, select_ids: str, args: tuple[Any, ...]) -> int:
        """Delete the rows `select_ids` picks, in one short transaction."""
        with self._lock:
            deleted = self._conn.execute(f"DELETE FROM requests WHERE id IN ({select_ids})", args).rowcount
            self._conn.commit()
        return deleted

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
