"""Batched generation for eval, chat and serve: one engine, the run's own chat template.

    gen = Generator(run.model, run.tokenizer)                 # dtype "auto": bf16 where the hardware has it
    outs = gen.generate([messages, ...], GenerationParams(max_new_tokens=128, stop=("\\n\\n",)))
    stream = gen.stream(messages, GenerationParams())
    for delta in stream: print(delta, end="")
    stream.result                                             # the Generation, once the stream is exhausted

How it is fast: prompts are sorted by length and prefilled in chunks with little padding, all rows
decode together against one KV cache, a row leaves the batch the step it finishes and waiting prompts
take its slot (continuous batching, batching.py), and the weights are a copy in the inference dtype.
`dtype="fp32"` gives the same greedy tokens as HF `generate` in fp32 (up to float rounding between
batch shapes; see docs/benchmarks.md for the measured share).

Prefix/prompt-tuning adapters and architectures outside `model_prep.FAST_PATH_MODEL_TYPES` go
through HF `generate`, one prompt at a time (hf_fallback.py): same results contract, no batching.

Thread safety: one lock serialises `generate` and `stream` (a stream holds it until exhausted or
closed). For requests from many threads decoded in one batch, use `BatchScheduler` (scheduler.py).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tunekit.devices import DTYPES, pick_device
from tunekit.errors import UserError
from tunekit.generate import fast_linear, model_prep
from tunekit.generate.batching import BatchRunner, Limits, Request
from tunekit.generate.constraints import Constraints
from tunekit.generate.fast_linear import FastLinears
from tunekit.generate.hf_fallback import hf_generate
from tunekit.generate.kv_batch import ATTENTION_NAME, ModelShape
from tunekit.generate.multi_lora import StackedLora
from tunekit.generate.types import Generation, GenerationParams, check_params


class GenerationStream(Iterator[str]):
    """Text deltas of one request; `result` is its Generation once the deltas are exhausted (else None).

    Joined, the deltas equal `result.text`: no delta ends inside a UTF-8 character or a stop string.
    The stream holds the Generator's lock until exhausted: `close()` it to stop early."""

    def __init__(self, deltas: Iterator[str], request: Request):
        self._deltas, self._request = deltas, request

    def __next__(self) -> str:
        return next(self._deltas)

    def close(self) -> None:
        self._deltas.close()  # type: ignore[attr-defined]

    @property
    def result(self) -> Generation | None:
        return self._request.result


