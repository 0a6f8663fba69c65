"""Answer-level evaluation during training: generate on a few validation prompts, score exact match.

Token-level validation loss can fall while answers stay wrong (format drift, never stopping); a
small generated sample catches that while the run is still going.
"""

from __future__ import annotations

from typing import Any

from tunekit.data.dedupe import normalize_for_match
from tunekit.data.records import read_split
from tunekit.runfolder import RunFolder


def answer_accuracy(run: Any, cfg: Any) -> dict[str, float]:
    from tunekit.generate import GenerationParams, Generator

    examples = read_split(RunFolder(run.run_dir).split_path("validation"))[: cfg.training.answer_eval_samples]
    if not examples:
        return {}
    references = [e.messages[-1]["content"] for e in examples]
    # The batched engine, on an inference copy of the weights in the run's compute dtype (or, for
    # quantized models, the model itself through HF generate under the run's autocast).
    generator = Generator(run.model, run.tokenizer, dtype=run.device.dtype_name)
    use_cache = run.model.config.use_cache
    run.model.config.use_cache = True  # training turns it off; the HF-generate fallback reads it
    try:
        with run.device.autocast():
            outs = generator.generate([e.messages[:-1] for e in examples],
                                      GenerationParams(max_new_tokens=cfg.training.max_new_tokens))
    finally:
        run.model.config.use_cache = use_cache
    hits = sum(normalize_for_match(o.text) == normalize_for_match(r) for o, r in zip(outs, references))
    return {"answer_exact_match": round(hits / len(examples), 4)}
