"""Answer-level evaluation during training: generate on a few validation prompts, score exact match.

Token-level validation loss can fall while answers stay wrong (format drift, never stopping); a
small generated sample catches that while the run is still going.
"""

from __future__ import annotations

from typing import Any

import torch

from tunekit.data.dedupe import normalize_for_match
from tunekit.train.batches import read_split


@torch.no_grad()
def answer_accuracy(run: Any, cfg: Any) -> dict[str, float]:
    examples = read_split(run.run_dir / "data" / "validation.jsonl")[: cfg.training.answer_eval_samples]
    if not examples:
        return {}
    tok = run.tokenizer
    prompts = [tok.apply_chat_template(e.messages[:-1], tokenize=False, add_generation_prompt=True) for e in examples]
    references = [e.messages[-1]["content"] for e in examples]
    side = tok.padding_side
    tok.padding_side = "left"  # generation continues from the right end of every row
    try:
        batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tok.padding_side = side
    model = run.model
    was_training = model.training
    model.eval()
    model.config.use_cache = True
    with run.device.autocast():
        out = model.generate(**batch, max_new_tokens=cfg.training.max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    model.config.use_cache = False
    model.train(was_training)
    answers = tok.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    hits = sum(normalize_for_match(a) == normalize_for_match(r) for a, r in zip(answers, references))
    return {"answer_exact_match": round(hits / len(examples), 4)}
