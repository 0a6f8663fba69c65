"""Errors as OpenAI sends them: `{"error": {"message", "type", "param", "code"}}` with a matching status.

The OpenAI SDKs turn these into their own exception classes (BadRequestError, AuthenticationError,
NotFoundError, RateLimitError...), so clients handle tunekit's errors exactly as they handle OpenAI's.
Every failure path ends here, FastAPI's own 404/405/422 and the body-size 413 included.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("tunekit.serve")

# status -> OpenAI's error type for it
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    499: "client_closed_request",
    500: "server_error",
    502: "server_error",  # the engine behind this server (serve/remote.py) failed or did not answer
    503: "server_error",
    504: "timeout",
}
ERROR_CODES = {401: "invalid_api_key", 404: "not_found", 413: "request_too_large", 429: "rate_limit_exceeded",
               499: "client_closed_request", 503: "overloaded", 504: "timeout"}
JSON_HINT = ("We could not parse the JSON body of your request: send a JSON object with "
             "Content-Type: application/json.")


class ApiError(Exception):
    """A request the server refuses, with the OpenAI error body that says why."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code if code is not None else ERROR_CODES.get(status)
        self.type = type or ERROR_TYPES.get(status, "invalid_request_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def model_not_found(name: str, available: list[str]) -> ApiError:
    return ApiError(404, f"The model '{name}' does not exist. Available: {', '.join(available)}.",
                    param="model", code="model_not_found")


def timed_out(seconds: float | None = None) -> ApiError:
    limit = f"of {seconds:g} s" if seconds is not None else "(serve.timeout_s)"
    return ApiError(504, f"Generation took longer than this server's timeout {limit}.")


def install_error_handlers(app: Any) -> None:
    """Route every error FastAPI or Starlette can raise to an OpenAI-style body."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    def respond(error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    async def api_error(_request: Any, exc: ApiError) -> JSONResponse:
        return respond(exc)

    async def validation_error(request: Any, exc: RequestValidationError) -> JSONResponse:
        if "json" not in request.headers.get("content-type", ""):
            return respond(ApiError(400, JSON_HINT, code="invalid_json"))
        return respond(from_validation(exc.errors()))

    async def http_error(_request: Any, exc: HTTPException) -> JSONResponse:
        message = {404: "Unknown URL: see /docs for the endpoints"}
        return respond(ApiError(exc.status_code, message.get(exc.status_code, str(exc.detail)),
                                headers=dict(exc.headers or {})))

    async def unexpected(_request: Any, exc: Exception) -> JSONResponse:
        log.exception("unexpected error while serving a request", exc_info=exc)
        return respond(ApiError(500, "The server had an error while processing your request."))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


def from_validation(errors: Any) -> ApiError:
    """A 400 naming the most telling invalid field, as OpenAI does (FastAPI's default would be a 422 list).

    A field the server does not take, or a value it would have to ignore, is named as such; otherwise the
    error pydantic found, with the union members it tried left out of the field's path."""
    errors = list(errors)
    if not errors:
        return ApiError(400, "Invalid request.")
    first = _most_telling(errors)
    kind = first.get("type")
    if kind == "json_invalid":
        return ApiError(400, JSON_HINT, code="invalid_json")
    loc = [str(p) for p in first.get("loc", ()) if p != "body" and "[" not in str(p)]
    param = ".".join(loc) or None
    if kind == "extra_forbidden" and param:
        return ApiError(400, f"{param} is not supported by this server: remove it (/docs lists the fields each "
                             "endpoint takes).", param=param, code="unsupported_parameter")
    if kind == "unsupported_value" and param:
        return ApiError(400, f"{param}={_shown(first.get('input'))} {first.get('msg')}.", param=param,
                        code="unsupported_value")
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if param is None and kind in ("model_attributes_type", "dict_type", "model_type"):
        message = "The request body must be a JSON object."
    if param is None and kind == "missing":
        message = "The request has no body: send a JSON object."
    return ApiError(400, f"{param}: {message}" if param else message, param=param)


def _most_telling(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """An unsupported field or value first; then an error about a value rather than its type: for a union
    (text or a list of parts) pydantic reports each member, and "should be a valid string" about a list that
    holds a bad part hides the part's own error."""
    unsupported = [e for e in errors if e.get("type") in ("extra_forbidden", "unsupported_value")]
    about_values = [e for e in errors if not str(e.get("type", "")).endswith("_type")]
    return (unsupported or about_values or errors)[0]


def _shown(value: Any, limit: int = 60) -> str:
    """A client's value, as JSON and cut short: it goes into the error message."""
    import json

    try:
        text = json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
