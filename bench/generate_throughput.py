"""Generation throughput: tunekit's batched engine against plain HF `generate`, same machine, same run.

Runs ../shared/bench/baseline_generate.py (HF generate, fp32, greedy, batch 1 and batch 8) as a
subprocess, then tunekit's Generator on the same prompts of the same file with the same model: once in
fp32 (its greedy outputs are compared with HF generate run on each prompt alone, in fp32) and once in
the default dtype (bf16 on CPUs with native bf16) for speed, whose outputs are compared with the same
fp32 reference. Prints one JSON line: tunekit tokens/s and p50/p95 latency, the baseline's batch-1 and
best batched tokens/s, the two ratios, and the identity checks.

The constrained run (issue #20) asks every prompt for a JSON reply and generates it twice in the default dtype,
free and under a JSON schema (constrained decoding, generate/constraints.py): "constrained" holds both
tokens/s, the ratio (target: at least 0.8) and how many replies of each validate against the schema.

  .venv/bin/python bench/generate_throughput.py [--num-prompts 32] [--max-new-tokens 64] [--skip-identity]
                                                [--skip-constrained]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "bench"
DATA = SHARED / "data" / "synth_eval.jsonl"
REPLY_SCHEMA = {
    "type": "object",
    "properties": {"reply": {"type": "string"}, "tone": {"enum": ["formal", "friendly", "neutral"]},
                   "follow_up": {"type": "boolean"}},
    "required": ["reply", "tone", "follow_up"],
    "additionalProperties": False,
}
JSON_INSTRUCTION = ('Answer with JSON only, as {"reply": "...", "tone": "formal" | "friendly" | "neutral", '
                    '"follow_up": true | false}.')


def run_json(cmd: list[str]) -> dict:
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def prompts_of(path: Path, n: int) -> list[list[dict]]:
    """The first n conversations without their answers, as baseline_generate.py picks them."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()][:n]
    return [[m for m in r["messages"] if m.get("role") != "assistant"] or r["messages"][:1] for r in rows]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def timed_generate(gen, prompts: list, params) -> tuple[dict, list[str]]:
    start = time.perf_counter()
    outs = gen.generate(prompts, params)
    wall = time.perf_counter() - start
    tokens = sum(o.completion_tokens for o in outs)
    figures = {
        "dtype": gen.device.dtype_name, "max_batch_size": gen.limits.max_batch_size, "generated_tokens": tokens,
        "wall_s": round(wall, 2), "tokens_per_s": round(tokens / wall, 1),
        "requests_per_s": round(len(outs) / wall, 3),
        "latency_p50_s": round(percentile([o.latency_s for o in outs], 50), 3),
        "latency_p95_s": round(percentile([o.latency_s for o in outs], 95), 3),
        "ttft_p50_s": round(percentile([o.ttft_s for o in outs], 50), 3),
    }
    return figures, [o.text for o in outs]


def hf_reference(model, tokenizer, texts: list[str], max_new_tokens: int, eos_ids: list[int]) -> list[str]:
    """HF generate on each prompt alone (no padding), fp32, greedy: the outputs tunekit must reproduce."""
    import torch

    answers = []
    for text in texts:
        enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos_ids,
                                 pad_token_id=tokenizer.pad_token_id)
        answers.append(tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))
    return answers


def common_prefix_share(a: str, b: str) -> float:
    """How much of the reference answer `b` the answer `a` reproduces before they first differ."""
    if not b:
        return 1.0 if not a else 0.0
    same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return same / max(len(a), len(b))


