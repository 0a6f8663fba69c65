"""Load what a training run produced: its base model, adapter (or full weights) and the tokenizer with
the chat template it was trained with. Chat, merge, eval and serve all come through here, so no
stage can silently use a different template than training did."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunekit.config import ProjectConfig
from tunekit.errors import UserError
from tunekit.runfolder import RunFolder


@dataclass
class LoadedRun:
    run_dir: Path
    cfg: ProjectConfig
    model: Any
    tokenizer: Any
    kind: str  # "adapter" | "model" | "merged"


def is_run(path: Path) -> bool:
    return RunFolder(path).is_finished


def load_run(run_dir: Path, *, dtype: torch.dtype = torch.float32, merged: bool = False) -> LoadedRun:
    run_dir = Path(run_dir)
    folder = RunFolder(run_dir)
    if not folder.is_finished:
        raise UserError("not a finished tunekit run (no config.yaml with adapter/ or model/)", where=str(run_dir),
                        fix="pass the run folder that `tunekit train` printed")
    cfg = folder.config()
    tokenizer = folder.tokenizer()
    trust = cfg.model.trust_remote_code
    if merged and folder.merged_dir.is_dir():
        return LoadedRun(run_dir, cfg, _load_full(folder.merged_dir, dtype, trust), tokenizer, "merged")
    if folder.model_dir.is_dir():
        return LoadedRun(run_dir, cfg, _load_full(folder.model_dir, dtype, trust), tokenizer, "model")
    return LoadedRun(run_dir, cfg, load_base_with_adapter(cfg, folder.adapter_dir, dtype).eval(), tokenizer,
                     "adapter")


def _load_full(folder: Path, dtype: torch.dtype, trust: bool) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=dtype, use_safetensors=True, local_files_only=True, trust_remote_code=trust
    )
    return model.eval()


def load_base_with_adapter(cfg: ProjectConfig, adapter_dir: Path, dtype: torch.dtype) -> Any:
    from peft import PeftModel

    from tunekit.models.load import load_model
    from tunekit.models.resolve import resolve_model

    # Adapters, QLoRA's included, are applied to a full-precision base: merging into or serving from
    # a 4-bit base is what makes merged QLoRA models lose quality.
    resolved = resolve_model(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code)
    from tunekit.methods import fix_prompt_learning_generate

    base = load_model(resolved, dtype=dtype, trust_remote_code=cfg.model.trust_remote_code)
    # PEFT's prefix/prompt generation still uses transformers 4's cache argument name (see the fix).
    return fix_prompt_learning_generate(PeftModel.from_pretrained(base, str(adapter_dir)))


def validation_prompts(run_dir: Path, n: int) -> list[list[dict[str, str]]]:
    """The first n validation conversations without their final answer."""
    path = RunFolder(run_dir).split_path("validation")
    if not path.exists():
        return []
    prompts = []
    for line in path.read_text(encoding="utf-8").splitlines()[:n]:
        messages = json.loads(line)["messages"]
        prompts.append(messages[:-1] if messages[-1]["role"] == "assistant" else messages)
    return prompts
