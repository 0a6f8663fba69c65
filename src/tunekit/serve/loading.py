"""What one server serves: a base model loaded once, and any number of adapters on it, each by name.

As vLLM's multi-LoRA serving does, the request's `model` field picks the adapter.
Adapters are refused when their run was trained on another base model, with another kind of adapter, or
with another chat template than the one being served: all three would make answers silently differ from
what was trained and evaluated. Adapter names are keys in a dict, never parts of a path.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunekit.config import ProjectConfig
from tunekit.errors import UserError
from tunekit.runfolder import RunFolder
from tunekit.serve.errors import ApiError, model_not_found

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


@dataclass
class ServedAdapter:
    name: str
    run_dir: Path
    cfg: ProjectConfig
    peft_type: str

    @property
    def adapter_dir(self) -> Path:
        return RunFolder(self.run_dir).adapter_dir


@dataclass
class ServedModels:
    base_name: str  # the base model's name: what adapters apply to, and the bare base's served id
    model: Any  # a PeftModel holding every adapter, or a plain transformers model
    tokenizer: Any  # the one chat template everything here was trained with
    adapters: dict[str, ServedAdapter] = field(default_factory=dict)
    full_run: tuple[str, Path] | None = None  # a run with full weights (no adapter): (name, run folder)
    primary_cfg: ProjectConfig | None = None  # the first run's config
    base_path: Path | None = None  # the base model's folder, which adapters loaded later must be trained on

    @property
    def names(self) -> list[str]:
        # With adapters loaded the bare base is not offered: tunekit's generator always decodes with one
        # adapter active (PEFT's switch is state of the whole model, shared by the batch being decoded).
        if self.full_run:
            return [self.full_run[0]]
        return list(self.adapters) if self.adapters else [self.base_name]

    def adapter_for(self, name: str) -> str | None:
        """The adapter to generate with for a requested model name (None: the model has no adapters)."""
        if name in self.adapters:
            return name
        if name in self.names:
            return None
        raise model_not_found(name, self.names)

    def runs(self) -> dict[str, Path]:
        """Every served name that comes from a training run, with the run folder (for preflight)."""
        runs = {name: a.run_dir for name, a in self.adapters.items()}
        if self.full_run:
            runs[self.full_run[0]] = self.full_run[1]
        return runs


def parse_adapter_specs(specs: list[str]) -> list[tuple[str, Path]]:
    """`NAME=RUN` pairs from the command line, names checked and unique."""
    pairs = []
    for spec in specs:
        name, sep, run = spec.partition("=")
        if not sep or not run:
            raise UserError(f"--adapter '{spec}' is not NAME=RUN", fix="e.g. --adapter support=runs/support")
        pairs.append((check_name(name.strip()), Path(run.strip())))
    return pairs


def check_name(name: str, where: str = "--adapter") -> str:
    if not NAME_PATTERN.match(name):
        raise UserError(f"model name '{name}' is not allowed", where=where,
                        fix="use 1-64 letters, digits, '.', '_', ':' or '-', starting with a letter or digit")
    return name


def load_served(target: str, adapters: list[tuple[str, Path]], *, name: str | None = None,
                dtype: torch.dtype = torch.float32, say: Any = print, weights: bool = True) -> ServedModels:
    """Load `target` (a run folder or a model reference) and the `adapters` (name, run folder) on top.
    Without `weights` everything is resolved and checked but no model is loaded (`model` is None): another
    engine decodes (serve/remote.py)."""
    from tunekit.models.runs import is_run

    runs: list[tuple[str, Path]] = []
    if is_run(Path(target)):
        run_dir = Path(target).resolve()
        runs.append((check_name(name or run_dir.name), run_dir))
    for adapter_name, run in adapters:
        if not is_run(run):
            raise UserError("not a finished tunekit run (no config.yaml with adapter/)", where=str(run),
                            fix=f"pass the run folder `tunekit train` printed, as --adapter {adapter_name}=RUN")
        runs.append((adapter_name, run.resolve()))
    duplicates = {n for n, _ in runs if [m for m, _ in runs].count(n) > 1}
    if duplicates:
        raise UserError(f"model name(s) {sorted(duplicates)} given twice", fix="give each adapter its own NAME")
    if runs and RunFolder(runs[0][1]).model_dir.is_dir():
        return _load_full_run(runs, dtype, weights)
    target_is_run = bool(runs) and runs[0][1] == Path(target).resolve()
    return _load_base_and_adapters(None if target_is_run else target, runs, dtype, say, weights)


def adapter_to_add(served: ServedModels, name: str, run: Path) -> ServedAdapter:
    """`run` as an adapter to add while serving, as `name`: checked as the ones given at start were (same base,
    chat template and kind of adapter), before any weight is read. An ApiError says what is wrong."""
    from tunekit.models.runs import is_run

    try:
        check_name(name, where="lora_name")
    except UserError as exc:
        raise ApiError(400, exc.render(), param="lora_name") from exc
    if served.full_run or not served.adapters or served.base_path is None:
        raise ApiError(409, "This server was started without adapters, so its model is not a PeftModel and cannot "
                       "take one: start it with at least one adapter (--adapter NAME=RUN).", code="no_adapters")
    if name in served.adapters:
        raise ApiError(409, f"An adapter named '{name}' is already loaded: unload it first or choose another "
                       "lora_name.", param="lora_name", code="adapter_exists")
    try:
        finished = is_run(run)
    except (OSError, ValueError):  # e.g. a NUL byte in the path
        finished = False
    if not finished:
        raise ApiError(400, f"lora_path '{run}' is not a finished tunekit run (no config.yaml with adapter/).",
                       param="lora_path")
    try:
        return _checked_adapter(name, run.resolve(), RunFolder(run).config(), served.base_path, served.tokenizer,
                                served.adapters)
    except UserError as exc:
        raise ApiError(400, exc.render(), param="lora_path") from exc


def _load_full_run(runs: list[tuple[str, Path]], dtype: torch.dtype, weights: bool) -> ServedModels:
    from tunekit.models.runs import load_run

    if len(runs) > 1:
        raise UserError("adapters can only be served on a base model, not on a fully fine-tuned run",
                        where=str(runs[0][1]), fix="serve the base model and pass each adapter run as --adapter")
    name, run_dir = runs[0]
    folder = RunFolder(run_dir)
    if weights:
        loaded = load_run(run_dir, dtype=dtype)
        model, tokenizer, cfg = loaded.model, loaded.tokenizer, loaded.cfg
    else:
        model, tokenizer, cfg = None, folder.tokenizer(), folder.config()
    folder.check_template(tokenizer)
    return ServedModels(cfg.model.name, model, tokenizer, full_run=(name, run_dir), primary_cfg=cfg)


def _load_base_and_adapters(model_ref: str | None, runs: list[tuple[str, Path]], dtype: torch.dtype,
                            say: Any, weights: bool = True) -> ServedModels:
    from tunekit.models.load import load_chat_tokenizer, load_model
    from tunekit.models.resolve import resolve_model

    configs = [RunFolder(run_dir).config() for _, run_dir in runs]
    base_cfg = configs[0] if configs else None
    ref = model_ref or base_cfg.model.name  # type: ignore[union-attr]
    trust = base_cfg.model.trust_remote_code if base_cfg else False
    resolved = resolve_model(ref, trust_remote_code=trust)
    # The first run's tokenizer is the template training used; every other adapter must match it.
    tokenizer = (RunFolder(runs[0][1]).tokenizer() if runs
                 else load_chat_tokenizer(resolved, trust_remote_code=trust, say=say))
    served: dict[str, ServedAdapter] = {}
    for (name, run_dir), cfg in zip(runs, configs):
        served[name] = _checked_adapter(name, run_dir, cfg, resolved.path, tokenizer, served)
    model = None
    if weights:
        model = _attach_adapters(load_model(resolved, dtype=dtype, trust_remote_code=trust).eval(), served)
    return ServedModels(resolved.name, model, tokenizer, served, primary_cfg=base_cfg, base_path=resolved.path)


def _checked_adapter(name: str, run_dir: Path, cfg: ProjectConfig, base_path: Path, tokenizer: Any,
                     earlier: dict[str, ServedAdapter]) -> ServedAdapter:
    from tunekit.models.resolve import resolve_model

    folder = RunFolder(run_dir)
    if folder.model_dir.is_dir():
        raise UserError("this run holds full weights, not an adapter, so it cannot share a base model",
                        where=str(run_dir), fix="serve it on its own: `tunekit serve RUN`")
    run_base = resolve_model(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code).path
    if run_base.resolve() != base_path.resolve():
        raise UserError(f"adapter '{name}' was trained on {cfg.model.name} ({run_base}), not on the served "
                        f"base model ({base_path})", where=str(run_dir),
                        fix="serve adapters of one base model together; start another server for this one")
    run_tokenizer = folder.tokenizer()
    folder.check_template(run_tokenizer)
    if run_tokenizer.chat_template != tokenizer.chat_template:
        raise UserError(f"adapter '{name}' was trained with a different chat template than the one served",
                        where=str(folder.tokenizer_dir),
                        fix="serve it with its own server: `tunekit serve RUN`, so it keeps its template")
    peft_type = json.loads((folder.adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))["peft_type"]
    for other in earlier.values():
        if other.peft_type != peft_type:
            raise UserError(f"adapter '{name}' is {peft_type} but '{other.name}' is {other.peft_type}; PEFT holds "
                            "one kind of adapter per model", where=str(run_dir),
                            fix="serve adapters of different methods from separate servers")
    return ServedAdapter(name, run_dir, cfg, peft_type)


def _attach_adapters(base: Any, adapters: dict[str, ServedAdapter]) -> Any:
    if not adapters:
        return base
    from peft import PeftModel

    from tunekit.methods import fix_prompt_learning_generate

    items = list(adapters.values())
    model = PeftModel.from_pretrained(base, str(items[0].adapter_dir), adapter_name=items[0].name)
    for adapter in items[1:]:
        model.load_adapter(str(adapter.adapter_dir), adapter_name=adapter.name)
    model.set_adapter(items[0].name)
    return fix_prompt_learning_generate(model).eval()
