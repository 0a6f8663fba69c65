"""An engine in another process: an OpenAI-compatible server (vLLM's, normally) decodes, and this server does
everything else as it does for its own engine: keys, limits, input guardrails, grounding and citations,
output validation, request logging and metrics.

The prompt is rendered here, with the run's chat template, and sent as text to the engine's
`/v1/completions`: the model reads exactly what tunekit's engine would have given it, and the engine's own
chat handling (its template, its role rules) never sees client messages. Decoding constraints travel in
vLLM's `structured_outputs` field. Adapters are the engine's (started with them, named as here); loading
one while serving is refused, as the engine was not started to take it.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from tunekit.errors import UserError
from tunekit.generate.types import Generation, TokenLogprob, TopLogprob
from tunekit.serve.backend import PromptSide
from tunekit.serve.errors import ApiError, timed_out

KEY_ENV = "TUNEKIT_ENGINE_API_KEY"  # the engine's bearer key; never read from a config, which runs copy
MAX_LOGPROBS = 5  # OpenAI's limit for /v1/completions, which an engine may hold to (vLLM allows 20)


class RemoteBackend(PromptSide):
    """What `Backend` offers the pipeline, with generation sent to `url` (the API root, `.../v1`)."""

    def __init__(self, url: str, tokenizer: Any, names: dict[str | None, str], *, context_length: int | None,
                 timeout_s: float, max_connections: int, on_close: Any = None):
        """`names`: adapter (None for the model itself) -> the engine's name for it."""
        import httpx

        super().__init__(tokenizer)
        key = os.environ.get(KEY_ENV)
        self.url = url
        self.client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"} if key else {},
                                   timeout=httpx.Timeout(timeout_s, connect=10.0),
                                   limits=httpx.Limits(max_connections=max_connections + 4))
        self.names = names
        self.context_length = context_length
        self._on_close = on_close

    dtype_name = "engine"  # whatever the engine decodes in; preflight then allows no rounding ties

    def check_engine(self) -> None:
        """Every name this server answers for is one the engine serves: a UserError before the first request."""
        try:
            listed = {m["id"] for m in self._call("GET", "/models", None, None)["data"]}
        except ApiError as exc:
            raise UserError(f"the engine at {self.url} did not list its models: {exc.message}",
                            where="serve.engine_url", fix="check the URL (it ends in /v1) and that it is up") from exc
        missing = sorted(set(self.names.values()) - listed)
        if missing:
            raise UserError(f"the engine at {self.url} does not serve {missing} (it serves {sorted(listed)})",
                            where="serve.engine_url", fix="start the engine with these names (vLLM: "
                            "--served-model-name for the model, --lora-modules NAME=PATH for each adapter)")

    def check(self, prompt: str, params: Any, adapter: str | None) -> None:
        """Nothing to refuse ahead: the engine says what it cannot enforce when asked."""

    def generate(self, prompt: str, params: Any, adapter: str | None, *, deadline: float | None = None) -> Any:
        return self.generate_many(prompt, [params], adapter, deadline=deadline)[0]

    def generate_many(self, prompt: str, params: list[Any], adapter: str | None, *,
                      deadline: float | None = None) -> list[Any]:
        """One answer per entry of `params`, each its own request (each carries its own seed), all in flight
        at once so the engine batches them."""
        def one(choice: Any) -> Generation:
            start = time.perf_counter()
            data = self._call("POST", "/completions", self._body(prompt, choice, adapter, stream=False), deadline)
            answer = data["choices"][0]
            return self.generation(prompt, answer.get("text") or "", choice, data.get("usage") or {},
                                   answer.get("finish_reason"), time.perf_counter() - start,
                                   logprobs=token_logprobs(answer.get("logprobs")) if choice.logprobs is not None
                                   else None)

        if len(params) == 1:
            return [one(params[0])]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(params), "tunekit-engine") as pool:
            return list(pool.map(one, params))

    def generate_batch(self, prompts: list[str], params: Any, adapter: str | None) -> list[Any]:
        return [self.generate(prompt, params, adapter) for prompt in prompts]

    def stream(self, prompt: str, params: Any, adapter: str | None) -> RemoteStream:
        return RemoteStream(self, self._body(prompt, params, adapter, stream=True), prompt, params)

    def load_adapter(self, name: str, path: Any) -> None:
        raise ApiError(409, "This server's model runs in an engine started with its adapters; adapters cannot be "
                       "added while it serves. Restart it with --adapter NAME=RUN.", code="engine_adapters")

    def unload_adapter(self, name: str, timeout: float) -> None:
        self.load_adapter(name, None)

    def close(self) -> None:
        self.client.close()
        if self._on_close is not None:
            self._on_close()

    def _body(self, prompt: str, params: Any, adapter: str | None, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.names[adapter], "prompt": prompt, "max_tokens": params.max_new_tokens,
                                "temperature": params.temperature, "top_p": params.top_p, "stream": stream,
                                # the template already holds any BOS; vLLM would add another by default
                                "add_special_tokens": False}
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        if params.logprobs is not None:
            body["logprobs"] = min(params.logprobs, MAX_LOGPROBS)
        if params.constraint is not None:
            body["structured_outputs"] = structured_outputs(params.constraint)
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def _call(self, method: str, path: str, body: dict[str, Any] | None, deadline: float | None) -> dict[str, Any]:
        import httpx

        timeout = None if deadline is None else max(0.0, deadline - time.perf_counter())
        if timeout == 0.0:
            raise timed_out()
        try:
            response = self.client.request(method, path, json=body,
                                           timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout)
        except httpx.TimeoutException:
            raise timed_out() from None
        except httpx.HTTPError as exc:
            raise engine_unreachable(self.url, exc) from exc
        if response.status_code != 200:
            raise engine_error(response.status_code, response.text)
        return response.json()

    def generation(self, prompt: str, text: str, params: Any, usage: dict[str, Any], finish_reason: str | None,
                   seconds: float, ttft_s: float | None = None, logprobs: Any = None) -> Generation:
        """The engine's answer as tunekit's Generation; token counts from its usage, else counted here."""
        return Generation(
            text=text, prompt_tokens=usage.get("prompt_tokens") or self.count_tokens(prompt),
            completion_tokens=usage.get("completion_tokens") or self.count_tokens(text),
            finish_reason="length" if finish_reason == "length" else "stop", latency_s=seconds,
            ttft_s=ttft_s or seconds, logprobs=logprobs,
            constraint=params.constraint.describe() if params.constraint is not None else None)


