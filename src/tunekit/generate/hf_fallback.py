"""Generation through HF `generate`, one prompt at a time, for what the batched engine does not cover:
prefix/prompt-tuning adapters (PEFT injects their virtual tokens inside its own generate) and
architectures outside `model_prep.FAST_PATH_MODEL_TYPES`. Same results contract, no batching.

Constraints and logprobs work as in the engine: a logits processor masks each step with a copy of the row's
matcher (the request's own one follows the tokens as they are accepted afterwards) and keeps the masked scores.

A request cancelled meanwhile (its client went away or timed out) stops at the next token, as a row of the
batched engine leaves its batch: the work ends when the client stops waiting, not at max_new_tokens."""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import LogitsProcessor, StoppingCriteria

from tunekit.generate.batching import Request
from tunekit.generate.constraints import Constraints, apply_masks
from tunekit.generate.sampling import token_logprobs


class _UntilCancelled(StoppingCriteria):
    def __init__(self, request: Request):
        self.request = request

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.request.cancelled, dtype=torch.bool, device=input_ids.device)


class _ConstrainedScores(LogitsProcessor):
    """Masks each step's scores with the constraint (when there is one) and keeps them for the logprobs. HF runs
    custom processors before its temperature and top-p warpers, so these are the distribution's own scores."""

    def __init__(self, request: Request, constraints: Constraints | None, prompt_length: int):
        self.matcher = request.matcher.deep_copy() if request.matcher is not None else None
        self.constraints, self.prompt_length = constraints, prompt_length
        self.keep = request.params.logprobs is not None
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.matcher is not None and self.constraints is not None:
            if input_ids.shape[1] > self.prompt_length:
                self.matcher.consume_token(int(input_ids[0, -1]))
            scores = scores.float()
            apply_masks(scores, [(0, self.matcher)], self.constraints)
        if self.keep:
            self.steps.append(scores[0].float())
        return scores


@torch.inference_mode()
def hf_generate(model: Any, tokenizer: Any, request: Request, eos_ids: frozenset[int], pad_id: int,
                constraints: Constraints | None = None) -> None:
    """Finish `request` (sets request.result) with model.generate; a cancelled request is left unfinished."""
    if request.cancelled:
        return
    params = request.params
    ids = torch.tensor([request.prompt_ids], dtype=torch.long, device=next(model.parameters()).device)
    kwargs: dict[str, Any] = {"max_new_tokens": params.max_new_tokens, "eos_token_id": sorted(eos_ids),
                              "pad_token_id": pad_id, "do_sample": params.temperature > 0,
                              "stopping_criteria": [_UntilCancelled(request)]}
    scores = _ConstrainedScores(request, constraints, ids.shape[1])
    if scores.matcher is not None or scores.keep:
        kwargs["logits_processor"] = [scores]
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
    for step, token in enumerate(new_tokens):
        if scores.keep:
            request.logprobs.append(token_logprobs(scores.steps[step], token, request.params.logprobs or 0,
                                                   request.decode))
        if request.accept(token, eos_ids):
            break
    if not request.done:  # generate stopped on a stop string our decode does not see at this token: end there
        request.finish("stop" if len(new_tokens) < params.max_new_tokens else "length")