class Generator:
    """Generation from `model` (a transformers causal LM or a PeftModel) with the run's `tokenizer`.

    Args:
        dtype: "auto" (bf16 where tunekit.devices says the CPU/GPU does bf16 natively, else fp32),
            "bf16", "fp16" or "fp32" (exact greedy outputs). Weights not already in it are copied.
        max_batch_size: rows decoded together (default: 32 on CPU, 128 on GPU).
        max_batch_tokens: prompt + max_new_tokens summed over the running rows (default: what a
            quarter of the free memory holds as KV cache).
    """

    def __init__(self, model: Any, tokenizer: Any, *, dtype: str = "auto", max_batch_size: int | None = None,
                 max_batch_tokens: int | None = None):
        if dtype != "auto" and dtype not in DTYPES:
            raise UserError(f"unknown dtype '{dtype}'", where="dtype", fix=f"use auto or one of {', '.join(DTYPES)}")
        for name, value in (("max_batch_size", max_batch_size), ("max_batch_tokens", max_batch_tokens)):
            if value is not None and value < 1:
                raise UserError(f"must be at least 1, got {value}", where=name)
        place = model_prep.inference_device(model)  # a GPU when there is one, even for a model loaded on the CPU
        self.device = pick_device(dtype, device=str(place))  # type: ignore[arg-type]
        self.model = model_prep.inference_model(model, self.device.dtype, self.device.device)
        self.fast_linears = self._fast_linears(owned=self.model is not model)
        self.tokenizer = tokenizer
        self.eos_ids = model_prep.eos_token_ids(self.model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids, default=0)
        self.default_adapter = self.model.active_adapter if model_prep.is_peft(self.model) else None
        self._config = model_prep.base_model(self.model).config
        self.shape = ModelShape.of(self._config, self.device.dtype, self.device.device)
        self.limits = Limits(max_batch_size or model_prep.default_batch_rows(self.device),
                             max_batch_tokens or model_prep.kv_token_budget(self.shape, self.device))
        self._lock = threading.Lock()
        mixes = model_prep.mixes_adapters(self.model)
        self.stacked_lora = StackedLora(self.model) if mixes else None  # mixed-adapter rows, batched
        vocab = max(getattr(self._config, "vocab_size", 0) or 0, len(tokenizer))
        self.constraints = Constraints(tokenizer, vocab, self.eos_ids)

    def render(self, messages: list[dict]) -> str:
        """The conversation in the tokenizer's own chat template, ready for the assistant's turn."""
        return render_chat(self.tokenizer, messages)

    def generate(self, prompts: Sequence[list[dict] | str], params: GenerationParams = GenerationParams(),
                 adapter: str | None = None) -> list[Generation]:
        """One Generation per prompt, in order. A str prompt is used as already rendered."""
        adapter = self.resolve_adapter(adapter)
        requests = [self.request(p, params, adapter) for p in prompts]
        with self.decoding(adapter) as fallback:
            if fallback:
                for request in requests:
                    hf_generate(self.model, self.tokenizer, request, self.eos_ids, self.pad_id, self.constraints)
            else:
                runner = self.runner()
                runner.add(requests)
                while runner.busy:
                    runner.step()
        if failed := next((r.error for r in requests if r.error is not None), None):
            raise failed
        return [r.result for r in requests]  # type: ignore[misc]

    def stream(self, prompt: list[dict] | str, params: GenerationParams = GenerationParams(),
               adapter: str | None = None) -> GenerationStream:
        """Text deltas as they are generated; the returned stream's `result` holds the final Generation."""
        adapter = self.resolve_adapter(adapter)
        request = self.request(prompt, params, adapter)
        return GenerationStream(self._deltas(request), request)

    def _deltas(self, request: Request) -> Iterator[str]:
        sent = 0
        with self.decoding(request.adapter) as fallback:
            if fallback:
                hf_generate(self.model, self.tokenizer, request, self.eos_ids, self.pad_id, self.constraints)
            else:
                runner = self.runner()
                runner.add([request])
                while not request.done:
                    runner.step()
                    text = request.tracker.safe_text() if not request.done else ""
                    if len(text) > sent:
                        yield text[sent:]
                        sent = len(text)
        if request.error is not None:
            raise request.error
        final = request.result.text  # type: ignore[union-attr]
        if len(final) > sent:
            yield final[sent:]

    def request(self, prompt: list[dict] | str, params: GenerationParams, adapter: str | None) -> Request:
        """A validated, tokenized request (for BatchScheduler; generate/stream make their own)."""
        params = check_params(params)
        text = prompt if isinstance(prompt, str) else self.render(prompt)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        limit = getattr(self._config, "max_position_embeddings", None)
        if not ids:
            raise UserError("the prompt is empty", where="prompt")
        if limit and len(ids) >= limit:
            raise UserError(f"the prompt is {len(ids)} tokens; the model takes at most {limit}", where="prompt",
                            fix="shorten the prompt or the conversation history")
        matcher = self.constraints.compile(params.constraint) if params.constraint is not None else None
        return Request(list(ids), params, adapter, self._decode, matcher=matcher)

    def runner(self) -> BatchRunner:
        return BatchRunner(self.model, self.shape, self.limits, self.eos_ids, self.pad_id, self._select_adapter,
                           mixes_adapters=model_prep.mixes_adapters(self.model), stacked_lora=self.stacked_lora,
                           constraints=self.constraints)

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Add the PEFT adapter saved in `path` as `name` to the model this generator decodes.

        That model may be a dtype copy of the one passed in, so adding it to the caller's model would not
        reach it. The new weights are converted to the inference dtype, as the ones present at start were
        (`model_prep.inference_model`), so an adapter answers the same whether it was loaded then or now."""
        if not model_prep.is_peft(self.model):
            raise UserError("the model has no adapters, so none can be added", where="adapter",
                            fix="load the model with at least one adapter")
        with self._lock:  # no step runs on a half-loaded adapter
            if name in self.model.peft_config:
                raise UserError(f"adapter '{name}' is already loaded", where="adapter")
            before = {id(p) for p in self.model.parameters()}
            try:
                self.model.load_adapter(str(path), adapter_name=name, torch_device=str(self.device.device))
            except Exception:
                if name in self.model.peft_config:  # PEFT adds the adapter before reading its weights
                    self.model.delete_adapter(name)
                raise
            model_prep.convert_new_parameters(self.model, before, self.device.dtype)
            self._adapters_changed()

    def unload_adapter(self, name: str) -> None:
        """Delete adapter `name`; if it was the default one, another becomes the default.

        Not for adapters that requests in flight may still use: `BatchScheduler.retire_adapter` waits for those."""
        with self._lock:
            if not model_prep.is_peft(self.model) or name not in self.model.peft_config:
                raise UserError(f"no adapter named '{name}'", where="adapter")
            if len(self.model.peft_config) == 1:
                raise UserError(f"'{name}' is the model's only adapter", where="adapter",
                                fix="load another adapter before removing this one")
            self.model.delete_adapter(name)
            self._adapters_changed()
            if self.default_adapter == name:
                self.default_adapter = next(iter(self.model.peft_config))

    def _fast_linears(self, owned: bool) -> FastLinears | None:
        """Packed (and, for a lone LoRA adapter, folded) linear layers: only on a weight copy of our own,
        since they replace the modules' forwards (fast_linear.py)."""
        if not (owned and fast_linear.supported(self.device.dtype, self.device.device)) or model_prep.is_quantized(
                self.model) or not FastLinears.affordable(self.model, model_prep.available_memory(self.device.device)):
            return None
        return FastLinears(self.model)

    def _adapters_changed(self) -> None:
        if self.fast_linears is not None:
            self.fast_linears.refresh()  # fold a lone adapter, unfold when another joins
        if self.stacked_lora is not None:
            self.stacked_lora.invalidate()

    def uses_fallback(self, adapter: str | None) -> bool:
        return model_prep.fallback_reason(self.model, adapter) is not None

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def resolve_adapter(self, adapter: str | None) -> str | None:
        """The adapter name a request runs with (None: the one active when the Generator was made)."""
        if not model_prep.is_peft(self.model):
            if adapter is not None:
                raise UserError(f"adapter '{adapter}' asked for, but the model has no adapters", where="adapter")
            return None
        if adapter is None:
            return self.default_adapter
        if adapter not in self.model.peft_config:
            names = ", ".join(self.model.peft_config)
            raise UserError(f"no adapter named '{adapter}'", where="adapter", fix=f"the model has: {names}")
        return adapter

    def _select_adapter(self, adapter: str | None) -> None:
        if adapter is not None and self.model.active_adapter != adapter:
            self.model.set_adapter(adapter, inference_mode=True)

    @contextlib.contextmanager
    def decoding(self, adapter: str | None) -> Iterator[bool]:
        """Hold the lock, with the model in eval mode, `adapter` active and the batched attention; yields
        whether this adapter must go through HF generate instead.

        Everything is restored afterwards, since without a dtype copy `self.model` is the caller's model."""
        with self._lock:
            fallback = self.uses_fallback(adapter)
            with self._decoding_mode(adapter, fallback):
                yield fallback

    @contextlib.contextmanager
    def stepping(self) -> Iterator[None]:
        """Hold the lock for one BatchScheduler step, in eval mode and with the batched attention.

        The adapter is the runner's business (it selects the rows' adapter, or mixes rows of several) and
        stays selected afterwards: switching it back after every step, as `decoding` does, costs two PEFT
        `set_adapter` walks over every module, ~17 ms each on SmolLM2 with 4 adapters, a third of a step."""
        with self._lock, self._decoding_mode(None, fallback=False, restore_adapter=False):
            yield

    @contextlib.contextmanager
    def _decoding_mode(self, adapter: str | None, fallback: bool, restore_adapter: bool = True) -> Iterator[None]:
        saved = (self.model.training, self._config._attn_implementation, self.default_adapter
                 and self.model.active_adapter)
        if saved[0]:  # eval() and train() walk every module (~12 ms each with 4 adapters): only when needed
            self.model.eval()
        self._select_adapter(adapter)
        if not fallback:
            self._config._attn_implementation = ATTENTION_NAME
        try:
            yield
        finally:
            self._config._attn_implementation = saved[1]
            if restore_adapter:
                self._select_adapter(saved[2])
            if saved[0]:
                self.model.train(True)


def render_chat(tokenizer: Any, messages: list[dict]) -> str:
    """The conversation in the tokenizer's own chat template, ready for the assistant's turn."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("the tokenizer has no chat template", fix="use the tokenizer saved with the run")
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
