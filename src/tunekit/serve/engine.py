"""The model behind the server: tunekit's one Generator, the same decoding `tunekit eval` measured.

Generation errors that come from the request (an empty or too long prompt) are the client's: they become
400s here, so they never surface as 500s.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tunekit.errors import UserError
from tunekit.serve.errors import ApiError


class Engine:
    def __init__(self, model: Any, tokenizer: Any, *, dtype: str = "auto"):
        from tunekit.eval.generate import Generator

        self.generator = Generator(model, tokenizer, dtype=dtype)
        self.tokenizer = tokenizer
        self.context_length = getattr(getattr(model, "config", None), "max_position_embeddings", None)

    @property
    def dtype_name(self) -> str:
        return self.generator.device.dtype_name

    def render(self, messages: list[dict[str, str]]) -> str:
        return self.generator.render(messages)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, prompt: str, params: Any, adapter: str | None) -> Any:
        return self.generate_batch([prompt], params, adapter)[0]

    def generate_batch(self, prompts: list[str], params: Any, adapter: str | None) -> list[Any]:
        try:
            return self.generator.generate(prompts, params, adapter=adapter)
        except UserError as exc:
            raise ApiError(400, exc.render()) from exc

    def stream(self, prompt: str, params: Any, adapter: str | None) -> Iterator[str]:
        """Text deltas; the returned stream's `result` is the Generation once it is exhausted."""
        try:
            return self.generator.stream(prompt, params, adapter=adapter)
        except UserError as exc:
            raise ApiError(400, exc.render()) from exc
