"""The batched generation engine shared by eval, chat, serve and training's answer eval.

    gen = Generator(model, tokenizer)
    outs = gen.generate([messages, ...], GenerationParams(max_new_tokens=128))

Layers, bottom up (each module imports only those below it): `types` (what a request asks for and
returns) -> `sampling`, `kv_batch`, `constraints` -> `model_prep`, `batching` (continuous batching:
`BatchRunner`) ->
`hf_fallback` -> `generator` (`Generator`: one caller at a time) -> `scheduler` (`BatchScheduler`:
requests from many threads decoded together).
"""

from tunekit.generate.generator import GenerationStream, Generator
from tunekit.generate.scheduler import BatchScheduler
from tunekit.generate.types import (
    Constraint,
    Generation,
    GenerationParams,
    TokenLogprob,
    TopLogprob,
    check_params,
)

__all__ = ["BatchScheduler", "Constraint", "Generation", "GenerationParams", "GenerationStream", "Generator",
           "TokenLogprob", "TopLogprob", "check_params"]
