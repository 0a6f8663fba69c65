"""Single-user decode latency: tunekit's engine and server against HF `generate` and the memory-bandwidth limit.

One request at a time, greedy, the embedded default (SmolLM2-135M-Instruct) on a few prompts that make it
write long answers. Each section reports the median over repeats x prompts of
  ms_per_token: decode time per generated token after the first, ttft_ms: time to first token,
  tokens: generated tokens per request (mean),
for
  limit         the weights' bf16 bytes (tied embeddings once, plus the tied lm_head once more: decoding reads
                it every token) over the read bandwidth of `buf.sum()` on a bf16 buffer that size (best of 10,
                torch's default threads); also the bandwidth of `dst.copy_(src)`. A floor, not a target: the
                KV cache, activations and per-step overhead come on top.
  engine        tunekit.generate.Generator (dtype auto) called in process, `stream()`, each delta timestamped
  engine_lora   the same on a PeftModel of a one-step LoRA run (bench/adapter_runs.py, cached)
  hf_bf16/_fp32 HF `model.generate`, batch 1, min_new_tokens = max_new_tokens; TTFT from a max_new_tokens=1 call
  hf_lora_bf16  the same on the PeftModel, all in bf16
  server        `tunekit serve MODEL` on a free loopback port, one openai client, streamed chat completion
  server_lora   `tunekit serve RUN` likewise (with --dtype of the bare base model: bf16 where native, as the
                engine; tunekit would serve a run without an eval in fp32)
then ms_per_token ratios (server/engine, engine/limit, ...) and TTFT ratios.

A streamed request's first text delta is its first token (the engine ends a step that admits rows into an
empty batch after their prefill); should it ever hold more (a token that completes no UTF-8 character, or an
older tunekit whose first step also decoded), ms_per_token divides end - first delta by the tokens after that
delta (first_delta_tokens: exact for the engine, from the delta count for the server).

Progress goes to stderr, one JSON line to stdout; the line records the CPU, torch threads, the load average
at start and end and the git commit (with the files under src/ that differ from it). Other jobs on the
machine change every figure.

  .venv/bin/python bench/latency.py [--max-new-tokens 48] [--repeats 3] [--skip-server] [--skip-hf] [--skip-adapter]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from adapter_runs import adapter_runs, stop
from serve_load import KEY, cpu_model, free_port, native_dtype, start_server, wait_healthy

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"
# Open-ended asks, meant to keep the model writing past --max-new-tokens so every section generates the same
# count (HF is held to it by min_new_tokens; the engine and server stop at EOS: "tokens" shows whether they did).
PROMPTS = [
    "Write a detailed paragraph about the history of the printing press and its effect on Europe.",
    "Write a detailed paragraph about how photosynthesis works in plants.",
    "Write a detailed paragraph about the advantages and drawbacks of working from home.",
    "Write a detailed paragraph about how a city can prepare for a major flood.",
]
CONVERSATIONS = [[{"role": "user", "content": p}] for p in PROMPTS]


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sample(started: float, first: float | None, end: float, tokens: int, first_tokens: int = 1) -> dict:
    """One request's figures from its timestamps (perf_counter seconds): `first` is when the first text came,
    carrying `first_tokens` tokens, `end` when the request was over; the tokens after those took end - first."""
    after = tokens - first_tokens
    return {"ttft_ms": None if first is None else (first - started) * 1000,
            "ms_per_token": (end - first) * 1000 / after if first is not None and after > 0 else None,
            "tokens": tokens, "first_delta_tokens": first_tokens}


def first_tokens_from_deltas(tokens: int, deltas: int, finish_reason: str | None) -> int:
    """Tokens the first text delta carried, when only the count of deltas is known (the server's client).

    tunekit streams one delta per engine step, each step one token, except the first step, which prefills
    (token 1) and decodes (token 2) before anything is sent; an EOS ends the row without text. So tokens =
    first + (deltas - 1) + [EOS]. A token that ends inside a UTF-8 character joins the next delta, which
    makes the estimate too high by one (rare in English text)."""
    eos = 1 if finish_reason == "stop" else 0
    return max(1, min(tokens - 1, tokens - (deltas - 1) - eos)) if deltas else 1


def median_of(samples: list[dict], **extra) -> dict:
    def med(key: str) -> float | None:
        values = [s[key] for s in samples if s.get(key) is not None]
        return round(statistics.median(values), 2) if values else None

    per_token = [s["ms_per_token"] for s in samples if s["ms_per_token"] is not None]
    return {"ms_per_token": med("ms_per_token"), "ttft_ms": med("ttft_ms"),
            "tokens": round(statistics.mean(s["tokens"] for s in samples), 1),
            **({"first_delta_tokens": med("first_delta_tokens")} if "first_delta_tokens" in samples[0] else {}),
            "min_ms_per_token": round(min(per_token), 2) if per_token else None, "samples": len(samples), **extra}


def repeat(one, repeats: int, name: str) -> list[dict]:
    """`one(conversation)` for every prompt, `repeats` times over; progress on stderr."""
    samples = []
    for r in range(repeats):
        for conversation in CONVERSATIONS:
            samples.append(one(conversation))
        last = samples[-len(CONVERSATIONS):]
        say(f"  {name} repeat {r + 1}/{repeats}: "
            + ", ".join(f"{s['ms_per_token']:.1f}" if s["ms_per_token"] is not None else "-" for s in last)
            + " ms/token")
    return samples


# -- the memory-bandwidth limit -------------------------------------------------------------------------

def weight_bytes(model) -> dict:
    """bf16 bytes of the parameters (model.parameters() lists a tied weight once) plus the lm_head again if tied."""
    total = sum(p.numel() for p in model.parameters()) * 2
    out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
    tied = out_emb is not None and out_emb.weight is in_emb.weight
    lm_head = out_emb.weight.numel() * 2 if out_emb is not None else 0
    return {"bytes": total + (lm_head if tied else 0), "parameter_bytes": total, "lm_head_bytes": lm_head,
            "tied_embeddings": tied}


def bandwidth_limit(model) -> dict:
    import torch

    sizes = weight_bytes(model)
    n = sizes["bytes"] // 2
    src = torch.empty(n, dtype=torch.bfloat16).fill_(1.0)  # fill: every page is mapped before timing
    dst = torch.empty_like(src).fill_(0.0)

    def best(fn) -> float:
        times = []
        for _ in range(10):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return min(times)

    read_s = best(lambda: src.sum())
    copy_s = best(lambda: dst.copy_(src))
    nbytes = n * 2
    return {**sizes, "read_ms": round(read_s * 1000, 2), "read_GBps": round(nbytes / read_s / 1e9, 2),
            "copy_ms": round(copy_s * 1000, 2), "copy_GBps": round(2 * nbytes / copy_s / 1e9, 2),  # read + write
            "limit_ms_per_token": round(read_s * 1000, 2), "threads": torch.get_num_threads()}


# -- tunekit's engine, in process -----------------------------------------------------------------------

def engine_section(model, tokenizer, max_new_tokens: int, repeats: int, name: str) -> dict:
    from tunekit.generate import GenerationParams, Generator

    gen = Generator(model, tokenizer)  # dtype auto
    params = GenerationParams(max_new_tokens=max_new_tokens, temperature=0)
    # The engine's own clock (Generation.ttft_s, latency_s): from the tokenized request to its first and
    # last token, so its TTFT is prefill alone, while the first delta also waits for the first decode step.
    internal_ttft: list[float] = []
    internal_per_token: list[float] = []
    estimated: list[int] = []  # first_tokens_from_deltas, the server's estimate: checked against the exact count

    def one(conversation: list[dict]) -> dict:
        started, first, deltas, exact = time.perf_counter(), None, 0, None
        stream = gen.stream(conversation, params)
        for delta in stream:
            if delta:
                deltas += 1
                if first is None:
                    first = time.perf_counter()
                    # Private, but the only exact count: how many tokens that first delta holds.
                    exact = getattr(getattr(stream, "_request", None), "completion_tokens", None)
        end = time.perf_counter()
        result = stream.result
        internal_ttft.append(result.ttft_s * 1000)
        internal_per_token.append((result.latency_s - result.ttft_s) * 1000 / max(1, result.completion_tokens - 1))
        estimate = first_tokens_from_deltas(result.completion_tokens, deltas, result.finish_reason)
        estimated.append(estimate)
        return sample(started, first, end, result.completion_tokens, exact or estimate)

    one(CONVERSATIONS[0])  # warm-up
    for kept in (internal_ttft, internal_per_token, estimated):
        kept.clear()
    figures = median_of(repeat(one, repeats, name), dtype=gen.device.dtype_name,
                        internal_ttft_ms=round(statistics.median(internal_ttft), 2),
                        internal_ms_per_token=round(statistics.median(internal_per_token), 2),
                        first_delta_tokens_estimated=statistics.median(estimated))
    return figures  # the Generator's weight copy goes with it


# -- HF generate ----------------------------------------------------------------------------------------

def hf_section(model, tokenizer, max_new_tokens: int, repeats: int, name: str) -> dict:
    import torch

    def run(conversation: list[dict], n: int) -> tuple[float, int]:
        text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        return time.perf_counter() - started, out.shape[1] - enc["input_ids"].shape[1]

    def one(conversation: list[dict]) -> dict:
        ttft, _ = run(conversation, 1)
        total, tokens = run(conversation, max_new_tokens)
        per_token = (total - ttft) * 1000 / (tokens - 1) if tokens > 1 else None
        return {"ttft_ms": ttft * 1000, "ms_per_token": per_token, "tokens": tokens}

    run(CONVERSATIONS[0], 4)  # warm-up
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    return median_of(repeat(one, repeats, name), dtype=dtype)


# -- the server, one openai client ----------------------------------------------------------------------

def server_section(target: str, dtype: str, max_new_tokens: int, repeats: int, name: str) -> dict:
    import openai

    port = free_port()
    proc = start_server(target, port, ["serve.rate_limit_per_minute=1000000",
                                       f"serve.log_db={ROOT / 'runs' / 'bench-latency.db'}"], [], dtype)
    try:
        startup = wait_healthy(proc, f"http://127.0.0.1:{port}")
        api = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0, timeout=600)
        model = api.models.list().data[0].id
        usage_seen = {"usage": 0, "chunks": 0}
        with_usage = {"stream_options": {"include_usage": True}}

        def one(conversation: list[dict]) -> dict:
            started, first, chunks, tokens, finish = time.perf_counter(), None, 0, None, None
            stream = api.chat.completions.create(model=model, messages=conversation, max_tokens=max_new_tokens,
                                                 temperature=0, stream=True, **with_usage)
            for chunk in stream:
                if chunk.usage is not None:  # the last chunk, with no choices, when include_usage is asked for
                    tokens = chunk.usage.completion_tokens
                if chunk.choices:
                    finish = chunk.choices[0].finish_reason or finish
                    if chunk.choices[0].delta.content:
                        chunks += 1
                        if first is None:
                            first = time.perf_counter()
            end = time.perf_counter()
            usage_seen["usage" if tokens is not None else "chunks"] += 1
            if tokens is None:  # no usage: one token per content chunk, the first chunk's extra one unseen
                return sample(started, first, end, chunks)
            return sample(started, first, end, tokens, first_tokens_from_deltas(tokens, chunks, finish))

        try:
            one(CONVERSATIONS[0])  # warm-up
        except openai.BadRequestError as exc:  # a server without stream_options: count content chunks
            say(f"  stream_options refused ({exc}); counting content chunks")
            with_usage.clear()
            one(CONVERSATIONS[0])
        usage_seen.update(usage=0, chunks=0)
        samples = repeat(one, repeats, name)
        return median_of(samples, dtype=dtype, model=model, startup_s=round(startup, 1),
                         tokens_from=("usage" if not usage_seen["chunks"] else
                                      "content chunks" if not usage_seen["usage"] else usage_seen))
    finally:
        stop(proc)


# -- the line -------------------------------------------------------------------------------------------

def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def ratios(line: dict) -> dict:
    def ms(name: str) -> float | None:
        part = line.get(name) or {}
        return part.get("limit_ms_per_token", part.get("ms_per_token"))

    def ttft(name: str) -> float | None:
        return (line.get(name) or {}).get("ttft_ms")

    pairs = [("server", "engine"), ("engine", "limit"), ("server", "limit"), ("engine_lora", "engine"),
             ("server_lora", "server"), ("hf_bf16", "engine")]
    return {"ms_per_token": {f"{a}/{b}": ratio(ms(a), ms(b)) for a, b in pairs},
            "ttft": {f"{a}/{b}": ratio(ttft(a), ttft(b)) for a, b in pairs if b != "limit"}}


def git_state() -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            return ""

    # Uncommitted changes under src/ ("M path", "?? path"): the commit alone does not say what was measured.
    changed = [" ".join(line.split(maxsplit=1)) for line in git("status", "--porcelain", "--", "src").splitlines()]
    return {"git_commit": git("rev-parse", "HEAD").strip() or None, "git_src_changes": changed}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3, help="passes over the prompts; the median is reported")
    parser.add_argument("--skip-server", action="store_true", help="no `tunekit serve` sections")
    parser.add_argument("--skip-hf", action="store_true", help="no HF generate sections")
    parser.add_argument("--skip-adapter", action="store_true", help="no LoRA sections (and no adapter run made)")
    args = parser.parse_args()
    if args.max_new_tokens < 2:
        parser.error("--max-new-tokens must be at least 2 (ms/token is over the tokens after the first)")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    # SIGTERM (a timeout, a CI cancel) raises SystemExit like Ctrl-C raises KeyboardInterrupt: `finally` runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    load_start = os.getloadavg()
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from tunekit.models.load import load_chat_tokenizer, load_model
    from tunekit.models.resolve import resolve_model
    from tunekit.quiet import offline_and_quiet
    from tunekit.runfolder import RunFolder

    offline_and_quiet()
    resolved = resolve_model(MODEL)
    line: dict = {"bench": "latency", "model": MODEL, "model_path": str(resolved.path),
                  "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "prompts": len(PROMPTS),
                  "torch_threads": torch.get_num_threads()}
    run = None
    if not args.skip_adapter:
        prep = time.perf_counter()
        run = adapter_runs(MODEL, 1, say=say)[0]
        line.update(adapter_run=str(run), adapter_prep_s=round(time.perf_counter() - prep, 1))

    tokenizer = load_chat_tokenizer(resolved)
    model = load_model(resolved).eval()  # fp32; the Generator makes its own copy in its dtype
    say("limit: bf16 weight bytes over read bandwidth")
    line["limit"] = bandwidth_limit(model)
    say(f"  {json.dumps(line['limit'])}")

    say("engine")
    line["engine"] = engine_section(model, tokenizer, args.max_new_tokens, args.repeats, "engine")
    gc.collect()
    if not args.skip_hf:
        say("hf_fp32")
        line["hf_fp32"] = hf_section(model, tokenizer, args.max_new_tokens, args.repeats, "hf_fp32")
        del model
        gc.collect()
        say("hf_bf16")
        bf16 = load_model(resolved, dtype=torch.bfloat16).eval()
        line["hf_bf16"] = hf_section(bf16, tokenizer, args.max_new_tokens, args.repeats, "hf_bf16")
        del bf16
    else:
        del model
    gc.collect()

    if run is not None:
        from peft import PeftModel

        run_tokenizer = RunFolder(run).tokenizer()  # the template training used, as serve and chat take it
        say("engine_lora")
        lora = PeftModel.from_pretrained(load_model(resolved).eval(), str(run / "adapter")).eval()
        line["engine_lora"] = engine_section(lora, run_tokenizer, args.max_new_tokens, args.repeats, "engine_lora")
        del lora
        gc.collect()
        if not args.skip_hf:
            say("hf_lora_bf16")
            # PEFT keeps LoRA weights in fp32 on a bf16 base (autocast_adapter_dtype); all bf16 here, as the engine.
            lora = PeftModel.from_pretrained(load_model(resolved, dtype=torch.bfloat16).eval(),
                                             str(run / "adapter")).to(torch.bfloat16).eval()
            line["hf_lora_bf16"] = hf_section(lora, run_tokenizer, args.max_new_tokens, args.repeats, "hf_lora_bf16")
            del lora
            gc.collect()

    if not args.skip_server:
        dtype = native_dtype()
        say("server")
        line["server"] = server_section(MODEL, dtype, args.max_new_tokens, args.repeats, "server")
        if run is not None:
            say("server_lora")
            line["server_lora"] = server_section(str(run), dtype, args.max_new_tokens, args.repeats, "server_lora")

    line["ratios"] = ratios(line)
    line.update(cpu_model=cpu_model(), platform=platform.platform(), machine=platform.machine(),
                cpu_count=os.cpu_count(),
                load_avg_start=[round(v, 2) for v in load_start],
                load_avg_end=[round(v, 2) for v in os.getloadavg()], **git_state())
    print(json.dumps(line))


if __name__ == "__main__":
    main()
