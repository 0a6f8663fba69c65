"""Prometheus metrics for /metrics: requests, latency, tokens, guardrail blocks and errors.

Each server gets its own registry rather than prometheus_client's global one, so several servers in one
process (tests, the demo) never collide over metric names or mix their counts.
"""

from __future__ import annotations

from typing import Any

from tunekit.errors import require

# Seconds; small models on a CPU answer in tens of milliseconds to tens of seconds.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# Why a request log row was lost: the writer's queue was full (the disk could not keep up), or the write failed.
LOG_DROP_REASONS = ("queue_full", "write_error")


class ServeMetrics:
    def __init__(self) -> None:
        require("prometheus_client", "serving")  # a message with the install command, not an ImportError
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        reg = {"registry": self.registry}
        self.requests = Counter("tunekit_requests", "Requests answered", ["endpoint", "model", "status"], **reg)
        self.latency = Histogram("tunekit_request_latency_seconds", "Time from request to last byte",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, **reg)
        self.ttft = Histogram("tunekit_time_to_first_token_seconds", "Streaming: time to the first token",
                              ["endpoint"], buckets=LATENCY_BUCKETS, **reg)
        self.tokens = Counter("tunekit_tokens", "Tokens read and generated", ["model", "kind"], **reg)
        self.guard_blocks = Counter("tunekit_guardrail_blocks", "Requests or answers a guardrail blocked",
                                    ["stage", "policy"], **reg)
        self.errors = Counter("tunekit_errors", "Requests that ended in an error", ["endpoint", "type"], **reg)
        self.in_flight = Gauge("tunekit_requests_in_flight", "Requests being generated", **reg)
        self.queued = Gauge("tunekit_requests_queued", "Requests waiting for a generation slot", **reg)
        self.log_dropped = Counter("tunekit_request_log_dropped", "Request log rows never written",
                                   ["reason"], **reg)
        for reason in LOG_DROP_REASONS:  # listed at 0 from the start, so an alert on their rate has a baseline
            self.log_dropped.labels(reason)

    def record(self, *, endpoint: str, model: str, status: int, latency_s: float, prompt_tokens: int = 0,
               completion_tokens: int = 0, error_type: str | None = None) -> None:
        self.requests.labels(endpoint, model, str(status)).inc()
        self.latency.labels(endpoint).observe(latency_s)
        if prompt_tokens:
            self.tokens.labels(model, "prompt").inc(prompt_tokens)
        if completion_tokens:
            self.tokens.labels(model, "completion").inc(completion_tokens)
        if error_type:
            self.errors.labels(endpoint, error_type).inc()

    def record_guard(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            if event.get("action") in ("block", "fallback"):
                self.guard_blocks.labels(event.get("stage", "?"), event.get("policy", "?")).inc()

    def count_log_drop(self, reason: str) -> None:
        self.log_dropped.labels(reason).inc()

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
