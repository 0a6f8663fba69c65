"""The request log's writer thread: a request only puts its row on a bounded queue and moves on.

Redaction (every PII and secret pattern over every text) and the SQLite insert run on this one thread, so rows
keep their order and neither a slow disk nor a long prompt slows an answer. The queue is bounded because a disk
that cannot keep up would otherwise grow it without limit: when it is full the row is dropped, counted
(`tunekit_request_log_dropped_total` in /metrics) and warned about at most once a minute. Retention runs here
too, at start and every few minutes, between writes rather than on any request.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from tunekit.config_stages import ServeConfig
from tunekit.monitor.logdb import RequestLog, RequestRecord, Retention

log = logging.getLogger("tunekit.serve")

# Retention is cheap when nothing is due, and rows only age by the day: every ten minutes is plenty.
RETENTION_EVERY_S = 600.0
WARN_EVERY_S = 60.0
_STOP = object()


class RequestLogWriter:
    """Writes RequestRecords to `request_log` on its own thread; `on_drop(reason)` counts each row lost."""

    def __init__(self, request_log: RequestLog, *, queue_size: int, retention: Retention,
                 on_drop: Callable[[str], None], retention_every_s: float = RETENTION_EVERY_S,
                 warn_every_s: float = WARN_EVERY_S):
        self.request_log = request_log
        self.retention = retention
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._on_drop = on_drop
        self._retention_every_s = retention_every_s
        self._warnings = _RateLimitedWarnings(warn_every_s)
        self._thread = threading.Thread(target=self._run, name="tunekit-log", daemon=True)
        self._thread.start()

    @classmethod
    def from_config(cls, request_log: RequestLog, serve: ServeConfig,
                    on_drop: Callable[[str], None]) -> RequestLogWriter:
        """A writer with serve.log_queue_size, serve.log_retention_days and serve.log_max_mb."""
        max_bytes = None if serve.log_max_mb is None else int(serve.log_max_mb * 1024 * 1024)
        return cls(request_log, queue_size=serve.log_queue_size, on_drop=on_drop,
                   retention=Retention(max_age_days=serve.log_retention_days, max_bytes=max_bytes))

    def submit(self, record: RequestRecord) -> bool:
        """Queue `record` for writing; False (and counted) when the queue is full. Never blocks."""
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._dropped("queue_full", "request log queue is full (the disk is not keeping up)")
            return False
        return True

    def flush(self) -> None:
        """Wait until every row queued so far is written (or counted as failed)."""
        self._queue.join()

    def close(self) -> None:
        """Write what is queued, then stop the thread. The log itself stays open (its owner closes it)."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    def _run(self) -> None:
        self._prune()
        next_prune = time.monotonic() + self._retention_every_s
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, next_prune - time.monotonic()))
            except queue.Empty:
                item = None
            if item is _STOP:
                self._queue.task_done()
                return
            if item is not None:
                self._write(item)  # type: ignore[arg-type]
                self._queue.task_done()
            if time.monotonic() >= next_prune:
                self._prune()
                next_prune = time.monotonic() + self._retention_every_s

    def _write(self, record: RequestRecord) -> None:
        try:
            self.request_log.write(record)
        except Exception:  # a full disk must not take the API down; the metrics still count the request
            self._dropped("write_error", "could not write the request log", exc_info=True)

    def _prune(self) -> None:
        try:
            pruned = self.request_log.prune(self.retention)
        except Exception:
            log.exception("request log retention failed; it is tried again in %.0f s", self._retention_every_s)
            return
        if pruned.rows:
            log.info("request log retention: %d rows past serve.log_retention_days and %d over serve.log_max_mb "
                     "deleted, %d pages freed", pruned.too_old, pruned.over_size, pruned.pages_freed)

    def _dropped(self, reason: str, message: str, exc_info: bool = False) -> None:
        self._on_drop(reason)
        self._warnings.warn(reason, message, exc_info=exc_info)


class _RateLimitedWarnings:
    """At most one warning per reason per `every_s`, saying how many rows were dropped since the last one:
    a full queue under load would otherwise log once per request, adding to the very load it reports."""

    def __init__(self, every_s: float):
        self.every_s = every_s
        self._lock = threading.Lock()  # drops are reported from many request threads at once
        self._last: dict[str, float] = {}
        self._since: dict[str, int] = {}

    def warn(self, reason: str, message: str, exc_info: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            self._since[reason] = self._since.get(reason, 0) + 1
            if reason in self._last and now - self._last[reason] < self.every_s:
                return
            dropped, self._since[reason], self._last[reason] = self._since[reason], 0, now
        log.warning("%s: %d row(s) dropped since the last warning (counted in tunekit_request_log_dropped_total)",
                    message, dropped, exc_info=exc_info)
