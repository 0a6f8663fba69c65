"""The HTTP API: OpenAI's /v1/chat/completions, /v1/completions, /v1/embeddings (embeddings.py) and /v1/models,
plus /health and /metrics, and vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter behind admin keys
(admin.py).

Routes only translate: a request becomes a checked Job (jobs.py), the Pipeline answers it in a worker
thread (pipeline.py), and the answer becomes OpenAI's response shape, whole or as server-sent events
(responses.py). Every answered request is logged (PII redacted) and counted.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tunekit.errors import MissingDependency

try:
    from fastapi import FastAPI, Request, Security
    from fastapi.responses import Response
    from fastapi.security import HTTPBearer
except ImportError as exc:  # the serve extra is optional; everything else in tunekit works without it
    raise MissingDependency.of("fastapi", "serving", exc) from exc

from tunekit.serve.admission import run_in_slot, take_slot
from tunekit.serve.errors import ApiError, install_error_handlers, model_not_found, timed_out
from tunekit.serve.jobs import Job, chat_job, completion_job
from tunekit.serve.replies import ChatCompletion, Completion, EmbeddingList, ErrorBody, Health, ModelCard, ModelList
from tunekit.serve.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in ((400, "invalid request"), (401, "missing or wrong API key"), (404, "unknown model"),
                         (413, "request body too large"), (429, "rate limit reached"), (503, "overloaded"),
                         (504, "generation timed out"))
}
# One event per chunk (OpenAPI 3.2 describes SSE streams by the schema of each event).
SSE_EVENT = {"type": "object", "required": ["data"],
             "properties": {"data": {"type": "string", "description": "a JSON chunk; the last event is [DONE]"}}}
STREAM_RESPONSE = {"description": "with stream=true: server-sent events, one chunk per piece, then [DONE]",
                   "content": {"text/event-stream": {"itemSchema": SSE_EVENT}}}


def create_app(state: Any) -> FastAPI:
    from tunekit import __version__
    from tunekit.serve.admin import install_admin_routes
    from tunekit.serve.embeddings import embed
    from tunekit.serve.middleware import ApiMiddleware

    app = FastAPI(title="tunekit", version=__version__,
                  description="OpenAI-compatible API for fine-tuned models, with grounding and guardrails.")
    install_error_handlers(app)
    app.add_middleware(ApiMiddleware, state=state)
    state.new_gate()
    # Declares bearer auth in the OpenAPI document; the middleware enforces it (before the body is read).
    bearer = [Security(HTTPBearer(auto_error=False))]
    chat_responses = {**ERROR_RESPONSES, 200: STREAM_RESPONSE}

    app.openapi = lambda: _openapi_with_limits(app, state.serve)

    @app.get("/health", response_model=Health, response_model_exclude_none=True, responses=ERROR_RESPONSES)
    async def health(request: Request) -> Health:
        return state.health(full=request.state.full_health)  # full: no keys configured, or a valid one sent

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def metrics() -> Response:
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/models", response_model=ModelList, responses=ERROR_RESPONSES, dependencies=bearer)
    async def list_models() -> ModelList:
        return ModelList(data=state.model_cards())

    @app.get("/v1/models/{model}", response_model=ModelCard, responses=ERROR_RESPONSES, dependencies=bearer)
    async def retrieve_model(model: str) -> ModelCard:
        cards = {card.id: card for card in state.model_cards()}
        if model not in cards:
            raise model_not_found(model, list(cards))
        return cards[model]

    @app.post("/v1/chat/completions", response_model=ChatCompletion, responses=chat_responses, dependencies=bearer)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        return await _answer(state, request, body, lambda: chat_job(body, state.serve, state.served.adapter_for))

    @app.post("/v1/completions", response_model=Completion, responses=chat_responses, dependencies=bearer)
    async def completions(body: CompletionRequest, request: Request) -> Any:
        return await _answer(state, request, body, lambda: completion_job(body, state.serve, state.served.adapter_for))

    @app.post("/v1/embeddings", response_model=EmbeddingList, responses=ERROR_RESPONSES, dependencies=bearer)
    async def embeddings(body: EmbeddingRequest, request: Request) -> EmbeddingList:
        return await embed(state, request, body)

    install_admin_routes(app, state)
    return app


async def _answer(state: Any, request: Request, body: Any, make_job: Any) -> Any:
    from tunekit.serve.pipeline import merged
    from tunekit.serve.responses import respond, stream_response

    started = time.perf_counter()
    request.state.model = body.model
    job: Job | None = None
    try:
        job = make_job()
        state.limiter.charge_tokens(request.state.limit_key, job)  # 429 past serve.tokens_per_minute
        job.deadline = started + state.serve.timeout_s
        if job.stream:
            return await stream_response(state, request, job, started)
        slot = await take_slot(state.gate, job.deadline)
        answers = await run_in_slot(slot, state.workers, job.deadline, _prepare_and_complete, state, job)
    except asyncio.TimeoutError:
        error = timed_out(state.serve.timeout_s)
        _log_refusal(state, request, body, job, error, started)
        raise error from None
    except ApiError as error:
        _log_refusal(state, request, body, job, error, started)
        raise
    state.log_answer(getattr(request.state, "key_id", None), job, merged(answers),
                     (time.perf_counter() - started) * 1000)
    request.state.logged = True
    return respond(job, answers, latency_ms=(time.perf_counter() - started) * 1000)


def _prepare_and_complete(state: Any, job: Job) -> list[Any]:
    return state.pipeline.complete(state.pipeline.prepare(job))


def _log_refusal(state: Any, request: Any, body: Any, job: Job | None, error: ApiError, started: float) -> None:
    request.state.logged = True
    request.state.error_code = error.code or error.type
    messages = job.logged_messages() if job else _body_messages(body)
    state.log_failure(endpoint=request.url.path, model=body.model, key_id=getattr(request.state, "key_id", None),
                      status=error.status, error=error.message, latency_ms=(time.perf_counter() - started) * 1000,
                      messages=messages)


def _body_messages(body: Any) -> list[dict[str, str]]:
    if isinstance(body, ChatCompletionRequest):
        return [{"role": m.role, "content": m.content if isinstance(m.content, str) else ""} for m in body.messages]
    prompt = body.prompt if isinstance(body.prompt, str) else "\n".join(body.prompt)
    return [{"role": "user", "content": prompt}]


def _openapi_with_limits(app: FastAPI, serve: Any) -> dict[str, Any]:
    """The OpenAPI document with this server's configured limits in it (max_tokens, n), so clients can read it."""
    from fastapi.openapi.utils import get_openapi

    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        limits = {"max_tokens": serve.max_tokens_limit, "max_completion_tokens": serve.max_tokens_limit,
                  "n": serve.max_n}
        for name in ("ChatCompletionRequest", "CompletionRequest"):
            fields = schema["components"]["schemas"][name]["properties"]
            for field, limit in limits.items():
                for option in fields.get(field, {}).get("anyOf", []):
                    if option.get("type") == "integer":
                        option["maximum"] = limit
        app.openapi_schema = schema
    return app.openapi_schema
