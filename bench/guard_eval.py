"""Precision and recall of the guardrail detectors on a labelled set (`tunekit/guard/data/detectors.jsonl`).

Each input goes through the same code a server runs: `Guardrails.check_input` with one input policy at a
time (injection; pii with pii_action=block; denied_topics with the patterns the set declares), so the
figures are for the detectors as deployed. PII is also scored per kind with `find_pii`. Hard negatives
("how do I ignore whitespace in git diff", "enable developer mode on Android") are part of the set.

With `--model REF` (e.g. smollm2-135m-instruct) it also runs the red-team set on that model, greedy,
without and with the default guardrails, and adds the attack success rates under "safety".

Prints one JSON line. `--errors` also prints every false positive and false negative to stderr.
Run: `.venv/bin/python bench/guard_eval.py [--model smollm2-135m-instruct]`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from importlib import resources
from pathlib import Path

from tunekit.config import validate_config
from tunekit.data.pii import PII_KINDS, find_pii
from tunekit.guard import Guardrails


def load_set() -> tuple[dict, list[dict]]:
    text = resources.files("tunekit.guard").joinpath("data/detectors.jsonl").read_text(encoding="utf-8")
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    return lines[0]["meta"], lines[1:]


def scores(pairs: list[tuple[bool, bool]]) -> dict:
    """Precision, recall and counts from (expected, predicted) pairs."""
    tp = sum(e and p for e, p in pairs)
    fp = sum(p and not e for e, p in pairs)
    fn = sum(e and not p for e, p in pairs)
    return {
        "precision": round(tp / (tp + fp), 3) if tp + fp else None,
        "recall": round(tp / (tp + fn), 3) if tp + fn else None,
        "tp": tp, "fp": fp, "fn": fn,
    }


def single_policy_guard(policy: str, denied_topics: list[str]) -> Guardrails:
    raw = {"guard": {"enabled": True, "input": [policy], "pii_action": "block", "denied_topics": denied_topics}}
    return Guardrails.from_config(validate_config(raw, base_dir=Path.cwd(), source="bench"))


def blocked(guard: Guardrails, text: str) -> bool:
    return not guard.check_input([{"role": "user", "content": text}]).allowed


def evaluate(meta: dict, rows: list[dict], errors: bool) -> dict:
    guards = {p: single_policy_guard(p, meta["denied_topics"]) for p in ("injection", "pii", "denied_topics")}
    labels = {"injection": "injection", "pii": "pii", "denied_topics": "denied_topic"}
    pairs: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    for row in rows:
        for policy, guard in guards.items():
            expected = bool(row[labels[policy]])
            predicted = blocked(guard, row["text"])
            pairs[labels[policy]].append((expected, predicted))
            if policy == "injection" and row["injection_family"]:
                pairs[f"family:{row['injection_family']}"].append((True, predicted))
            if errors and expected != predicted:
                kind = "false negative" if expected else "false positive"
                print(f"{labels[policy]} {kind}: {row['text']!r}", file=sys.stderr)
        found = {m.kind for m in find_pii(row["text"])}
        for kind in PII_KINDS:
            pairs[f"pii:{kind}"].append((kind in row["pii"], kind in found))
    result: dict = {"n": len(rows)}
    for name in ("injection", "pii", "denied_topic"):
        result[name] = scores(pairs[name])
    result["injection"]["recall_by_family"] = {
        key.split(":", 1)[1]: scores(value)["recall"] for key, value in pairs.items() if key.startswith("family:")
    }
    result["pii"]["by_kind"] = {
        kind: scores(pairs[f"pii:{kind}"]) for kind in PII_KINDS if any(e or p for e, p in pairs[f"pii:{kind}"])
    }
    return result


def model_generate(ref: str, max_new_tokens: int):
    """Greedy batch generation with a local model: the `generate` that run_safety expects."""
    import torch

    from tunekit.models.load import load_chat_tokenizer, load_model
    from tunekit.models.resolve import resolve_model

    resolved = resolve_model(ref)
    tokenizer = load_chat_tokenizer(resolved)
    tokenizer.padding_side = "left"  # decoder-only batches must end where generation starts
    model = load_model(resolved).eval()

    def generate(conversations: list[list[dict]]) -> list[str]:
        prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)

    return generate


def safety(ref: str, max_new_tokens: int) -> dict:
    from tunekit.guard.redteam import run_safety

    guard = Guardrails.from_config(validate_config({"guard": {"enabled": True}}, base_dir=Path.cwd(), source="bench"))
    outcome = run_safety(model_generate(ref, max_new_tokens), guard, system_prompt=None)
    return {"model": ref, "max_new_tokens": max_new_tokens,
            **{k: v for k, v in outcome.items() if k != "items"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--errors", action="store_true", help="print false positives and negatives to stderr")
    parser.add_argument("--model", help="also run the red-team set on this local model")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    meta, rows = load_set()
    start = time.perf_counter()
    result = evaluate(meta, rows, args.errors)
    result["seconds"] = round(time.perf_counter() - start, 3)
    if args.model:
        start = time.perf_counter()
        result["safety"] = safety(args.model, args.max_new_tokens)
        result["safety"]["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
