"""The model behind the server: tunekit's Generator (the decoding `tunekit eval` measured) behind its
BatchScheduler, so concurrent requests decode together in one batch (continuous batching) instead of
taking turns.

Generation errors that come from the request (an empty or too long prompt, a schema the constrained decoder
cannot enforce) are the client's: they become 400s here, so they never surface as 500s.
"""

from __future__ import annotations

import time
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from tunekit.errors import MissingDependency, UserError
from tunekit.serve.errors import ApiError, model_not_found, timed_out
from tunekit.serve.structured import unsupported


class PromptSide:
    """What every backend does before the model: the run's chat template, token counts, the control tokens
    that client text may not carry. The same here whichever engine decodes (this one or serve/remote.py)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.control_tokens = control_tokens(tokenizer)

    def render(self, messages: list[dict[str, str]]) -> str:
        from jinja2.exceptions import TemplateError

        from tunekit.generate.generator import render_chat

        try:
            return render_chat(self.tokenizer, messages)
        except TemplateError as exc:  # e.g. a template that insists on alternating user/assistant turns
            raise ApiError(400, f"The model's chat template rejects these messages: {exc}", param="messages") from exc

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


class Backend(PromptSide):
    def __init__(self, model: Any, tokenizer: Any, *, dtype: str = "auto", max_batch_size: int | None = None):
        from tunekit.generate import BatchScheduler, Generator

        super().__init__(tokenizer)
        self.generator = Generator(model, tokenizer, dtype=dtype, max_batch_size=max_batch_size)
        self.scheduler = BatchScheduler(self.generator)
        self.context_length = getattr(getattr(model, "config", None), "max_position_embeddings", None)

    @property
    def dtype_name(self) -> str:
        return self.generator.device.dtype_name

    def generate(self, prompt: str, params: Any, adapter: str | None, *, deadline: float | None = None) -> Any:
        """One answer, decoded in the scheduler's batch; a 504 once `deadline` (time.perf_counter()) passes."""
        return self.generate_many(prompt, [params], adapter, deadline=deadline)[0]

    def generate_many(self, prompt: str, params: list[Any], adapter: str | None, *,
                      deadline: float | None = None) -> list[Any]:
        """One answer to `prompt` per entry of `params` (a request's n choices), decoded side by side in the
        batch; a 504 once `deadline` passes, and then none of them decodes any further."""
        if deadline is not None and time.perf_counter() >= deadline:
            raise timed_out()  # never queue work whose client has already been told it timed out
        submissions = []
        try:
            for choice in params:  # appended one by one: a refused second one must not leave the first running
                submissions.append(self._submit(prompt, choice, adapter, stream=False))
            return [s.result(None if deadline is None else max(0.0, deadline - time.perf_counter()))
                    for s in submissions]
        except FutureTimeout:
            raise timed_out() from None
        finally:
            for submission in submissions:
                submission.cancel()  # a no-op for finished ones; the others leave the batch at the next step

    def check(self, prompt: str, params: Any, adapter: str | None) -> None:
        """Raise the 400 that submitting would (a constraint that cannot be enforced...), without queueing: a
        stream checks first, so that its refusals are HTTP errors rather than errors inside a 200 stream."""
        try:
            self.generator.request(prompt, params, self.generator.resolve_adapter(adapter))
        except UserError as exc:
            raise self._client_error(exc, adapter) from exc

    def generate_batch(self, prompts: list[str], params: Any, adapter: str | None) -> list[Any]:
        submissions = [self._submit(p, params, adapter, stream=False) for p in prompts]
        return [s.result() for s in submissions]

    def stream(self, prompt: str, params: Any, adapter: str | None) -> Any:
        """A submission to iterate for text deltas; its `result()` is the Generation once they are exhausted,
        and `cancel()` takes it out of the batch."""
        return self._submit(prompt, params, adapter, stream=True)

    def load_adapter(self, name: str, path: Any) -> None:
        """Add an adapter to the model the generator decodes (a dtype copy of the served one, maybe)."""
        self.generator.load_adapter(name, path)

    def unload_adapter(self, name: str, timeout: float) -> None:
        """Delete an adapter once its requests in flight are done; TimeoutError (adapter kept) after `timeout` s."""
        self.scheduler.retire_adapter(name, timeout)

    def close(self) -> None:
        """Finish what was submitted and stop the scheduler's thread."""
        self.scheduler.close()

    def _submit(self, prompt: str, params: Any, adapter: str | None, *, stream: bool) -> Any:
        try:
            return self.scheduler.submit(prompt, params, adapter, stream=stream)
        except UserError as exc:
            raise self._client_error(exc, adapter) from exc

    def _client_error(self, exc: UserError, adapter: str | None) -> ApiError:
        if exc.where == "adapter":  # unloaded after the request's model was looked up (admin.py)
            return model_not_found(adapter or "", list(getattr(self.generator.model, "peft_config", {})))
        if exc.where == "constraint" or isinstance(exc, MissingDependency):  # the only optional part: llguidance
            return unsupported(exc, None)  # the pipeline names the field that asked for it
        return ApiError(400, exc.render())


def control_tokens(tokenizer: Any) -> tuple[str, ...]:
    """The text of every special token (`<|im_start|>`, `<|endoftext|>`...): typed by a client inside a message,
    the rendered prompt would tokenize it into the real control token."""
    specials = set(getattr(tokenizer, "all_special_tokens", []))
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    specials |= {added.content for added in decoder.values() if getattr(added, "special", False)}
    return tuple(sorted(token for token in specials if token))
