"""Adapters loaded and unloaded while serving, with vLLM's routes and fields:

    POST /v1/load_lora_adapter    {"lora_name": "support-v2", "lora_path": "runs/support-v2"}
    POST /v1/unload_lora_adapter  {"lora_name": "support-v1"}

Whoever loads an adapter decides what every client is answered, so these routes take admin keys
($TUNEKIT_ADMIN_KEYS, serve.admin_keys_env), never API keys, and are off (403) without them; the middleware
checks that. A run is checked as the ones given at start are (base, chat template, kind of adapter) before any
weight is read. Changes happen one at a time, on a request thread: loading reads files and converts weights,
and unloading waits for the adapter's requests in flight, while the event loop goes on serving.
"""

from __future__ import annotations

import logging
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Security
from fastapi.security import HTTPBearer

from tunekit.errors import UserError
from tunekit.serve.errors import ApiError
from tunekit.serve.loading import adapter_to_add
from tunekit.serve.preflight import PreflightResult, eval_settings, run_preflight
from tunekit.serve.replies import AdapterChange, ErrorBody
from tunekit.serve.schemas import LoadLoraAdapterRequest, UnloadLoraAdapterRequest
from tunekit.serve.state import ServerState, run_labeler

log = logging.getLogger("tunekit.serve")

ADMIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in ((400, "invalid request, or a run that cannot be served here"),
                         (401, "missing or wrong admin key"), (403, "no admin keys are set: the routes are off"),
                         (404, "no adapter of that name"), (409, "conflicts with what is served"),
                         (413, "request body too large"), (429, "too many wrong keys from this address"),
                         (503, "the adapter's requests are still running"))
}


def install_admin_routes(app: FastAPI, state: ServerState) -> None:
    bearer = [Security(HTTPBearer(auto_error=False, scheme_name="AdminKey",
                                  description=f"an admin key from ${state.serve.admin_keys_env}, not an API key"))]

    @app.post("/v1/load_lora_adapter", response_model=AdapterChange, response_model_exclude_none=True,
              responses=ADMIN_RESPONSES, dependencies=bearer)
    async def load_lora_adapter(body: LoadLoraAdapterRequest, request: Request) -> AdapterChange:
        return await state.run(load_adapter, state, body.lora_name, body.lora_path, _key_id(request))

    @app.post("/v1/unload_lora_adapter", response_model=AdapterChange, response_model_exclude_none=True,
              responses=ADMIN_RESPONSES, dependencies=bearer)
    async def unload_lora_adapter(body: UnloadLoraAdapterRequest, request: Request) -> AdapterChange:
        return await state.run(unload_adapter, state, body.lora_name, _key_id(request))


def load_adapter(state: ServerState, name: str, path: str, key_id: str | None = None) -> AdapterChange:
    """Check the run, load its adapter into the model the generator decodes, check it against its eval
    (preflight), then serve it: clients can ask for `name` only once it is ready."""
    with state.admin_lock:
        adapter = adapter_to_add(state.served, name, Path(path))
        labeler = run_labeler(adapter.run_dir, adapter.cfg)  # before the weights: a failure here leaves nothing
        try:
            state.backend.load_adapter(name, adapter.adapter_dir)
        except ApiError:  # the backend's own refusal (an engine elsewhere takes no adapters while serving)
            raise
        except Exception as exc:  # a damaged adapter folder: the client's path, so a 400 that says what broke
            raise ApiError(400, f"The adapter in {adapter.adapter_dir} could not be loaded: {type(exc).__name__}: "
                           f"{exc}", param="lora_path") from exc
        preflight = _preflight(state, name, adapter.run_dir, adapter.cfg)
        # Rebound, not changed in place: the event loop reads these dicts while this runs on a request thread.
        state.labelers = {**state.labelers, name: labeler}
        state.preflight = {**state.preflight, name: preflight}
        state.served.adapters = {**state.served.adapters, name: adapter}
    log.log(logging.INFO if preflight.ok else logging.WARNING, "adapter '%s' loaded from %s (admin key %s); "
            "preflight %s", name, adapter.run_dir, key_id, preflight.status)
    return AdapterChange(lora_name=name, status="loaded", models=state.served.names, preflight=preflight.to_json())


def unload_adapter(state: ServerState, name: str, key_id: str | None = None) -> AdapterChange:
    """Stop offering `name` (new requests get 404 at once), wait up to serve.timeout_s for its requests in
    flight, then delete its weights. Still busy after that: a 503, and it is offered again."""
    with state.admin_lock:
        before = state.served.adapters
        if name not in before:
            raise ApiError(404, f"No adapter named '{name}' is loaded. Loaded: {', '.join(before) or 'none'}.",
                           param="lora_name", code="model_not_found")
        if len(before) == 1:
            raise ApiError(409, f"'{name}' is the only model served, and a server must serve something: load "
                           "another adapter first.", param="lora_name", code="last_adapter")
        state.served.adapters = {n: a for n, a in before.items() if n != name}
        try:
            state.backend.unload_adapter(name, state.serve.timeout_s)
        except FutureTimeout:
            state.served.adapters = before
            raise ApiError(503, f"Requests for '{name}' were still running after {state.serve.timeout_s:g} s "
                           "(serve.timeout_s); it stays loaded. Try again.", headers={"Retry-After": "5"}) from None
        except UserError as exc:  # the generator refused; cannot happen while served.adapters matches the model
            state.served.adapters = before
            raise ApiError(409, exc.render(), param="lora_name") from exc
        state.labelers = {n: f for n, f in state.labelers.items() if n != name}
        state.preflight = {n: r for n, r in state.preflight.items() if n != name}
    log.info("adapter '%s' unloaded (admin key %s)", name, key_id)
    return AdapterChange(lora_name=name, status="unloaded", models=state.served.names)


def _preflight(state: ServerState, name: str, run_dir: Path, cfg: Any) -> PreflightResult:
    recorded = eval_settings(run_dir, cfg)["dtype"]
    served = state.backend.dtype_name
    note = f"served in {served}, but tunekit eval used {recorded}" if recorded and recorded != served else ""
    runs = {name: (run_dir, cfg)}
    return run_preflight(state.backend, runs, state.serve.preflight_prompts, dtype_note=note, say=log.info)[name]


def _key_id(request: Request) -> str | None:
    return getattr(request.state, "key_id", None)
