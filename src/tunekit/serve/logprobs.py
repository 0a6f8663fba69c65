"""Token log-probabilities in OpenAI's two shapes: chat's list of tokens, each with its top alternatives, and
legacy completions' parallel lists (tokens, token_logprobs, top_logprobs as token -> logprob, text_offset).

The engine reports them under the distribution each token was drawn from (tunekit.generate.TokenLogprob):
the model's, with the request's output constraint applied, before temperature and top-p.
"""

from __future__ import annotations

import math
from typing import Any

from tunekit.serve.replies import ChatLogprobs, CompletionLogprobs, TokenLogprob, TopLogprob

# What OpenAI itself reports for a probability too small to write: JSON has no -Infinity, and a token the
# constraint excluded is one the engine leaves out of the alternatives anyway.
UNLIKELY = -9999.0


def _finite(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else UNLIKELY


def _utf8(token: str) -> list[int]:
    return list(token.encode("utf-8", errors="replace"))


def chat_logprobs(tokens: list[Any] | None) -> ChatLogprobs | None:
    """`choices[i].logprobs` of a chat completion (None when the request did not ask for them)."""
    if tokens is None:
        return None
    return ChatLogprobs(content=[
        TokenLogprob(token=t.token, logprob=_finite(t.logprob), bytes=_utf8(t.token),
                     top_logprobs=[TopLogprob(token=r.token, logprob=_finite(r.logprob), bytes=_utf8(r.token))
                                   for r in t.top])
        for t in tokens])


def completion_logprobs(tokens: list[Any] | None) -> CompletionLogprobs | None:
    """`choices[i].logprobs` of a text completion: `text_offset` is where each token starts in the text."""
    if tokens is None:
        return None
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += len(t.token)
    return CompletionLogprobs(tokens=[t.token for t in tokens], token_logprobs=[_finite(t.logprob) for t in tokens],
                              top_logprobs=[{r.token: _finite(r.logprob) for r in t.top} for t in tokens],
                              text_offset=offsets)