class RemoteStream:
    """One streamed answer: iterate for text pieces; `result()` is the Generation after them; `cancel()` closes
    the connection, which makes the engine drop the request (vLLM aborts on disconnect)."""

    def __init__(self, backend: RemoteBackend, body: dict[str, Any], prompt: str, params: Any):
        self.backend, self.body, self.prompt, self.params = backend, body, prompt, params
        self.pieces: list[str] = []
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] = {}
        self.started = time.perf_counter()
        self.first_piece_s: float | None = None
        self._response: Any = None
        self._cancelled = False

    def __iter__(self) -> Any:
        import httpx

        try:
            with self.backend.client.stream("POST", "/completions", json=self.body) as response:
                self._response = response
                if response.status_code != 200:
                    raise engine_error(response.status_code, response.read().decode("utf-8", "replace"))
                for line in response.iter_lines():
                    if self._cancelled:
                        return
                    yield from self._pieces_of(line)
        except httpx.TimeoutException:
            raise timed_out() from None
        except (httpx.HTTPError, httpx.StreamError) as exc:  # StreamError: closed by cancel() meanwhile
            if not self._cancelled:
                raise engine_unreachable(self.backend.url, exc) from exc

    def _pieces_of(self, line: str) -> Any:
        if not line.startswith("data:") or line[5:].strip() == "[DONE]":
            return
        event = json.loads(line[5:])
        if "error" in event:
            raise engine_error(502, json.dumps(event))
        self.usage = event.get("usage") or self.usage
        for choice in event.get("choices") or []:
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
            if choice.get("text"):
                self.first_piece_s = self.first_piece_s or time.perf_counter() - self.started
                self.pieces.append(choice["text"])
                yield choice["text"]

    def result(self, timeout: float | None = None) -> Generation:
        return self.backend.generation(self.prompt, "".join(self.pieces), self.params, self.usage,
                                       self.finish_reason, time.perf_counter() - self.started, self.first_piece_s)

    def cancel(self) -> None:
        self._cancelled = True
        if self._response is not None:
            self._response.close()