def constrained_run(gen, prompts: list, max_new_tokens: int) -> dict:
    """The same JSON-asking prompts free and under REPLY_SCHEMA: tokens/s of each, and how many replies validate."""
    import jsonschema

    from tunekit.generate import Constraint, GenerationParams

    asking = [[{"role": "system", "content": JSON_INSTRUCTION}, *p] for p in prompts]
    free = GenerationParams(max_new_tokens=max_new_tokens)
    forced = GenerationParams(max_new_tokens=max_new_tokens, constraint=Constraint.json_schema(REPLY_SCHEMA))
    gen.generate(asking[:2], forced)  # warm-up: the tokenizer's conversion for the grammar engine happens once

    def valid(text: str) -> bool:
        try:
            jsonschema.validate(json.loads(text), REPLY_SCHEMA)
        except (ValueError, jsonschema.ValidationError):
            return False
        return True

    figures = {}
    for name, params in (("unconstrained", free), ("json_schema", forced)):
        figures[name], texts = timed_generate(gen, asking, params)
        figures[name]["valid"] = sum(map(valid, texts))
    figures["ratio"] = round(figures["json_schema"]["tokens_per_s"] / figures["unconstrained"]["tokens_per_s"], 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=None, help="tunekit's rows per step (default: its own)")
    parser.add_argument("--skip-identity", action="store_true", help="no fp32 run and no HF reference")
    parser.add_argument("--skip-baseline", action="store_true", help="tunekit only (for quick iteration)")
    parser.add_argument("--skip-constrained", action="store_true", help="no JSON-schema constrained run")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT / "src"))
    from tunekit.devices import tune_cpu
    from tunekit.generate import GenerationParams, Generator
    from tunekit.models.load import load_chat_tokenizer, load_model
    from tunekit.models.resolve import EMBEDDED_DEFAULT, resolve_model
    from tunekit.quiet import offline_and_quiet

    offline_and_quiet()
    resolved = resolve_model(EMBEDDED_DEFAULT)
    result: dict = {"bench": "generate_throughput", "data_file": Path(args.data).name, "num_prompts": args.num_prompts,
                    "max_new_tokens": args.max_new_tokens, "threads": tune_cpu()}
    if not args.skip_baseline:
        base = run_json([sys.executable, str(SHARED / "baseline_generate.py"), "--data", args.data, "--num-prompts",
                         str(args.num_prompts), "--max-new-tokens", str(args.max_new_tokens),
                         "--model", str(resolved.path)])
        batched = [r for r in base["results"].values() if r["batch_size"] > 1]
        best = max(batched, key=lambda r: r["tokens_per_s"])
        result["baseline"] = {"bs1_tokens_per_s": base["results"]["bs1"]["tokens_per_s"],
                              "best_batched_tokens_per_s": best["tokens_per_s"],
                              "best_batch_size": best["batch_size"], "results": base["results"]}

    tokenizer = load_chat_tokenizer(resolved)
    model = load_model(resolved).eval()  # fp32, as the baseline loads it; the Generator makes its own copy
    prompts = prompts_of(Path(args.data), args.num_prompts)
    params = GenerationParams(max_new_tokens=args.max_new_tokens)
    fast = Generator(model, tokenizer, max_batch_size=args.max_batch_size)
    fast.generate(prompts[:2], GenerationParams(max_new_tokens=4))  # warm-up, as the baseline does
    result["tunekit"], fast_texts = timed_generate(fast, prompts, params)
    print(json.dumps({"tunekit": result["tunekit"]}), file=sys.stderr, flush=True)

    if not args.skip_constrained:
        result["constrained"] = constrained_run(fast, prompts, args.max_new_tokens)
        print(json.dumps({"constrained": result["constrained"]}), file=sys.stderr, flush=True)

    if not args.skip_identity:
        exact = Generator(model, tokenizer, dtype="fp32", max_batch_size=args.max_batch_size)
        result["tunekit_fp32"], exact_texts = timed_generate(exact, prompts, params)
        reference = hf_reference(model, tokenizer, [exact.render(p) for p in prompts], args.max_new_tokens,
                                 sorted(exact.eos_ids))
        same_fp32 = sum(a == b for a, b in zip(exact_texts, reference))
        same_fast = sum(a == b for a, b in zip(fast_texts, reference))
        result["identity"] = {
            "fp32_identical": same_fp32, "fp32_greedy_identical_to_hf": same_fp32 == len(prompts),
            "fast_dtype": result["tunekit"]["dtype"], "fast_identical": same_fast, "of": len(prompts),
            "fast_mean_common_prefix": round(sum(map(common_prefix_share, fast_texts, reference)) / len(prompts), 3),
        }

    if "baseline" in result:
        ours = result["tunekit"]["tokens_per_s"]
        result["ratio_vs_batch1"] = round(ours / result["baseline"]["bs1_tokens_per_s"], 2)
        result["ratio_vs_best"] = round(ours / result["baseline"]["best_batched_tokens_per_s"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
