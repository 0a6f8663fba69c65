"""What a generation request asks for and what it returns: the bottom of `tunekit.generate`, imported by
every other module of the package and by its users, and importing none of them."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from tunekit.errors import UserError

# Below this a temperature is greedy, as in vLLM: dividing logits by 1e-300 gives inf - inf = NaN
# probabilities, and any temperature this small already picks the arg-max in practice.
GREEDY_BELOW = 1e-5
# torch seeds its generators with 64 bits; larger seeds (a client may send 2**70) are reduced mod 2**64,
# so every integer is a valid seed and equal seeds modulo 2**64 give the same text.
SEED_BITS = 64


@dataclass
class GenerationParams:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()  # stop strings, excluded from the returned text
    seed: int | None = None  # per request: a seeded request gives the same text in any batch


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int  # generated tokens, the EOS or stop-string token included
    finish_reason: str  # "stop" (EOS or stop string) | "length"
    latency_s: float  # submit -> last token, per request
    ttft_s: float  # submit -> first token


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
    seed = params.seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        problems.append(("seed", seed, "an integer"))
    if problems:
        field, value, allowed = problems[0]
        raise UserError(f"{field}={value!r} is not allowed", where=f"GenerationParams.{field}", fix=f"use {allowed}")
    temperature = 0.0 if params.temperature < GREEDY_BELOW else float(params.temperature)
    return replace(params, stop=stop, temperature=temperature,
                   seed=None if seed is None else seed % (1 << SEED_BITS))
