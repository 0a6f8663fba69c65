"""The export's report: export_report.json (everything measured) and export_report.md (what a person reads)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunekit.export.gguf_model import WrittenModel
from tunekit.export.lora import WrittenAdapter
from tunekit.export.modelfile import Modelfile
from tunekit.export.proof import Proof
from tunekit.export.quants import Quant
from tunekit.io import sha256_file

MISMATCHES_SHOWN = 5


@dataclass
class ExportFacts:
    run: Path
    quant: Quant
    model: WrittenModel
    pre_tokenizer: str
    modelfile: Modelfile
    proof: Proof
    adapter: WrittenAdapter | None
    adapter_skipped: str | None  # why no adapter file was written (None when one was)
    base_gguf: str | None  # the base model's GGUF, for the adapter, when the run's base came from one
    timings: dict[str, float]
    warnings: list[str] = field(default_factory=list)


def report_json(facts: ExportFacts) -> dict[str, Any]:
    import gguf

    from tunekit import __version__

    proof = facts.proof
    return {
        "run": str(facts.run),
        "format": "gguf",
        "quant": facts.quant.name,
        "quant_about": facts.quant.about,
        "file": facts.model.path.name,
        "size_mb": round(facts.model.path.stat().st_size / 2**20, 1),
        "sha256": sha256_file(facts.model.path),
        "tensor_types": facts.model.tensor_types,
        "f16_fallbacks": facts.model.fallbacks,
        "pre_tokenizer": facts.pre_tokenizer,
        "modelfile": {"file": "Modelfile", "template": facts.modelfile.template},
        "adapter": _adapter(facts),
        "proof": {
            "prompts": proof.prompts, "max_new_tokens": proof.max_new_tokens, "identical": proof.identical,
            "agreement": round(proof.agreement, 4), "min_agreement": proof.min_agreement, "passed": proof.passed,
            "prompt_tokens_identical": proof.prompt_tokens_identical,
            "weight_rel_error": proof.weight_rel_error, "worst_tensor": proof.worst_tensor,
            "update_kept": None if proof.update_kept is None else round(proof.update_kept, 4),
            "mismatches": proof.mismatches,
        },
        "timings_s": {k: round(v, 2) for k, v in facts.timings.items()},
        "warnings": facts.warnings,
        "versions": {"tunekit": __version__, "gguf": _version("gguf", gguf)},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def report_md(data: dict[str, Any]) -> str:
    proof = data["proof"]
    verdict = "passed" if proof["passed"] else "FAILED"
    lines = [
        f"# GGUF export ({data['quant']}): {verdict}", "",
        f"- file: `{data['file']}` ({data['size_mb']} MB, sha256 `{data['sha256'][:16]}...`): {data['quant_about']}",
        f"- tensors: {', '.join(f'{n} {t}' for t, n in sorted(data['tensor_types'].items()))}",
        f"- pre-tokenizer: `{data['pre_tokenizer']}`; Ollama template: {data['modelfile']['template']}",
        f"- adapter: {_adapter_line(data['adapter'])}", "",
        "## Proof", "",
        f"The file was loaded back (transformers' GGUF reader: weights, tokenizer and chat template from the file "
        f"alone) and answered {proof['prompts']} validation prompts greedily ({proof['max_new_tokens']} new tokens at "
        f"most), as did the merged model it was written from.", "",
        "| identical answers | agreement | declared tolerance | prompts tokenized identically | worst weight error "
        "| fine-tune's update kept |",
        "|---|---|---|---|---|---|",
        f"| {proof['identical']}/{proof['prompts']} | {proof['agreement']:.1%} | >= {proof['min_agreement']:.0%} | "
        f"{proof['prompt_tokens_identical']}/{proof['prompts']} | {proof['weight_rel_error']:.2e} "
        f"(`{proof['worst_tensor']}`) | {_share(proof['update_kept'])} |",
    ]
    if proof["mismatches"]:
        lines += ["", f"Answers that differ (the first {MISMATCHES_SHOWN}):", ""]
    for item in proof["mismatches"][:MISMATCHES_SHOWN]:
        lines += [f"- prompt: {_short(item['prompt'])}", f"  - merged: {_short(item['expected'])}",
                  f"  - GGUF:   {_short(item['got'])}"]
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v}" for k, v in data["timings_s"].items())]
    if data["warnings"]:
        lines += ["", "## Warnings", "", *[f"- {w}" for w in data["warnings"]]]
    return "\n".join(lines) + "\n"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _adapter(facts: ExportFacts) -> dict[str, Any]:
    if facts.adapter is None:
        return {"written": False, "reason": facts.adapter_skipped}
    return {"written": True, "file": facts.adapter.path.name, "modules": facts.adapter.modules,
            "alpha": facts.adapter.alpha, "max_rel_error": facts.adapter.max_rel_error,
            "base_gguf": facts.base_gguf}


def _adapter_line(adapter: dict[str, Any]) -> str:
    if not adapter["written"]:
        return f"none ({adapter['reason']})"
    base = adapter["base_gguf"] or "a GGUF of the base model"
    return (f"`{adapter['file']}` ({adapter['modules']} LoRA modules, update within "
            f"{adapter['max_rel_error']:.1e} of PEFT's), for `llama-cli -m {base} --lora {adapter['file']}`")


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split()).replace("`", "'")  # a backtick would end the code span early
    return f"`{text[:limit]}{'...' if len(text) > limit else ''}`"


def _version(name: str, module: Any) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return getattr(module, "__version__", "?")
