"""The model behind the server: tunekit's one Generator, the same decoding `tunekit eval` measured.

Generation errors that come from the request (an empty or too long prompt) are the client's: they become
400s here, so they never surface as 500s.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from tunekit.errors import UserError
from tunekit.serve.errors import ApiError, timed_out


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
        from jinja2.exceptions import TemplateError

        try:
            return self.generator.render(messages)
        except TemplateError as exc:  # e.g. a template that insists on alternating user/assistant turns
            raise ApiError(400, f"The model's chat template rejects these messages: {exc}", param="messages") from exc

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, prompt: str, params: Any, adapter: str | None, *, deadline: float | None = None) -> Any:
        """One answer; past `deadline` (a time.perf_counter() value) decoding stops and a 504 is raised, so a
        request its client has given up on does not keep the model busy."""
        if deadline is None:
            return self.generate_batch([prompt], params, adapter)[0]
        if time.perf_counter() > deadline:
            raise timed_out()
        stream = self.stream(prompt, params, adapter)  # the same decoding as generate, one token at a time
        try:
            for _ in stream:
                if time.perf_counter() > deadline:
                    raise timed_out()
        finally:
            stream.close()
        return stream.result

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

