"""Serving under load: concurrent clients against `tunekit serve` on loopback, with the official openai client.

Starts `tunekit serve TARGET` (default: the embedded SmolLM2-135M-Instruct) as its own process on a free
port, waits for /health, then runs N clients for D seconds; each sends a chat completion, waits for it and
sends the next. Prints one JSON line: requests/s, p50/p95/max latency, completion tokens/s and the error
count (the target is 0 errors: no 429s, 503s or timeouts at this load with the default queue).

With --adapters N the server holds N LoRA adapters of TARGET (a base model; see bench/adapter_runs.py for
how they are made and cached) and client i asks for adapter i % N, so rows of different adapters decode
in one batch. The same server first runs the single-adapter case (every client on a0, same clients and
duration) unless --no-single; the line adds per-adapter latencies, that run's, and
p95_ratio_multi_vs_single (the target: <= 1.3 with 4 adapters, 0 errors). The adapters are served in the
dtype the bare base model gets (bf16 where the CPU has bf16 matmuls), not in fp32, tunekit's choice for
runs without an eval; --dtype overrides either. Every line records the CPU and the load average at start
and end (and before each timed run), since other jobs on the machine change the figures.

  .venv/bin/python bench/serve_load.py [--target smollm2-135m-instruct] [--clients 16] [--duration 60] [KEY=VALUE ...]
  .venv/bin/python bench/serve_load.py --adapters 4 [--no-single] [--clients 16] [--duration 60] [KEY=VALUE ...]
  .venv/bin/python bench/serve_load.py --url http://127.0.0.1:8000/v1 --model NAME   # a running server
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

from adapter_runs import adapter_runs, stop
from tunekit.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
TUNEKIT = str(Path(sys.executable).with_name("tunekit"))
KEY = "sk-bench-load"
P95_RATIO_TARGET = 1.3
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


def start_server(target: str, port: int, overrides: list[str], adapters: list[Path],
                 dtype: str | None) -> subprocess.Popen:
    cmd = [TUNEKIT, "serve", target, "--port", str(port), *overrides] + (["--dtype", dtype] if dtype else [])
    if adapters:  # the first run is TARGET, served as a0; the others join it on the same base model
        names = adapter_names(len(adapters))
        cmd += ["--name", names[0]]
        for name, run in zip(names[1:], adapters[1:]):
            cmd += ["--adapter", f"{name}={run}"]
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TUNEKIT_API_KEYS": KEY})


def adapter_names(n: int) -> list[str]:
    return [f"a{i}" for i in range(n)]


def native_dtype() -> str:
    """What `tunekit serve` picks for a bare base model. Runs without an eval are served in fp32 instead
    (reproducible greedy answers), several times slower on CPUs with bf16 matmuls: not what is measured here."""
    import torch

    from tunekit.devices import pick_device

    return "bf16" if pick_device("auto").dtype == torch.bfloat16 else "fp32"


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


async def load(base_url: str, models: list[str] | None, clients: int, duration: float, max_tokens: int) -> dict:
    """Client i asks for models[i % len(models)] (default: the first model /v1/models lists)."""
    import openai

    api = openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=600)
    models = models or [(await api.models.list()).data[0].id]
    per_model: dict = {m: {"latencies": [], "errors": [], "tokens": 0} for m in models}
    load_avg = [round(v, 2) for v in os.getloadavg()]
    started = time.perf_counter()
    await asyncio.gather(*(one_client(api, models[i % len(models)], i, started + duration, max_tokens,
                                      per_model[models[i % len(models)]]) for i in range(clients)))
    elapsed = time.perf_counter() - started
    await api.close()
    merged = {"latencies": [v for part in per_model.values() for v in part["latencies"]],
              "errors": [e for part in per_model.values() for e in part["errors"]],
              "tokens": sum(part["tokens"] for part in per_model.values())}
    return {**merged, "elapsed": elapsed, "model": models[0] if len(models) == 1 else models,
            "per_model": per_model, "load_avg_before": load_avg}


async def first_replies(base_url: str, models: list[str], max_tokens: int) -> list[str]:
    """Each model's greedy answer to one question: different adapters must answer differently (and each
    adapter is used once before timing starts)."""
    import openai

    async with openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=600) as api:
        return [(await api.chat.completions.create(
            model=m, messages=[{"role": "user", "content": QUESTIONS[1]}], max_tokens=max_tokens,
            temperature=0)).choices[0].message.content for m in models]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def summary(args: argparse.Namespace, result: dict, startup_s: float | None) -> dict:
    latencies = result["latencies"]
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


def stats(part: dict, elapsed: float) -> dict:
    """One adapter's (or one run's) requests: counts and latencies."""
    latencies = part["latencies"]
    return {
        "requests": len(latencies),
        "errors": len(part["errors"]),
        "requests_per_s": round(len(latencies) / elapsed, 2),
        # Latency grows with answer length: a ratio is only fair where the lengths are alike.
        "completion_tokens_per_request": round(part["tokens"] / len(latencies), 1) if latencies else None,
        "latency_p50_ms": ms(percentile(latencies, 50)),
        "latency_p95_ms": ms(percentile(latencies, 95)),
        "latency_max_ms": ms(max(latencies) if latencies else None),
    }


def adapters_summary(multi: dict, single: dict | None, replies: list[str], prep_s: float, runs: list[Path]) -> dict:
    """What --adapters adds to the line: per adapter, the single-adapter run, their p95 ratio."""
    multi_p95 = percentile(multi["latencies"], 95)
    single_p95 = None if single is None else percentile(single["latencies"], 95)
    ratio = round(multi_p95 / single_p95, 3) if multi_p95 and single_p95 else None
    errors = len(multi["errors"]) + (len(single["errors"]) if single else 0)
    return {
        "adapters": len(runs),
        "adapter_runs": str(runs[0].parent),
        "adapter_prep_s": round(prep_s, 1),
        "distinct_replies": len(set(replies)),  # of len(runs): each adapter really changes the output
        "completion_tokens_per_request": stats(multi, multi["elapsed"])["completion_tokens_per_request"],
        "load_avg_before": multi["load_avg_before"],
        "per_adapter": {m: stats(part, multi["elapsed"]) for m, part in multi["per_model"].items()},
        "single": None if single is None else {"model": single["model"], **stats(single, single["elapsed"]),
                                               "load_avg_before": single["load_avg_before"],
                                               "first_errors": single["errors"][:5]},
        "p95_ratio_multi_vs_single": ratio,
        "p95_ratio_target": P95_RATIO_TARGET,
        "meets_target": None if ratio is None else ratio <= P95_RATIO_TARGET and errors == 0,
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="smollm2-135m-instruct", help="run folder or model to serve "
                        "(with --adapters: the base model the adapters are trained on)")
    parser.add_argument("--url", help="benchmark this running server's /v1 instead of starting one")
    parser.add_argument("--model", help="model name to request (default: the first /v1/models lists)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--adapters", type=int, default=0, help="serve N LoRA adapters, clients spread over them")
    parser.add_argument("--no-single", action="store_true", help="with --adapters: skip the single-adapter run")
    parser.add_argument("--dtype", choices=["auto", "fp32", "bf16"], help="the server's --dtype (default: its "
                        "own choice; with --adapters, the one it gives the bare base model: bf16 where native)")
    parser.add_argument("overrides", nargs="*", help="config overrides for the server, e.g. serve.max_concurrency=16")
    args = parser.parse_args()
    if args.adapters < 0:
        parser.error("--adapters must be >= 0")
    if args.adapters and (args.url or args.model):
        parser.error("--adapters starts its own server with its own model names: no --url or --model")
    return args


def main() -> None:
    args = parse_args()
    # SIGTERM (a timeout, a CI cancel) raises SystemExit like Ctrl-C raises KeyboardInterrupt: `finally` runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    load_start = os.getloadavg()
    proc, line = None, None
    try:
        if args.url:
            result = asyncio.run(load(args.url, [args.model] if args.model else None, args.clients,
                                      args.duration, args.max_tokens))
            line = summary(args, result, None)
        else:
            prep = time.perf_counter()
            say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
            runs = adapter_runs(args.target, args.adapters, say=say) if args.adapters else []
            prep_s = time.perf_counter() - prep
            dtype = args.dtype or (native_dtype() if runs else None)
            port = free_port()
            # Default limits, except the per-key rate limit: every client here shares one key and one address.
            proc = start_server(str(runs[0]) if runs else args.target, port,
                                ["serve.rate_limit_per_minute=1000000",
                                 f"serve.log_db={ROOT / 'runs' / 'bench-serve-load.db'}", *args.overrides], runs, dtype)
            startup = wait_healthy(proc, f"http://127.0.0.1:{port}")
            line = serve_and_load(args, f"http://127.0.0.1:{port}/v1", startup, runs, prep_s)
            if dtype:
                line["dtype"] = dtype
    finally:
        if proc is not None:
            stop(proc)
    line.update(cpu_model=cpu_model(), load_avg_start=[round(v, 2) for v in load_start],
                load_avg_end=[round(v, 2) for v in os.getloadavg()])
    print(json.dumps(line))


def serve_and_load(args: argparse.Namespace, base_url: str, startup: float, runs: list[Path], prep_s: float) -> dict:
    if not runs:
        return summary(args, asyncio.run(load(base_url, args.model and [args.model], args.clients, args.duration,
                                              args.max_tokens)), startup)
    names = adapter_names(len(runs))
    replies = asyncio.run(first_replies(base_url, names, args.max_tokens))
    single = None
    if len(names) > 1 and not args.no_single:  # the same server: the one-adapter batches take the fast path
        single = asyncio.run(load(base_url, names[:1], args.clients, args.duration, args.max_tokens))
    multi = asyncio.run(load(base_url, names, args.clients, args.duration, args.max_tokens))
    return {**summary(args, multi, startup), **adapters_summary(multi, single, replies, prep_s, runs)}


if __name__ == "__main__":
    main()
