"""Everything one server holds, built once at start: models, backend, guardrails, retriever, limits, log.

`build_state` is the programmatic entry point (the CLI, tests and the demo all use it):

    state = build_state("runs/demo", adapters=[("other", Path("runs/other"))])
    with serve_in_thread(state) as server: ...
    state.close()
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunekit.config import ProjectConfig, load_config
from tunekit.config_stages import ServeConfig
from tunekit.monitor.logdb import RequestLog, RequestRecord, utc_now
from tunekit.rag.grounding import Grounding
from tunekit.runfolder import RunFolder
from tunekit.secrets import ApiKeys
from tunekit.serve.embeddings import Embedder
from tunekit.serve.jobs import Job
from tunekit.serve.limits import AdmissionGate, RateLimits
from tunekit.serve.loading import ServedModels, load_served
from tunekit.serve.logwriter import RequestLogWriter
from tunekit.serve.metrics import ServeMetrics
from tunekit.serve.pipeline import Answer, Pipeline
from tunekit.serve.preflight import PreflightResult, eval_settings, run_preflight
from tunekit.serve.replies import Health, ModelCard

log = logging.getLogger("tunekit.serve")


@dataclass
class ServerState:
    cfg: ProjectConfig
    served: ServedModels
    backend: Any
    pipeline: Pipeline
    keys: ApiKeys
    limiter: RateLimits
    metrics: ServeMetrics
    request_log: RequestLog | None
    preflight: dict[str, PreflightResult] = field(default_factory=dict)
    labelers: dict[str, Callable[[str], str | None]] = field(default_factory=dict)
    created: int = field(default_factory=lambda: int(time.time()))
    admin_keys: ApiKeys = field(default_factory=lambda: ApiKeys(()))  # none: the admin routes are off
    # Adapters are loaded and unloaded one change at a time (admin.py).
    admin_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    embedder: Embedder = field(default_factory=Embedder)  # /v1/embeddings; loads at its first request
    gate: AdmissionGate | None = None  # made per app: asyncio primitives belong to one event loop
    # One writer thread with a bounded queue: redaction and SQLite inserts leave the request path (logwriter.py).
    _writer: RequestLogWriter | None = field(default=None, init=False)
    _workers: ThreadPoolExecutor | None = None

    def __post_init__(self) -> None:
        if self.request_log is not None:  # started here so retention runs at start, before the first request
            self._writer = RequestLogWriter.from_config(self.request_log, self.serve,
                                                        on_drop=self.metrics.count_log_drop)

    @property
    def workers(self) -> ThreadPoolExecutor:
        """Threads that run requests (guardrails, retrieval, waiting on the batch): one per admitted request,
        so a busy server never queues an admitted request behind a shared default pool."""
        if self._workers is None:
            self._workers = ThreadPoolExecutor(self.serve.max_concurrency + 4, "tunekit-request")
        return self._workers

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` on a request thread, awaited from the event loop."""
        import asyncio

        return await asyncio.get_running_loop().run_in_executor(self.workers, fn, *args)

    @property
    def serve(self) -> ServeConfig:
        return self.cfg.serve

    def new_gate(self) -> AdmissionGate:
        self.gate = AdmissionGate(self.serve.max_concurrency, self.serve.queue_size)
        return self.gate

    def health(self, full: bool = True) -> Health:
        """The status, and with `full` the models, preflight results and load: those only to key holders."""
        bad = [r for r in self.preflight.values() if not r.ok]
        if not full:
            return Health(status="degraded" if bad else "ok")
        return Health(status="degraded" if bad else "ok", models=self.served.names,
                      preflight={name: r.to_json() for name, r in self.preflight.items()},
                      in_flight=self.gate.running if self.gate else 0, queued=self.gate.waiting if self.gate else 0)

    def model_cards(self) -> list[ModelCard]:
        """The served models (base and adapters), then the embedding model when it is installed."""
        base = self.served.base_name
        cards = [ModelCard(id=name, created=self.created, root=base, parent=base if name != base else None)
                 for name in self.served.names]
        embedding = self.embedder.card(self.created)
        return cards if embedding is None else [*cards, embedding]

    def knows_model(self, name: str) -> bool:
        """Whether `name` is one this server answers for (metrics label only those: clients invent names)."""
        return name in self.served.names or (self.embedder.available and name == self.embedder.model_id)

    def log_answer(self, key_id: str | None, job: Job, answer: Answer, latency_ms: float) -> None:
        self.metrics.tokens.labels(job.model, "prompt").inc(answer.prompt_tokens)
        self.metrics.tokens.labels(job.model, "completion").inc(answer.completion_tokens)
        self.metrics.record_guard(answer.events)
        labeler = self.labelers.get(job.model)
        label = labeler(answer.text) if labeler and not answer.blocked else None
        self._write(RequestRecord(
            ts=utc_now(), endpoint=job.endpoint, model=job.model, key_id=key_id, messages=job.logged_messages(),
            response=answer.text, input_tokens=answer.prompt_tokens, output_tokens=answer.completion_tokens,
            latency_ms=round(latency_ms, 2), status=200, guard_blocked=answer.blocked, guard_events=answer.events,
            schema_failed=answer.schema_failed, citations=answer.citations, predicted_label=label))

    def log_failure(self, *, endpoint: str, model: str, key_id: str | None, status: int, error: str | None,
                    latency_ms: float, messages: list[dict[str, str]] | None = None) -> None:
        self._write(RequestRecord(ts=utc_now(), endpoint=endpoint, model=model or "", key_id=key_id,
                                  messages=messages or [], response=None, input_tokens=0, output_tokens=0,
                                  latency_ms=round(latency_ms, 2), status=status, error=error))

    def report_unexpected(self, exc: BaseException) -> None:
        log.error("generation failed", exc_info=exc)

    def _write(self, record: RequestRecord) -> None:
        if self._writer is not None:
            self._writer.submit(record)

    def flush(self) -> None:
        """Wait until every row submitted so far is written."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        self.backend.close()
        if self._workers is not None:
            self._workers.shutdown(wait=True)
        if self._writer is not None:
            self._writer.close()
        if self.request_log is not None:
            self.request_log.close()


def build_state(target: str, *, adapters: list[tuple[str, Path]] | tuple = (), name: str | None = None,
                config: str | Path | ProjectConfig | None = None, overrides: list[str] | tuple = (),
                dtype: str = "auto", say: Any = print) -> ServerState:
    """Load `target` (a run or a model) with `adapters`, check them (preflight) and make a ready server state.

    `config` (a YAML path or a ProjectConfig) and `overrides` (`key=value`) give the serve, rag and guard
    settings; by default the first run's saved config. `dtype` "auto" means the dtype the run's
    `tunekit eval` used, so served answers are the evaluated ones.
    """
    from tunekit.quiet import offline_and_quiet

    offline_and_quiet()
    adapters = list(adapters)
    # Every setting is checked before a model loads: the config, the keys, the guard's regexes and schema, the index.
    cfg = serve_config(target, adapters, config, list(overrides))
    _guardrails(cfg, None)
    keys = ApiKeys.from_config(cfg.serve, base_dir=cfg.base_dir)
    admin_keys = ApiKeys.admin_from_config(cfg.serve, keys)
    for note in keys.notes:
        say(f"warning: {note}")
    retriever = _retriever(cfg, say)
    local = cfg.serve.engine == "tunekit" and cfg.serve.engine_url is None
    if cfg.serve.engine == "vllm":
        from tunekit.serve.vllm import check_vllm_available

        check_vllm_available()  # before anything loads
    served = load_served(target, adapters, name=name, say=say, weights=local)
    runs = {n: (run_dir, _run_cfg(served, n, cfg)) for n, run_dir in served.runs().items()}
    if local:
        dtype, dtype_note = _choose_dtype(dtype, runs)
        backend = _backend(served, dtype, cfg.serve.max_concurrency)
        say(f"serving {', '.join(served.names)} in {backend.dtype_name}" + (f" ({dtype_note})" if dtype_note else ""))
    else:
        from tunekit.serve.remote import connect_engine

        backend = connect_engine(served, cfg.serve, say)
        dtype_note = f"decoded by the engine at {backend.url}, not by tunekit's engine as in tunekit eval"
        say(f"serving {', '.join(served.names)} through the engine at {backend.url}")
    pipeline = Pipeline(backend, guard=_guardrails(cfg, served.tokenizer), retriever=retriever,
                        grounding=Grounding.from_config(cfg), max_input_tokens=cfg.serve.max_input_tokens)
    pipeline.check_guard_constraint(say)
    preflight = run_preflight(backend, runs, cfg.serve.preflight_prompts, dtype_note=dtype_note, say=say)
    return ServerState(cfg=cfg, served=served, backend=backend, pipeline=pipeline, keys=keys,
                       limiter=RateLimits.from_config(cfg.serve), metrics=ServeMetrics(),
                       request_log=RequestLog(_log_path(cfg, served)), preflight=preflight,
                       labelers={n: run_labeler(run_dir, c) for n, (run_dir, c) in runs.items()},
                       admin_keys=admin_keys)


def serve_config(target: str, adapters: list[tuple[str, Path]], config: str | Path | ProjectConfig | None,
                 overrides: list[str]) -> ProjectConfig:
    """The settings to serve with: `config`, else the first run's saved config.yaml, with `overrides` on top."""
    from tunekit.models.runs import is_run

    if isinstance(config, ProjectConfig):
        if overrides:
            raise ValueError("pass overrides with a config file, or apply them to the ProjectConfig yourself")
        return config
    if config is not None:
        return load_config(config, overrides)
    first_run = next((p for p in [Path(target), *(run for _, run in adapters)] if is_run(p)), None)
    if first_run is None:
        return load_config(None, overrides)
    cfg = RunFolder(first_run).config(overrides)
    # The saved copy's relative paths (rag.index, guard.json_schema, serve.log_db) were written relative to
    # the project folder training ran from, normally the current one; --config gives them explicitly.
    cfg.base_dir = Path.cwd()
    return cfg


