"""`tunekit merge RUN`: fold the adapter into the base weights, then prove the result answers the same.

The merged model is written as plain safetensors that `AutoModelForCausalLM.from_pretrained` loads
with no PEFT installed; before reporting success, it is loaded back from disk and its greedy outputs
on validation prompts are compared with base+adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunekit.errors import UserError
from tunekit.io import atomic_dir
from tunekit.models.runs import LoadedRun, load_run, validation_prompts
from tunekit.runfolder import RunFolder

CHECK_PROMPTS = 4
CHECK_TOKENS = 24


@dataclass
class MergeResult:
    path: Path
    checked: int
    identical: int
    mismatches: list[dict[str, str]]


def merge_run(run_dir: Path) -> MergeResult:
    from transformers import AutoModelForCausalLM

    run = load_run(run_dir)
    if run.kind != "adapter":
        raise UserError("this run trained full weights; there is no adapter to merge", where=str(run_dir),
                        fix="use RUN/model directly")
    prompts = validation_prompts(run_dir, CHECK_PROMPTS) or [[{"role": "user", "content": "Hello!"}]]
    expected = greedy(run.model, run.tokenizer, prompts)
    merged = fold_adapter(run)
    target = RunFolder(run_dir).merged_dir
    with atomic_dir(target, replace=True) as tmp:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        run.tokenizer.save_pretrained(str(tmp))
    reloaded = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32, use_safetensors=True,
                                                    local_files_only=True).eval()
    got = greedy(reloaded, run.tokenizer, prompts)
    mismatches = [{"expected": e, "got": g} for e, g in zip(expected, got) if e != g]
    return MergeResult(target, len(prompts), len(prompts) - len(mismatches), mismatches)


def fold_adapter(run: LoadedRun) -> Any:
    """The run as one plain transformers model: the adapter folded into the base weights (in place, so `run.model`
    is spent), or the full weights as they are."""
    if run.kind != "adapter":
        return run.model
    if not hasattr(run.model, "merge_and_unload"):  # prefix/prompt tuning: virtual tokens, no weight update
        method = run.cfg.method.name
        raise UserError(f"a {method} adapter adds virtual tokens, not weight updates: it cannot be folded into the "
                        "model's weights", where=str(run.run_dir), fix="use lora, dora, ia3 or a full fine-tune")
    return run.model.merge_and_unload()


@torch.no_grad()
def greedy(model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]]) -> list[str]:
    outputs = []
    for messages in conversations:  # one at a time: no padding, so nothing but the weights can differ
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        out = model.generate(**ids, max_new_tokens=CHECK_TOKENS, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        outputs.append(tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))
    return outputs
