"""`export_gguf`: a run as a GGUF file, a LoRA adapter file where the format allows, an Ollama Modelfile and
the proof that the file answers like the fine-tune, all in one folder that appears whole or not at all."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunekit.errors import UserError, require
from tunekit.export.gguf_model import check_exportable, write_model
from tunekit.export.lora import WrittenAdapter, lora_modules, unsupported_reason, write_adapter
from tunekit.export.modelfile import build_modelfile
from tunekit.export.proof import greedy_answers, prove
from tunekit.export.quants import Quant, get_quant
from tunekit.export.report import ExportFacts, report_json, report_md
from tunekit.export.vocab import read_vocab
from tunekit.io import atomic_dir, write_json_atomic, write_text_atomic
from tunekit.models.runs import LoadedRun, load_run, validation_prompts
from tunekit.runfolder import RunFolder

DEFAULT_PROMPTS = 16
FALLBACK_PROMPTS = [[{"role": "user", "content": "Hello! What can you do?"}]]
REPORT_JSON, REPORT_MD = "export_report.json", "export_report.md"
ADAPTER_CHECK = 1e-5  # an adapter file further than this from PEFT's update is a bug, not a rounding
UPDATE_KEPT_WARNING = 0.25  # below it the file has lost most of what fine-tuning changed


@dataclass
class ExportResult:
    out_dir: Path
    gguf: Path
    report: dict[str, Any]

    @property
    def passed(self) -> bool:
        return bool(self.report["proof"]["passed"])


def export_gguf(run_dir: Path, quant_name: str, *, out: Path | None = None, prompts: int = DEFAULT_PROMPTS,
                max_new_tokens: int | None = None, min_agreement: float | None = None,
                say: Callable[[str], None] = lambda _: None) -> ExportResult:
    require("gguf", "GGUF export")
    quant = get_quant(quant_name)  # a bad --quant fails before any model loads
    if min_agreement is not None and not 0 <= min_agreement <= 1:
        raise UserError(f"must be between 0 and 1, got {min_agreement}", where="--min-agreement")
    target = Path(out) if out is not None else RunFolder(Path(run_dir)).export_dir("gguf", quant.name)
    _check_target(target)
    timings: dict[str, float] = {}
    with _timed(timings, "load"):
        run = load_run(Path(run_dir))
        RunFolder(run.run_dir).check_template(run.tokenizer)
        check_exportable(run.model.config)
        conversations = validation_prompts(run.run_dir, prompts)
    warnings = [] if conversations else ["the run has no validation split: the proof used one generic prompt"]
    with atomic_dir(target, replace=True) as tmp:
        facts = _export_into(tmp, run, quant, conversations or FALLBACK_PROMPTS,
                             max_new_tokens or run.cfg.eval.max_new_tokens,
                             quant.min_agreement if min_agreement is None else min_agreement, timings, say)
        facts.warnings[:0] = warnings
        data = report_json(facts)
        write_json_atomic(tmp / REPORT_JSON, data)
        write_text_atomic(tmp / REPORT_MD, report_md(data))
    return ExportResult(target, target / facts.model.path.name, data)


def _check_target(target: Path) -> None:
    """The output folder is replaced whole: only an earlier export (or nothing, or an empty folder) may be there."""
    if target.is_file() or (target.is_dir() and any(target.iterdir()) and not (target / REPORT_JSON).is_file()):
        raise UserError("exists and is not an earlier export: tunekit replaces the output folder whole",
                        where=str(target), fix="pass --out with a new folder, or an earlier export's folder")


def _export_into(folder: Path, run: LoadedRun, quant: Quant, prompts: list[list[dict[str, str]]],
                 max_new_tokens: int, min_agreement: float, timings: dict[str, float],
                 say: Callable[[str], None]) -> ExportFacts:
    from tunekit.train.merge import fold_adapter

    stem, general, base_gguf = _slug(run.cfg.project), _general(run), _base_gguf(run)
    vocab = read_vocab(run.tokenizer, run.model.config.vocab_size)  # an unsupported tokenizer fails here, early
    with _timed(timings, "adapter_and_merge"):
        adapter, skipped, updates = _adapter(folder / f"{stem}-lora.gguf", run, general)
        merged = fold_adapter(run)  # after the adapter file: folding spends the PEFT model
    say(f"answering {len(prompts)} validation prompts with the merged model")
    with _timed(timings, "reference_answers"):
        expected = greedy_answers(merged, run.tokenizer, prompts, max_new_tokens)
    say(f"writing {quant.name} GGUF")
    with _timed(timings, "write"):
        sampling = generation_defaults(merged)
        written = write_model(folder / f"{stem}-{quant.name}.gguf", merged, vocab, quant, general, sampling)
        modelfile = build_modelfile(written.path.name, run.tokenizer, run.cfg.data.system_prompt, sampling,
                                    adapter.path.name if adapter else None, base_gguf)
        write_text_atomic(folder / "Modelfile", modelfile.text)
    say("loading the file back and answering the same prompts")
    with _timed(timings, "proof"):
        proof = prove(written.path, merged, expected, run.tokenizer, prompts, max_new_tokens, min_agreement,
                      updates)
    warnings = [*vocab.warnings, *modelfile.warnings]
    if proof.update_kept is not None and proof.update_kept < UPDATE_KEPT_WARNING:
        warnings.append(f"{quant.name} keeps {proof.update_kept:.0%} of the fine-tune's update of the weights: its "
                        "grid is coarser than the update, so the file answers more like the base model; use q8_0")
    return ExportFacts(run.run_dir, quant, written, vocab.pre, modelfile, proof, adapter, skipped, base_gguf,
                       timings, warnings)


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - start


def _adapter(path: Path, run: LoadedRun, general: dict[str, str]) -> tuple[WrittenAdapter | None, str | None, dict]:
    """The LoRA adapter as a llama.cpp adapter file (or why there is none), and its update of each weight."""
    if run.kind != "adapter":
        return None, "the run trained full weights", {}
    reason = unsupported_reason(run.model)
    if reason is not None:
        return None, reason, {}
    modules = lora_modules(run.model)
    written = write_adapter(path, run.model, general, modules)
    if written.max_rel_error > ADAPTER_CHECK:
        raise RuntimeError(f"the adapter file's update differs from PEFT's by {written.max_rel_error:.2e}")
    return written, None, {f"{m.hf_name}.weight": (m.a, m.b) for m in modules}


def generation_defaults(model: Any) -> dict[str, float]:
    """llama.cpp's `general.sampling.*` defaults: the model's own sampling settings, or greedy (temperature 0),
    the decoding tunekit's eval measured the fine-tune with."""
    config = getattr(model, "generation_config", None)
    if config is None or not getattr(config, "do_sample", False):
        return {"temp": 0.0}
    found = {"temp": config.temperature, "top_p": config.top_p, "top_k": config.top_k}
    return {k: float(v) for k, v in found.items() if v is not None}


def _general(run: LoadedRun) -> dict[str, str]:
    cfg = run.cfg
    return {"name": cfg.project, "finetune": run.run_dir.name, "quantized_by": "tunekit",
            "description": f"{cfg.method.name} fine-tune of {cfg.model.name} made with tunekit"}


def _base_gguf(run: LoadedRun) -> str | None:
    """The GGUF the run's base model was read from, if any: the file the LoRA adapter applies to."""
    from tunekit.models.resolve import resolve_model

    resolved = resolve_model(run.cfg.model.name, trust_remote_code=run.cfg.model.trust_remote_code)
    return resolved.source if resolved.kind in ("embedded", "gguf") else None


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.") or "model"
