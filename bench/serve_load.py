"""Serving under load: concurrent clients against `tunekit serve` on loopback, with the official openai client.

Starts `tunekit serve TARGET` (default: the embedded SmolLM2-135M-Instruct) as its own process on a free
port, waits for /health, then runs N clients for D seconds; each sends a chat completion, waits for it and
sends the next. Prints one JSON line: requests/s, p50/p95/max latency, completion tokens/s and the error
count (the target is 0 errors: no 429s, 503s or timeouts at this load with the default queue).

  .venv/bin/python bench/serve_load.py [--target smollm2-135m-instruct] [--clients 16] [--duration 60] [KEY=VALUE ...]
  .venv/bin/python bench/serve_load.py --url http://127.0.0.1:8000/v1 --model NAME   # a running server
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TUNEKIT = str(Path(sys.executable).with_name("tunekit"))
KEY = "sk-bench-load"
# Support-style questions of different lengths, so prompts are not all one shape.
QUESTIONS = [
    "My invoice shows two charges for March. Can I get one refunded?",
    "How do I turn on two-factor authentication?",
    "The app crashes when I export my data to CSV. What should I do?",
    "Is there a status page for outages?",
    "Which plan includes priority support, and how fast do you answer urgent tickets?",
    "I forgot my password and the reset e-mail never arrives.",
    "Can I move my account to another region for data residency reasons?",
    "The thermostat shows offline although Wi-Fi works. Any ideas?",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(target: str, port: int, overrides: list[str]) -> subprocess.Popen:
    cmd = [TUNEKIT, "serve", target, "--port", str(port), *overrides]
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TUNEKIT_API_KEYS": KEY})


def wait_healthy(proc: subprocess.Popen, url: str, timeout_s: float = 600) -> float:
    import httpx

    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}):\n{proc.stderr.read()[-4000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the server did not become healthy within {timeout_s:.0f} s")


async def one_client(api, model: str, index: int, deadline: float, max_tokens: int, out: dict) -> None:
    turn = index
    while time.perf_counter() < deadline:
        question = QUESTIONS[turn % len(QUESTIONS)]
        turn += 1
        started = time.perf_counter()
        try:
            reply = await api.chat.completions.create(
                model=model, messages=[{"role": "user", "content": question}], max_tokens=max_tokens)
        except Exception as exc:  # every failure is counted and named, none stops the run
            out["errors"].append(f"{type(exc).__name__}: {str(exc)[:200]}")
            continue
        out["latencies"].append(time.perf_counter() - started)
        out["tokens"] += reply.usage.completion_tokens


async def load(base_url: str, model: str | None, clients: int, duration: float, max_tokens: int) -> dict:
    import openai

    api = openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=600)
    model = model or (await api.models.list()).data[0].id
    out: dict = {"latencies": [], "errors": [], "tokens": 0}
    started = time.perf_counter()
    await asyncio.gather(*(one_client(api, model, i, started + duration, max_tokens, out) for i in range(clients)))
    elapsed = time.perf_counter() - started
    await api.close()
    return {**out, "elapsed": elapsed, "model": model}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary(args: argparse.Namespace, result: dict, startup_s: float | None) -> dict:
    latencies = result["latencies"]
    ms = lambda v: None if v is None else round(v * 1000, 1)  # noqa: E731
    return {
        "bench": "serve_load",
        "target": args.url or args.target,
        "overrides": args.overrides,
        "model": result["model"],
        "clients": args.clients,
        "duration_s": round(result["elapsed"], 1),
        "max_tokens": args.max_tokens,
        "requests": len(latencies),
        "errors": len(result["errors"]),
        "requests_per_s": round(len(latencies) / result["elapsed"], 2),
        "completion_tokens_per_s": round(result["tokens"] / result["elapsed"], 1),
        "latency_p50_ms": ms(percentile(latencies, 50)),
        "latency_p95_ms": ms(percentile(latencies, 95)),
        "latency_max_ms": ms(max(latencies) if latencies else None),
        "server_startup_s": None if startup_s is None else round(startup_s, 1),
        "first_errors": result["errors"][:5],
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="smollm2-135m-instruct", help="run folder or model to serve")
    parser.add_argument("--url", help="benchmark this running server's /v1 instead of starting one")
    parser.add_argument("--model", help="model name to request (default: the first /v1/models lists)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("overrides", nargs="*", help="config overrides for the server, e.g. serve.max_concurrency=16")
    args = parser.parse_args()
    proc, startup = None, None
    if args.url:
        base_url = args.url
    else:
        port = free_port()
        # Default limits, except the per-key rate limit: every client here shares one key and one address.
        proc = start_server(args.target, port, ["serve.rate_limit_per_minute=1000000",
                                                f"serve.log_db={ROOT / 'runs' / 'bench-serve-load.db'}",
                                                *args.overrides])
        startup = wait_healthy(proc, f"http://127.0.0.1:{port}")
        base_url = f"http://127.0.0.1:{port}/v1"
    try:
        result = asyncio.run(load(base_url, args.model, args.clients, args.duration, args.max_tokens))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)
    print(json.dumps(summary(args, result, startup)))


if __name__ == "__main__":
    main()
