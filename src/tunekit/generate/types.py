"""What a generation request asks for and what it returns: the bottom of `tunekit.generate`, imported by
every other module of the package and by its users, and importing none of them."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

from tunekit.errors import UserError

# Below this a temperature is greedy, as in vLLM: dividing logits by 1e-300 gives inf - inf = NaN
# probabilities, and any temperature this small already picks the arg-max in practice.
GREEDY_BELOW = 1e-5
# torch seeds its generators with 64 bits; larger seeds (a client may send 2**70) are reduced mod 2**64,
# so every integer is a valid seed and equal seeds modulo 2**64 give the same text.
SEED_BITS = 64
# OpenAI's limit for top_logprobs: each row's top-k costs a sort of the vocabulary per token.
MAX_TOP_LOGPROBS = 20
ConstraintKind = Literal["json_object", "json_schema", "regex", "choice"]


@dataclass(frozen=True)
class Constraint:
    """What a row's output must match, enforced while decoding (generate/constraints.py): each step, tokens
    that would break it get probability zero, so the finished text always matches unless cut by max_new_tokens.

        Constraint.json_object()                 # any JSON object
        Constraint.json_schema({"type": ...})    # JSON matching the schema
        Constraint.regex(r"[A-Z]{3}-[0-9]+")      # text the regex matches in full
        Constraint.choice(["billing", "bug"])    # exactly one of the labels
    """

    kind: ConstraintKind
    value: Any = None  # the schema (dict), the pattern (str) or the labels (tuple of str)

    @classmethod
    def json_object(cls) -> Constraint:
        return cls("json_object")

    @classmethod
    def json_schema(cls, schema: dict[str, Any]) -> Constraint:
        return cls("json_schema", schema)

    @classmethod
    def regex(cls, pattern: str) -> Constraint:
        return cls("regex", pattern)

    @classmethod
    def choice(cls, labels: list[str] | tuple[str, ...]) -> Constraint:
        return cls("choice", tuple(labels))

    def describe(self) -> str:
        if self.kind == "choice":
            return f"choice of {len(self.value)} labels"
        return self.kind.replace("_", " ")


@dataclass
class GenerationParams:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()  # stop strings, excluded from the returned text
    seed: int | None = None  # per request: a seeded request gives the same text in any batch
    constraint: Constraint | None = None  # output forced to match it (JSON, schema, regex, labels)
    logprobs: int | None = None  # None: none; k >= 0: each token's log-probability and its k most likely rivals


@dataclass(frozen=True)
class TopLogprob:
    token: str
    token_id: int
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability under the distribution it was drawn from: the model's, with the
    row's constraint applied (disallowed tokens excluded and the rest renormalised), before temperature and
    top-p, which only change how it is sampled. For a label choice it is the label's probability."""

    token: str
    token_id: int
    logprob: float
    top: tuple[TopLogprob, ...] = ()


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int  # generated tokens, the EOS or stop-string token included
    finish_reason: str  # "stop" (EOS or stop string) | "length"
    latency_s: float  # submit -> last token, per request
    ttft_s: float  # submit -> first token
    logprobs: list[TokenLogprob] | None = None  # one per generated token when params.logprobs is set
    constraint: str | None = None  # Constraint.describe() of the constraint the text was decoded under


def check_params(params: GenerationParams) -> GenerationParams:
    """`params` normalised (stop as a tuple, a tiny temperature as greedy, the seed in 64 bits), or a
    UserError naming the bad field. Values may come from API users: nothing that passes here may fail
    inside a batch step, where it would cost the other rows their step."""
    problems = []
    if not isinstance(params.max_new_tokens, int) or params.max_new_tokens < 1:
        problems.append(("max_new_tokens", params.max_new_tokens, "an integer >= 1"))
    if not (isinstance(params.temperature, (int, float)) and math.isfinite(params.temperature)
            and params.temperature >= 0):
        problems.append(("temperature", params.temperature, "a number >= 0 (0 = greedy)"))
    if not (isinstance(params.top_p, (int, float)) and 0 < params.top_p <= 1):
        problems.append(("top_p", params.top_p, "a number in (0, 1]"))
    stop = (params.stop,) if isinstance(params.stop, str) else tuple(params.stop or ())
    if not all(isinstance(s, str) for s in stop):
        problems.append(("stop", params.stop, "strings"))
    if params.logprobs is not None and (isinstance(params.logprobs, bool) or not isinstance(params.logprobs, int)
                                        or not 0 <= params.logprobs <= MAX_TOP_LOGPROBS):
        problems.append(("logprobs", params.logprobs, f"an integer from 0 to {MAX_TOP_LOGPROBS} (or None)"))
    if params.constraint is not None and not isinstance(params.constraint, Constraint):
        problems.append(("constraint", params.constraint, "a tunekit.generate.Constraint"))
    seed = params.seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        problems.append(("seed", seed, "an integer"))
    if problems:
        field, value, allowed = problems[0]
        raise UserError(f"{field}={value!r} is not allowed", where=f"GenerationParams.{field}", fix=f"use {allowed}")
    temperature = 0.0 if params.temperature < GREEDY_BELOW else float(params.temperature)
    return replace(params, stop=stop, temperature=temperature,
                   seed=None if seed is None else seed % (1 << SEED_BITS))