def _run_cfg(served: ServedModels, name: str, cfg: ProjectConfig) -> ProjectConfig:
    if name in served.adapters:
        return served.adapters[name].cfg
    return served.primary_cfg or cfg


def _choose_dtype(requested: str, runs: dict[str, tuple[Path, ProjectConfig]]) -> tuple[str, str]:
    recorded = {eval_settings(run_dir, cfg)["dtype"] for run_dir, cfg in runs.values()} - {None}
    if requested != "auto":
        if recorded and recorded != {requested}:
            return requested, f"--dtype {requested}, but tunekit eval used {', '.join(sorted(recorded))}"
        return requested, ""
    if len(recorded) == 1:
        return recorded.pop(), "the dtype tunekit eval used"
    if recorded:
        return "fp32", f"the runs' evals used different dtypes ({', '.join(sorted(recorded))}); fp32 chosen"
    if runs:
        return "fp32", "no eval records a dtype: fp32, in which greedy answers are reproducible"
    return "auto", ""  # nothing evaluated to match: the fastest dtype the hardware does natively


def _backend(served: ServedModels, dtype: str, max_batch_size: int) -> Any:
    from tunekit.serve.backend import Backend

    return Backend(served.model, served.tokenizer, dtype=dtype, max_batch_size=max_batch_size)


