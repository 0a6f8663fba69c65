"""The candidates a fine-tune has to beat, and the fine-tunes themselves.

Every candidate answers the same test prompts with the same tokenizer (the run's, which carries the chat
template it was trained with), so the only thing that differs between them is what the issue is about:
prompting, retrieval, or training.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunekit.config import ProjectConfig
from tunekit.config_stages import BUILTIN_CANDIDATES
from tunekit.data.records import Example
from tunekit.errors import ConfigError, UserError
from tunekit.results import BASELINE_KINDS, FINETUNED, Kind
from tunekit.runfolder import RunFolder


@dataclass
class CandidateSpec:
    name: str
    kind: Kind
    source: str  # the model name or the run/model folder
    skip_reason: str | None = None
    retrieved: list[list[str]] = field(default_factory=list)  # rag: chunk ids per test row

    @property
    def is_baseline(self) -> bool:
        return self.kind in BASELINE_KINDS


def finetuned_run_dir(cfg: ProjectConfig) -> Path:
    return Path(cfg.eval.run).resolve() if cfg.eval.run else cfg.run_path()


def plan_candidates(cfg: ProjectConfig) -> list[CandidateSpec]:
    """Check every candidate named in the config, before any model loads."""
    from tunekit.models.runs import is_run

    specs = []
    allowed = [*BUILTIN_CANDIDATES, *cfg.eval.compare]
    for name in cfg.eval.candidates:
        if name in BASELINE_KINDS:
            specs.append(CandidateSpec(name, name, cfg.model.name, _rag_skip_reason(cfg) if name == "rag" else None))
        elif name == FINETUNED:
            run_dir = finetuned_run_dir(cfg)
            if not is_run(run_dir):
                raise UserError(f"no finished run to evaluate as '{FINETUNED}'", where=str(run_dir),
                                fix="run `tunekit train CONFIG` first, or set eval.run to a run folder")
            specs.append(CandidateSpec(name, FINETUNED, str(run_dir)))
        elif name in cfg.eval.compare:
            path = (cfg.base_dir / cfg.eval.compare[name]).resolve()
            specs.append(CandidateSpec(name, "compare", str(_compare_source(path, name))))
        else:
            raise ConfigError(f"unknown candidate '{name}'; allowed: {', '.join(allowed)}", where="eval.candidates",
                              fix="add other models or runs under eval.compare: {name: path}")
    if len({s.name for s in specs}) != len(specs):
        raise ConfigError("a candidate is listed twice", where="eval.candidates")
    if not specs:
        raise ConfigError("no candidates to evaluate", where="eval.candidates")
    return specs


def _rag_skip_reason(cfg: ProjectConfig) -> str | None:
    if not (cfg.rag.index or cfg.rag.docs):
        return "no retrieval index configured (set rag.index, or rag.docs to build one)"
    try:
        import tunekit.rag.retrieve  # noqa: F401
    except ImportError as exc:
        return f"retrieval is unavailable: {exc}"
    return None


def few_shot_examples(train: list[Example], k: int, seed: int) -> list[Example]:
    """k train examples drawn with a fixed seed: never from the test split, the same for every test row."""
    usable = [e for e in train if e.messages and e.messages[-1]["role"] == "assistant"]
    if not usable:
        raise UserError("few_shot needs a train split with answers", fix="run `tunekit data prepare` first")
    return random.Random(seed).sample(usable, min(k, len(usable)))


def with_shots(prompt: list[dict[str, str]], shots: list[Example]) -> list[dict[str, str]]:
    """System turn first, then the shots as earlier user/assistant turns, then the question."""
    system = [m for m in prompt if m["role"] == "system"]
    rest = [m for m in prompt if m["role"] != "system"]
    turns = [m for shot in shots for m in shot.messages if m["role"] != "system"]
    return [*system, *turns, *rest]


def build_prompts(spec: CandidateSpec, prompts: list[list[dict[str, str]]], cfg: ProjectConfig,
                  train: list[Example]) -> list[list[dict[str, str]]]:
    if spec.kind == "few_shot":
        shots = few_shot_examples(train, cfg.eval.few_shot_k, cfg.data.split.seed)
        return [with_shots(p, shots) for p in prompts]
    if spec.kind == "rag":
        from tunekit.rag.grounding import Grounding
        from tunekit.rag.prompt import query_from_messages
        from tunekit.rag.retrieve import Retriever

        retriever, grounding = Retriever.from_config(cfg), Grounding.from_config(cfg)
        grounded = []
        for prompt in prompts:
            hits = retriever.search(query_from_messages(prompt))
            spec.retrieved.append([h.chunk_id for h in hits])
            grounded.append(grounding.messages(prompt, hits))
        return grounded
    return prompts


@contextmanager
def loaded_model(spec: CandidateSpec, cfg: ProjectConfig) -> Iterator[tuple[Any, Any]]:
    """(model, tokenizer) for one candidate, released afterwards: one model in memory at a time."""
    import gc

    from tunekit.models.runs import is_run, load_run

    if not spec.is_baseline and is_run(Path(spec.source)):
        run = load_run(Path(spec.source))
        model, tokenizer = run.model, run.tokenizer
    elif spec.kind == "compare" and spec.source.lower().endswith(".gguf"):
        from tunekit.export.proof import load_gguf

        # Dequantized to fp32 by transformers: the answers are the file's weights', the latency is not llama.cpp's.
        model, _ = load_gguf(Path(spec.source))
        tokenizer = eval_tokenizer(cfg)  # every candidate reads the same prompts the same way
    else:
        model = _load_plain(Path(spec.source) if spec.kind == "compare" else None, cfg)
        tokenizer = eval_tokenizer(cfg)
    try:
        yield model, tokenizer
    finally:
        del model
        gc.collect()


def _compare_source(path: Path, name: str) -> Path:
    """What an eval.compare entry names: a run, a model folder, or a `tunekit export` GGUF (file or folder)."""
    from tunekit.models.runs import is_run

    if is_run(path) or (path / "config.json").is_file():
        return path
    from tunekit.export.proof import exported_gguf  # imports torch: only for what is neither run nor model folder

    gguf = exported_gguf(path)
    if gguf is None:
        raise ConfigError("not a run folder, a local model folder, a .gguf file or a `tunekit export` folder",
                          where=f"eval.compare.{name} ({path})")
    return gguf


def _load_plain(folder: Path | None, cfg: ProjectConfig) -> Any:
    from tunekit.models.load import load_model
    from tunekit.models.resolve import resolve_model

    resolved = resolve_model(str(folder) if folder else cfg.model.name, trust_remote_code=cfg.model.trust_remote_code)
    return load_model(resolved, trust_remote_code=cfg.model.trust_remote_code).eval()


def eval_tokenizer(cfg: ProjectConfig) -> Any:
    """The run's tokenizer when there is a run (the template training used), else the base model's."""
    from tunekit.models.load import load_chat_tokenizer
    from tunekit.models.resolve import resolve_model

    run = RunFolder(finetuned_run_dir(cfg))
    if run.tokenizer_dir.is_dir():
        return run.tokenizer()
    resolved = resolve_model(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code)
    return load_chat_tokenizer(resolved, trust_remote_code=cfg.model.trust_remote_code)