def structured_outputs(constraint: Any) -> dict[str, Any]:
    """tunekit's Constraint as vLLM's `structured_outputs` field (which tunekit's server takes too)."""
    if constraint.kind == "json_schema":
        return {"json": constraint.value}
    if constraint.kind == "choice":
        return {"choice": list(constraint.value)}
    if constraint.kind == "regex":
        return {"regex": constraint.value}
    return {"json_object": True}


def token_logprobs(data: dict[str, Any] | None) -> list[TokenLogprob] | None:
    """The completions API's logprobs (token texts, no ids) as tunekit's; an alternative's id is a stand-in
    (minus its rank), equal between two alternatives only when they are the same one."""
    if not data:
        return None
    tops = data.get("top_logprobs") or []
    out = []
    for i, (token, value) in enumerate(zip(data.get("tokens") or [], data.get("token_logprobs") or [])):
        ranked = sorted((tops[i] or {}).items(), key=lambda kv: -kv[1]) if i < len(tops) else []
        out.append(TokenLogprob(token, -1, float(value if value is not None else 0.0),
                                tuple(TopLogprob(t, -1 - rank, float(v)) for rank, (t, v) in enumerate(ranked))))
    return out


def engine_unreachable(url: str, exc: Exception) -> ApiError:
    return ApiError(502, f"The engine that decodes for this server ({url}) did not answer: {type(exc).__name__}.",
                    code="engine_unavailable")


def engine_error(status: int, body: str) -> ApiError:
    """The engine's refusal, passed on: its 400s are the client's (an unsupported field), the rest are 502s."""
    try:
        data = json.loads(body)
        message = (data.get("error") or {}).get("message") if isinstance(data.get("error"), dict) else None
        message = message or data.get("message") or body
    except (ValueError, AttributeError):
        message = body
    message = str(message)[:500]
    if status == 400:
        return ApiError(400, f"The engine refused the request: {message}")
    return ApiError(502, f"The engine failed ({status}): {message}", code="engine_error")


def connect_engine(served: Any, serve: Any, say: Any) -> RemoteBackend:
    """The backend for `serve.engine_url`, or for a vLLM started here (`serve.engine: vllm`), checked to serve
    every name this server answers for. `served`: a loading.ServedModels without weights."""
    vllm = None
    url = serve.engine_url
    if url is None:
        from tunekit.serve.vllm import VllmProcess, vllm_command

        # The command is built (and the adapters checked) before anything starts.
        vllm = VllmProcess(lambda host, port: vllm_command(served, host, port, serve.engine_args), say)
        try:
            vllm.wait_ready()
        except BaseException:
            vllm.stop()
            raise
        url = vllm.url
    backend = RemoteBackend(url, served.tokenizer, {served.adapter_for(n): n for n in served.names},
                            context_length=_context_length(served), timeout_s=serve.timeout_s,
                            max_connections=serve.max_concurrency, on_close=vllm.stop if vllm else None)
    try:
        backend.check_engine()
    except BaseException:
        backend.close()
        raise
    return backend


def _context_length(served: Any) -> int | None:
    from tunekit.runfolder import RunFolder

    folder = RunFolder(served.full_run[1]).model_dir if served.full_run else served.base_path
    config = folder / "config.json" if folder is not None else None
    if config is None or not config.is_file():
        return None
    return json.loads(config.read_text(encoding="utf-8")).get("max_position_embeddings")
