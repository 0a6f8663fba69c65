"""`tunekit serve RUN_OR_MODEL`: an OpenAI-compatible API for a run (and more adapters of the same base)."""

from __future__ import annotations

from pathlib import Path

import typer

from tunekit.console import err_console

SERVE_EXTRA = ("fastapi", "uvicorn", "prometheus_client", "limits")  # what `pip install 'tunekit[serve]'` adds


def serve(
    target: str = typer.Argument(..., help="a run folder, a local model folder or the embedded model's name"),
    overrides: list[str] = typer.Argument(None, help="key.sub=value overrides, e.g. serve.grounding=true"),
    adapter: list[str] = typer.Option([], "--adapter", help="NAME=RUN: another adapter on the same base "
                                      "model, chosen by the request's `model` field; repeatable"),
    name: str | None = typer.Option(None, "--name", help="the name TARGET is served under (default: its folder)"),
    config: Path | None = typer.Option(None, "--config", help="project YAML with the serve, rag and guard "
                                       "settings (default: the run's saved config; its relative paths "
                                       "resolve against the current folder)"),
    host: str | None = typer.Option(None, "--host", help="default: serve.host (127.0.0.1)"),
    port: int | None = typer.Option(None, "--port", min=0, max=65535, help="default: serve.port (8000)"),
    dtype: str = typer.Option("auto", "--dtype", help="auto (what `tunekit eval` used), fp32 or bf16"),
    strict_preflight: bool = typer.Option(False, "--strict-preflight", help="exit 1 instead of serving when "
                                          "a run does not answer as its eval recorded"),
    engine: str | None = typer.Option(None, "--engine", help="tunekit (default: decode here) or vllm (start "
                                      "vLLM's server with the runs' adapters; CUDA only); sets serve.engine"),
    engine_url: str | None = typer.Option(None, "--engine-url", help="an OpenAI-compatible server already "
                                          "running that decodes for this one, e.g. http://gpu-node:8000/v1; "
                                          "sets serve.engine_url"),
) -> None:
    """Serve the model over OpenAI's API (/v1/chat/completions, /v1/completions, /v1/models), with /health and
    Prometheus /metrics. Requests are logged to SQLite with PII redacted."""
    from tunekit.errors import UserError, require

    for module in SERVE_EXTRA:  # before minutes of loading, not after
        require(module, "tunekit serve")
    from tunekit.secrets import ApiKeys
    from tunekit.serve.auth import check_bind_is_safe
    from tunekit.serve.loading import parse_adapter_specs
    from tunekit.serve.server import run_forever
    from tunekit.serve.state import build_state, serve_config

    if dtype not in ("auto", "fp32", "bf16"):
        raise UserError(f"--dtype {dtype} is not allowed", fix="use auto, fp32 or bf16")
    adapters = parse_adapter_specs(list(adapter))
    overrides = [*(overrides or []), *([f"serve.engine={engine}"] if engine else []),
                 *([f"serve.engine_url={engine_url}"] if engine_url else [])]
    cfg = serve_config(target, adapters, config, overrides)
    host = host or cfg.serve.host
    port = cfg.serve.port if port is None else port
    # Before minutes of loading: a missing or unsafe key file, or a public port without keys.
    check_bind_is_safe(host, ApiKeys.from_config(cfg.serve, base_dir=cfg.base_dir), cfg.serve.api_keys_env)
    say = lambda msg: err_console.print(msg, highlight=False, markup=False)  # noqa: E731
    state = build_state(target, adapters=adapters, name=name, config=cfg, dtype=dtype, say=say)
    failed = [r for r in state.preflight.values() if not r.ok]
    if failed:
        err_console.print(f"[bold red]preflight: {len(failed)} served model(s) do not answer as evaluated: "
                          f"{', '.join(r.name for r in failed)} (details at /health)[/]", highlight=False)
        if strict_preflight:
            state.close()
            raise typer.Exit(1)
    keys = (f"API keys from {' and '.join(state.keys.sources)} required" if state.keys.required
            else "no API keys (loopback only)")
    if cfg.serve.trusted_proxies:
        keys += f"; X-Forwarded-For trusted from {', '.join(cfg.serve.trusted_proxies)}"
    if state.admin_keys.required:
        keys += f"; /v1/load_lora_adapter and /v1/unload_lora_adapter open to keys from ${cfg.serve.admin_keys_env}"
    err_console.print(f"listening on http://{host}:{port}/v1 ({keys}); request log: {state.request_log.path}; "
                      "Ctrl-C stops", highlight=False)
    try:
        run_forever(state, host, port)
    finally:
        state.close()
