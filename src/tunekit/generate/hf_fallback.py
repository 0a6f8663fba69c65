"""Generation through HF `generate`, one prompt at a time, for what the batched engine does not cover:
prefix/prompt-tuning adapters (PEFT injects their virtual tokens inside its own generate) and
architectures outside `model_prep.FAST_PATH_MODEL_TYPES`. Same results contract, no batching.

A request cancelled meanwhile (its client went away or timed out) stops at the next token, as a row of the
batched engine leaves its batch: the work ends when the client stops waiting, not at max_new_tokens."""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import StoppingCriteria

from tunekit.generate.batching import Request


class _UntilCancelled(StoppingCriteria):
    def __init__(self, request: Request):
        self.request = request

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.request.cancelled, dtype=torch.bool, device=input_ids.device)


@torch.inference_mode()
def hf_generate(model: Any, tokenizer: Any, request: Request, eos_ids: frozenset[int], pad_id: int) -> None:
    """Finish `request` (sets request.result) with model.generate; a cancelled request is left unfinished."""
    if request.cancelled:
        return
    params = request.params
    ids = torch.tensor([request.prompt_ids], dtype=torch.long, device=next(model.parameters()).device)
    kwargs: dict[str, Any] = {"max_new_tokens": params.max_new_tokens, "eos_token_id": sorted(eos_ids),
                              "pad_token_id": pad_id, "do_sample": params.temperature > 0,
                              "stopping_criteria": [_UntilCancelled(request)]}
    if params.temperature > 0:
        kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=None)
    if params.stop:
        kwargs.update(stop_strings=list(params.stop), tokenizer=tokenizer)
    with torch.random.fork_rng(devices=[]):  # a seed for this request only, not for the caller's global RNG
        if params.seed is not None:
            torch.manual_seed(params.seed)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
    if request.cancelled:
        return
    new_tokens = out[0, ids.shape[1] :].tolist()
    request.first_token_at = time.perf_counter()  # HF generate does not report it: the best bound is the end
    for token in new_tokens:
        if request.accept(token, eos_ids):
            break
    if not request.done:  # generate stopped on a stop string our decode does not see at this token: end there
        request.finish("stop" if len(new_tokens) < params.max_new_tokens else "length")
