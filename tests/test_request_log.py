"""The request log's bounds: retention by age and by size on real SQLite files, and a bounded writer queue
that drops (and counts) rows instead of slowing requests, shown on a real server on loopback."""

from __future__ import annotations

import logging
import sqlite3
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from serve_helpers import chat, start
from tunekit.monitor.logdb import SIZE_TARGET, RequestLog, RequestRecord, Retention, utc_now
from tunekit.serve.logwriter import RequestLogWriter
from tunekit.serve.server import serve_in_thread

MB = 1024 * 1024


def record(ts: str, text: str = "paint item 39 blue", response: str = "blue") -> RequestRecord:
    return RequestRecord(ts=ts, endpoint="/v1/chat/completions", model="alpha", key_id=None,
                         messages=[{"role": "user", "content": text}], response=response, input_tokens=5,
                         output_tokens=1, latency_ms=12.5, status=200)


def days_ago(days: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(days=days)).isoformat(timespec="milliseconds")


@contextmanager
def locked(path: Path):
    """Another connection holding the file's write lock, as a backup tool or a stuck process would: every
    insert from the server waits behind it."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


def file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


# --- retention on the log itself ----------------------------------------------------------------------------


def test_rows_older_than_the_retention_are_deleted_and_newer_ones_kept(tmp_path):
    with RequestLog(tmp_path / "requests.db") as log:
        for age, text in [(45, "very old"), (31, "just too old"), (29, "just young enough"), (0, "today")]:
            log.write(record(days_ago(age), text))
        pruned = log.prune(Retention(max_age_days=30))
        kept = [r.messages[0]["content"] for r in log.read()]
    assert (pruned.too_old, pruned.over_size) == (2, 0)
    assert kept == ["just young enough", "today"]


def test_over_the_size_cap_the_oldest_rows_go_and_the_file_shrinks(tmp_path):
    path = tmp_path / "requests.db"
    with RequestLog(path) as log:
        for i in range(600):  # ~5 KB each: ~3 MB of rows
            log.write(record(utc_now(), f"row {i} " + "please paint the fence blue " * 180))
        before, on_disk_before = log.stored_bytes(), path.stat().st_size
        pruned = log.prune(Retention(max_bytes=1 * MB))
        kept = [int(r.messages[0]["content"].split()[1]) for r in log.read()]
        after = log.stored_bytes()
    assert before > 2.5 * MB and after <= SIZE_TARGET * MB
    assert pruned.over_size == 600 - len(kept) > 0 and pruned.pages_freed > 0
    assert kept == list(range(600 - len(kept), 600))  # the newest rows, in order
    assert path.stat().st_size <= MB < on_disk_before  # the pages went back to the disk, not just a free list
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_retention_with_nothing_due_deletes_nothing(tmp_path):
    with RequestLog(tmp_path / "requests.db") as log:
        for _ in range(3):
            log.write(record(utc_now()))
        pruned = log.prune(Retention(max_age_days=30, max_bytes=MB))
        assert (pruned.rows, pruned.pages_freed, log.count()) == (0, 0, 3)


# --- the writer thread ---------------------------------------------------------------------------------------


def test_the_writer_prunes_at_start_and_then_periodically(tmp_path):
    log = RequestLog(tmp_path / "requests.db")
    log.write(record(days_ago(40), "old before the start"))
    dropped: list[str] = []
    writer = RequestLogWriter(log, queue_size=10, retention=Retention(max_age_days=30), on_drop=dropped.append,
                              retention_every_s=0.2)
    try:
        writer.submit(record(utc_now(), "new"))
        writer.flush()  # the writer prunes before it takes its first row
        assert [r.messages[0]["content"] for r in log.read()] == ["new"]
        log.write(record(days_ago(40), "old while running"))
        deadline = time.monotonic() + 10
        while log.count() > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [r.messages[0]["content"] for r in log.read()] == ["new"] and dropped == []
    finally:
        writer.close()
        log.close()


def test_a_full_queue_drops_rows_at_once_counts_them_and_warns_once(tmp_path, caplog):
    path = tmp_path / "requests.db"
    log = RequestLog(path)
    dropped: list[str] = []
    writer = RequestLogWriter(log, queue_size=2, retention=Retention(), on_drop=dropped.append)
    try:
        with caplog.at_level(logging.WARNING, logger="tunekit.serve"), locked(path):
            started = time.monotonic()
            accepted = [writer.submit(record(utc_now(), f"row {i}")) for i in range(6)]
            submitting = time.monotonic() - started
        writer.flush()
        written = log.count()
    finally:
        writer.close()
        log.close()
    assert submitting < 1.0  # the writer is stuck behind the lock; submit never waits for it
    assert accepted.count(False) == len(dropped) >= 3 and set(dropped) == {"queue_full"}
    assert written == accepted.count(True) == 6 - len(dropped)
    warnings = [r.getMessage() for r in caplog.records if "queue is full" in r.getMessage()]
    assert len(warnings) == 1 and "1 row(s) dropped" in warnings[0]


def test_a_failed_write_is_counted_and_the_writer_keeps_going(tmp_path):
    log = RequestLog(tmp_path / "requests.db")
    dropped: list[str] = []
    writer = RequestLogWriter(log, queue_size=10, retention=Retention(), on_drop=dropped.append)
    try:
        writer.submit(record("not a time", response=object()))  # type: ignore[arg-type]  # no JSON, no SQL type
        writer.submit(record(utc_now(), "after the failure"))
        writer.flush()
        assert dropped == ["write_error"]
        assert [r.messages[0]["content"] for r in log.read()] == ["after the failure"]
    finally:
        writer.close()
        log.close()


# --- a real server -------------------------------------------------------------------------------------------


def metric_samples(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=30).text
    return {name: float(value) for name, value in
            (line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))}


@pytest.fixture
def small_queue_server(serve_project, tmp_path):
    path = tmp_path / "requests.db"
    state = start(serve_project, f"serve.log_db={path}", "serve.log_queue_size=1", adapters=[])
    try:
        with serve_in_thread(state) as running:
            yield running, path
    finally:
        state.close()


def test_a_server_whose_log_cannot_keep_up_answers_anyway_and_counts_the_dropped_rows(small_queue_server):
    server, path = small_queue_server
    samples = metric_samples(server.url)
    assert samples['tunekit_request_log_dropped_total{reason="queue_full"}'] == 0
    assert samples['tunekit_request_log_dropped_total{reason="write_error"}'] == 0
    sent = 4
    with locked(path):  # the writer waits on the lock for up to 30 s: rows pile up, then overflow the queue
        started = time.monotonic()
        answers = [chat(server, max_tokens=2) for _ in range(sent)]
        answering = time.monotonic() - started
        dropped = metric_samples(server.url)['tunekit_request_log_dropped_total{reason="queue_full"}']
    server.state.flush()
    with sqlite3.connect(path) as db:
        written = db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
    assert all(a.choices[0].message.content is not None for a in answers)
    assert answering < 20  # far below the 30 s each insert would wait if a request waited for the log
    assert dropped >= sent - 2  # one row in the writer's hands, one in the queue, the rest dropped
    assert written + dropped == sent
