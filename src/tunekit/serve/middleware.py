"""The ASGI layer in front of every route: API keys, per-key rate limits, metrics and the error log.

The admin routes (ADMIN_ENDPOINTS, admin.py) take admin keys instead, never API keys, and are off without them.

Keys and rate limits are checked before the body is read, so an unauthenticated or throttled client costs
no JSON parsing, and a 401 comes first even when the body is also malformed (as with OpenAI's API). A client
address with too many failed keys is refused before its key is even compared. The client address is the
socket peer unless serve.trusted_proxies lets uvicorn take it from X-Forwarded-For (server.py).
Plain ASGI rather than Starlette's BaseHTTPMiddleware, which buffers streamed responses.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.exceptions import HTTPException

from tunekit.serve.auth import authenticate
from tunekit.serve.errors import ERROR_CODES, ERROR_TYPES, ApiError

GENERATION_ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
ADMIN_ENDPOINTS = ("/v1/load_lora_adapter", "/v1/unload_lora_adapter")
KNOWN_ENDPOINTS = (*GENERATION_ENDPOINTS, *ADMIN_ENDPOINTS, "/v1/embeddings", "/v1/models", "/health", "/metrics",
                   "/openapi.json", "/docs")


class ApiMiddleware:
    def __init__(self, app: Any, state: Any):
        self.app = app
        self.state = state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_state = scope.setdefault("state", {})
        status = {"code": 500, "started": False}

        async def tracked_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self._finish(scope, status["code"], started)

        try:
            if scope["path"].startswith("/v1/") or scope["path"] == "/health":
                refused = self._admit(scope, request_state)
                if refused is not None:
                    await _send_error(refused, scope, receive, tracked_send)
                    return
            if _declared_length(scope) > self.state.serve.max_body_bytes:
                await _send_error(_too_large(self.state.serve.max_body_bytes), scope, receive, tracked_send)
                return
            await self.app(scope, self._limited(receive), tracked_send)
        except Exception:
            self._finish(scope, 500, started)
            raise

    def _limited(self, receive: Any) -> Any:
        """`receive` that stops a body sent without Content-Length (chunked) at the size limit.

        Hand-written rather than Starlette's RequestBodyLimitMiddleware: that one replaces the response
        with a plain-text 413, where OpenAI clients expect an error object."""
        limit = self.state.serve.max_body_bytes
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                # An HTTPException passes FastAPI's body parsing untouched and reaches errors.http_error.
                raise HTTPException(413, _too_large(limit).message)
            return message

        return limited

    def _admit(self, scope: dict, request_state: dict) -> ApiError | None:
        headers = dict(scope.get("headers") or [])
        authorization = headers.get(b"authorization", b"").decode("latin-1") or None
        client = (scope.get("client") or ("unknown", 0))[0]
        if scope["path"] == "/health":
            return self._admit_health(authorization, client, request_state)
        if scope["path"] in ADMIN_ENDPOINTS:
            return self._admit_admin(authorization, client, request_state)
        try:
            key_id = self._authenticate(authorization, client)
        except ApiError as exc:
            request_state["unlogged"] = True  # unauthenticated traffic never reaches the request log
            return exc
        request_state["key_id"] = key_id
        request_state["limit_key"] = key_id or f"ip:{client}"  # what the route charges tokens to
        try:
            self.state.limiter.hit(request_state["limit_key"])
        except ApiError as exc:
            return exc
        return None

    def _admit_health(self, authorization: str | None, client: str, request_state: dict) -> ApiError | None:
        """/health answers anyone (load balancers probe it without keys), in full only to a key holder.

        A key sent to /health is checked like any other: else /health would be a way to test keys unthrottled."""
        if self.state.keys.required and authorization is None:
            request_state["full_health"] = False
            return None
        try:
            self._authenticate(authorization, client)
        except ApiError as exc:
            return exc
        request_state["full_health"] = True
        return None

    def _admit_admin(self, authorization: str | None, client: str, request_state: dict) -> ApiError | None:
        """Admin keys only: an API key is as wrong here as any other (and counts toward the lockout). No rate
        limit: admin calls are few, and a budget shared with API traffic could lock the operator out."""
        request_state["unlogged"] = True  # the request log holds completions
        if not self.state.admin_keys.required:
            return ApiError(403, f"The admin endpoints are off: set admin keys in ${self.state.serve.admin_keys_env} "
                            "(serve.admin_keys_env) and restart the server to enable them.", code="admin_disabled")
        try:
            request_state["key_id"] = self._authenticate(authorization, client, admin=True)
        except ApiError as exc:
            return exc
        return None

    def _authenticate(self, authorization: str | None, client: str, *, admin: bool = False) -> str | None:
        """The key id (None without keys); a 429 for a locked-out client, a 401 (counted) for a wrong key."""
        keys = self.state.admin_keys if admin else self.state.keys
        if not keys.required:
            return None
        limiter = self.state.limiter
        limiter.refuse_if_locked_out(client)
        try:
            return authenticate(keys, authorization, "admin key" if admin else "API key")
        except ApiError:
            limiter.failed_authentication(client)
            raise

    def _finish(self, scope: dict, status: int, started: float) -> None:
        request_state = scope.get("state", {})
        if request_state.get("finished"):
            return
        request_state["finished"] = True
        path = scope["path"]
        endpoint = path if path in KNOWN_ENDPOINTS else ("/v1/models/{model}" if path.startswith("/v1/models/")
                                                         else "other")
        latency = time.perf_counter() - started
        error = None
        if status >= 400:
            error = request_state.get("error_code") or ERROR_CODES.get(status) or ERROR_TYPES.get(status, "error")
        model = request_state.get("model", "")
        # Label values must come from a fixed set: a client inventing model names must not grow /metrics.
        label = model if not model or self.state.knows_model(model) else "unknown"
        self.state.metrics.record(endpoint=endpoint, model=label, status=status,
                                  latency_s=latency, error_type=error)
        if status >= 400 and path in GENERATION_ENDPOINTS and not request_state.get("logged") \
                and not request_state.get("unlogged"):
            # Refused before the route ran (bad JSON, too large, throttled): still one row in the log.
            self.state.log_failure(endpoint=path, model=model,
                                   key_id=request_state.get("key_id"), status=status, error=error,
                                   latency_ms=latency * 1000)


def _declared_length(scope: dict) -> int:
    for name, value in scope.get("headers") or []:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0  # h11 refuses such requests before they get here
    return 0


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"Request body too large: the limit is {limit} bytes.")


async def _send_error(error: ApiError, scope: dict, receive: Any, send: Any) -> None:
    from starlette.responses import JSONResponse

    await JSONResponse(error.body(), status_code=error.status, headers=error.headers)(scope, receive, send)
