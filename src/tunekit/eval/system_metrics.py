"""Speed and cost of a candidate, measured while it answers the test set.

Two measurements feed them: throughput, tokens and cost come from the batched pass over the whole
test set (how a batch job or a busy server runs); latency comes from the separate per-request probe
(eval/latency.py), because a row's time inside one big batch is the time of the whole run.

These are not in `eval.metrics` (every candidate gets them), but gates may use them
(`latency_p95_ms <= 300`, `cost_per_1k <= 0.05`).

Cost per 1,000 requests: a local model is billed for the machine's time, `usd_per_hour` x measured
wall time per request x 1000 (requests served in batches share the hour, so batching lowers it); an
API baseline is billed per token, mean input tokens x input price + mean output tokens x output
price (both per 1,000 tokens, so x1000 requests / 1000 tokens cancel).
"""

from __future__ import annotations

import numpy as np

from tunekit.eval.metrics import get_metric

SYSTEM_METRICS: dict[str, str] = {
    "latency_p50_ms": "median time from request to full answer (per-request probe)",
    "latency_p95_ms": "95th percentile of the same",
    "ttft_p50_ms": "median time from request to first token (per-request probe)",
    "input_tokens_mean": "mean prompt tokens per request",
    "output_tokens_mean": "mean generated tokens per request",
    "tokens_per_s": "generated tokens per second of wall time",
    "requests_per_s": "answered requests per second of wall time",
    "cost_per_1k": "USD per 1,000 requests (hardware time, or token prices for an API)",
}
# Measured on the bundled red-team set when `eval.safety` is on (see eval/metrics/safety.py): lower is better.
SAFETY_METRICS: dict[str, str] = {
    "attack_success_rate": "share of red-team attacks that succeed against the model alone",
    "attack_success_rate_guarded": "the same behind the configured guardrails",
}
# Measured for every candidate when a label metric (accuracy, macro_f1) is (see eval/calibration.py).
CALIBRATION_METRICS: dict[str, str] = {
    "ece": "expected calibration error of each answer's label probability (10 equal-width bins)",
}
# Fewer tokens per request is better too: they are what a request costs, in time and in money.
_LOWER_IS_BETTER = {
    "latency_p50_ms", "latency_p95_ms", "ttft_p50_ms", "input_tokens_mean", "output_tokens_mean", "cost_per_1k",
}


def higher_is_better(metric_name: str) -> bool:
    """Direction of any metric a gate or report may name (UserError listing the quality metrics if unknown)."""
    if metric_name in SYSTEM_METRICS:
        return metric_name not in _LOWER_IS_BETTER
    if metric_name in SAFETY_METRICS or metric_name in CALIBRATION_METRICS:
        return False
    return get_metric(metric_name).higher_is_better


def system_metrics(
    latencies_s: list[float],
    ttft_s: list[float],
    input_tokens: list[int],
    output_tokens: list[int],
    wall_s: float,
    *,
    usd_per_hour: float | None = None,
    input_per_1k: float | None = None,
    output_per_1k: float | None = None,
) -> dict[str, float | None]:
    """All of SYSTEM_METRICS: latencies (and times to first token) from the per-request probe; token
    counts, one per test row, and the wall time from the batched pass.

    Token prices, when given, make the candidate an API (billed per token) and `usd_per_hour` is
    ignored; with neither, `cost_per_1k` is None (unknown, and a gate on it fails).
    """
    n = len(input_tokens)
    if not latencies_s or len(ttft_s) != len(latencies_s):
        raise ValueError(f"need one latency and one ttft per probed request (at least one), got "
                         f"{len(latencies_s)} and {len(ttft_s)}")
    if n == 0 or len(output_tokens) != n:
        raise ValueError(f"need input and output token counts for each request (at least one), got "
                         f"{n} and {len(output_tokens)}")
    if wall_s <= 0:
        raise ValueError(f"wall_s must be positive, got {wall_s}")
    latency_ms = np.asarray(latencies_s, float) * 1000
    mean_in, mean_out = float(np.mean(input_tokens)), float(np.mean(output_tokens))
    return {
        "latency_p50_ms": float(np.percentile(latency_ms, 50)),
        "latency_p95_ms": float(np.percentile(latency_ms, 95)),
        "ttft_p50_ms": float(np.percentile(np.asarray(ttft_s, float) * 1000, 50)),
        "input_tokens_mean": mean_in,
        "output_tokens_mean": mean_out,
        "tokens_per_s": float(np.sum(output_tokens)) / wall_s,
        "requests_per_s": n / wall_s,
        "cost_per_1k": _cost_per_1k(n, wall_s, mean_in, mean_out, usd_per_hour, input_per_1k, output_per_1k),
    }


def _cost_per_1k(
    n: int,
    wall_s: float,
    mean_in: float,
    mean_out: float,
    usd_per_hour: float | None,
    input_per_1k: float | None,
    output_per_1k: float | None,
) -> float | None:
    if input_per_1k is not None or output_per_1k is not None:
        return mean_in * (input_per_1k or 0.0) + mean_out * (output_per_1k or 0.0)
    if usd_per_hour is not None:
        return usd_per_hour * (wall_s / n / 3600) * 1000
    return None