def _guardrails(cfg: ProjectConfig, tokenizer: Any) -> Any:
    """The configured guardrails (every regex and schema checked), or None when switched off; `tokenizer`
    counts input tokens for guard.max_input_tokens."""
    if not cfg.guard.enabled:
        return None
    from tunekit.guard import Guardrails

    return Guardrails.from_config(cfg, tokenizer=tokenizer)


def _retriever(cfg: ProjectConfig, say: Any) -> Any:
    if not cfg.serve.grounding:
        return None
    from tunekit.rag.retrieve import Retriever

    retriever = Retriever.from_config(cfg, say=say)
    say(f"grounding on {retriever.index_path} ({len(retriever)} chunks, {retriever.mode}, top {retriever.top_k})")
    return retriever


def _log_path(cfg: ProjectConfig, served: ServedModels) -> Path:
    if cfg.serve.log_db:
        return (cfg.base_dir / cfg.serve.log_db).resolve()
    runs = served.runs()
    root = next(iter(runs.values())) if runs else cfg.run_path()
    return root / "serve" / "requests.db"


def run_labeler(run_dir: Path, cfg: ProjectConfig) -> Callable[[str], str | None] | None:
    """For classification runs: the label in an answer, logged so the monitor can see label drift."""
    from tunekit.data.answers import label_of_answer

    if cfg.eval.label_field:
        return lambda text: label_of_answer(text, cfg.eval.label_field)
    train = RunFolder(run_dir).split_path("train")
    if not train.is_file():
        return None
    from tunekit.data.records import read_split
    from tunekit.data.stats import answers_are_labels

    if not answers_are_labels(read_split(train), cfg.data.label_set_max):
        return None
    return lambda text: label_of_answer(text, None)
