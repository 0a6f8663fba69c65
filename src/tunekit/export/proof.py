"""Proof that an exported GGUF answers like the model it came from.

The file is loaded back by transformers' GGUF reader, weights, tokenizer and chat template all from the
file alone, and answers the run's validation prompts greedily in fp32; so does the merged model it was
written from, with the run's own tokenizer. Both go through the same engine (tunekit.generate) with the
same prompts in the same batches, so the only thing that can differ is what the file holds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

AGREEMENT_EPS = 1e-9  # the agreement is k/n; compare with the tolerance without float noise


@dataclass
class Proof:
    prompts: int
    max_new_tokens: int
    identical: int
    min_agreement: float
    prompt_tokens_identical: int  # prompts the file's tokenizer and template encode to the run's exact ids
    weight_rel_error: float  # the worst tensor's ||W_file - W|| / ||W||
    worst_tensor: str
    update_kept: float | None = None  # share of the fine-tune's update of the adapted weights kept (LoRA runs)
    mismatches: list[dict[str, str]] = field(default_factory=list)

    @property
    def agreement(self) -> float:
        return self.identical / self.prompts if self.prompts else 1.0

    @property
    def passed(self) -> bool:
        return self.agreement + AGREEMENT_EPS >= self.min_agreement


def greedy_answers(model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]], max_new_tokens: int) -> list[str]:
    """Greedy fp32 answers from tunekit's engine: the same decoding eval and serve use."""
    from tunekit.generate import GenerationParams, Generator

    generator = Generator(model, tokenizer, dtype="fp32")
    return [g.text for g in generator.generate(prompts, GenerationParams(max_new_tokens=max_new_tokens))]


def exported_gguf(path: Path) -> Path | None:
    """The model GGUF `path` names: the file itself, or the one an export folder's report names; else None.
    (How eval can take an export as a candidate: `load_gguf(exported_gguf(path))`.)"""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".gguf":
        return path
    report = path / "export_report.json"
    if path.is_dir() and report.is_file():
        name = json.loads(report.read_text(encoding="utf-8")).get("file")
        return path / name if name and (path / name).is_file() else None
    return None


def load_gguf(path: Path) -> tuple[Any, Any]:
    """The model and tokenizer transformers rebuilds from the file (dequantized to fp32)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _no_progress_bar():
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    # The weights are plain fp32 now. With the GGUF "quantizer" still attached the engine takes the model for a
    # quantized one and decodes it one prompt at a time (10-20x slower); the answers would be the same.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    return model.eval(), tokenizer


@contextmanager
def _no_progress_bar() -> Iterator[None]:
    """transformers' GGUF reader draws its own tqdm bar, which its disable_progress_bar() does not reach."""
    import transformers.modeling_gguf_pytorch_utils as reader

    original = getattr(reader, "tqdm", None)
    if original is None:
        yield
        return
    reader.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        reader.tqdm = original


def prove(path: Path, reference: Any, expected: list[str], run_tokenizer: Any, prompts: list[list[dict[str, str]]],
          max_new_tokens: int, min_agreement: float, updates: dict[str, tuple[Any, Any]] | None = None) -> Proof:
    """Load `path` back and compare its greedy answers with `expected` (the reference model's). `updates` maps
    weight names to the fine-tune's update of them as (a, b), the update being b @ a."""
    model, tokenizer = load_gguf(path)
    got = greedy_answers(model, tokenizer, prompts, max_new_tokens)
    error, worst = weight_error(reference, model)
    mismatches = [{"prompt": _last_user(p), "expected": e, "got": g}
                  for p, e, g in zip(prompts, expected, got) if e != g]
    same_ids = sum(_ids(run_tokenizer, p) == _ids(tokenizer, p) for p in prompts)
    return Proof(len(prompts), max_new_tokens, len(prompts) - len(mismatches), min_agreement, same_ids, error,
                 worst, update_kept(reference, model, updates or {}), mismatches)


@torch.no_grad()
def weight_error(reference: Any, reloaded: Any) -> tuple[float, str]:
    """The worst relative difference between a weight the file gave back and the one it was written from."""
    loaded = reloaded.state_dict()
    worst, name = 0.0, ""
    for key, weight in reference.state_dict().items():
        if key not in loaded:
            continue
        weight = weight.float()
        error = float((loaded[key].float() - weight).norm() / weight.norm().clamp_min(1e-12))
        if error > worst:
            worst, name = error, key
    return worst, name


@torch.no_grad()
def update_kept(reference: Any, reloaded: Any, updates: dict[str, tuple[Any, Any]]) -> float | None:
    """How much of the fine-tune's update of the adapted weights the file keeps: the projection of its change from
    the base weights onto the update, over the update's size. About 1: kept; near 0: quantization snapped the
    weights back onto the base's values (4-bit types do that to a small update of a base that was itself
    4-bit). Random quantization noise mostly misses the update's direction, so it moves this little; error that
    follows the base's own grid can push it past 1."""
    merged, loaded = reference.state_dict(), reloaded.state_dict()
    dot = size = 0.0
    for name, (a, b) in updates.items():
        if name in merged and name in loaded:
            delta = b @ a
            change = loaded[name].float() - (merged[name].float() - delta)
            dot += float((change * delta).sum())
            size += float(delta.square().sum())
    return dot / size if size else None


def _ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _last_user(messages: list[dict[str, str]]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
