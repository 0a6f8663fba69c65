"""Config sections of the stages after training: eval, rag, guard, serve, monitor, governance.

Kept apart from `config.py` (the loader and the data/training sections) so each file stays short;
`ProjectConfig` in `config.py` puts them together. Checks that need other modules (a gate on a metric
that no candidate computes, an unknown metric) live with those modules and run before any model loads.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

BUILTIN_CANDIDATES = ("zero_shot", "few_shot", "rag", "finetuned")
INPUT_POLICIES = ("pii", "injection", "denied_topics", "max_input_tokens")
OUTPUT_POLICIES = ("json_schema", "citations", "denied_patterns", "max_length")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TokenPrice(Section):
    input_per_1k: float = Field(0.0, ge=0.0, description="USD per 1,000 input tokens")
    output_per_1k: float = Field(0.0, ge=0.0, description="USD per 1,000 output tokens")


class CostConfig(Section):
    usd_per_hour: float = Field(0.10, ge=0.0, description="price of the machine that serves local models")
    token_prices: dict[str, TokenPrice] = Field(
        default_factory=dict, description="candidate name -> per-token price (an API baseline)"
    )


class LatencyConfig(Section):
    """How per-request latency is measured: apart from the batched quality pass (see eval/latency.py)."""

    samples: int = Field(16, ge=1, description="test rows sent one request each (the same rows for every candidate)")
    concurrency: int = Field(1, ge=1, le=256, description="requests in flight at once (closed loop); "
                             "set it to the expected load, e.g. serve.max_concurrency")


class EvalConfig(Section):
    candidates: list[str] = Field(
        default_factory=lambda: ["zero_shot", "few_shot", "finetuned"],
        description=f"{', '.join(BUILTIN_CANDIDATES)}, or a name from eval.compare",
    )
    compare: dict[str, str] = Field(
        default_factory=dict, description="extra candidates: name -> run folder or local model folder"
    )
    run: str | None = Field(None, description="the fine-tuned run folder (default: run_dir)")
    out_dir: str | None = Field(None, description="where the report goes (default: RUN/eval)")
    metrics: list[str] = Field(default_factory=lambda: ["exact_match"])
    gates: list[str] = Field(default_factory=list, description="e.g. 'accuracy >= 0.85', 'latency_p95_ms <= 300'")
    primary_metric: str | None = Field(None, description="the metric that ranks candidates (default: first)")
    few_shot_k: int = Field(3, ge=1, le=32)
    max_samples: int | None = Field(None, ge=1, description="evaluate the first N test rows only")
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int | None = Field(None, ge=1, description="default: chosen to fit memory")
    dtype: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 where the CPU/GPU has it")
    labels: list[str] | None = Field(None, description="label set (default: the answers seen in train)")
    label_field: str | None = Field(None, description="JSON answers: the field that holds the label")
    json_schema: str | None = Field(None, description="JSON schema file for json_schema/field_accuracy")
    constrained: Literal["auto", True, False] = Field(
        "auto", description="decode every candidate under one output constraint (eval/constraint.py): auto, when "
        "the answers are JSON or labels (a declared JSON schema, else one inferred from train); true, the same, "
        "but an error when none can be decided; false, never")
    unconstrained_samples: int = Field(
        64, ge=0, description="when candidates are constrained, this many test rows (seeded, the same for every "
        "candidate) are decoded again without the constraint, to report how often the model's own output is "
        "valid; 0: skip that pass")
    bootstrap_samples: int = Field(1000, ge=100)
    safety: bool = Field(False, description="also run the red-team set, with and without guardrails")
    cost: CostConfig = Field(default_factory=CostConfig)
    latency: LatencyConfig = Field(default_factory=LatencyConfig)

    @field_validator("constrained", mode="before")
    @classmethod
    def _constrained_word(cls, value: object) -> object:
        """auto, true or false; as YAML reads them (a bool) or quoted ("true"), and nothing else."""
        if isinstance(value, str) and value.strip().lower() in ("auto", "true", "false"):
            word = value.strip().lower()
            return "auto" if word == "auto" else word == "true"
        if isinstance(value, bool):
            return value
        raise ValueError("must be auto, true or false (auto: constrain the answers when they are JSON or labels; "
                         "true: the same, and an error when no constraint can be decided; false: never)")

    @field_validator("gates", mode="before")
    @classmethod
    def _gates_from_mapping(cls, value: object) -> object:
        """Run folders written before gates were a list saved them as {metric: "op threshold"}; read those."""
        if isinstance(value, dict):
            return [f"{metric} {condition}" for metric, condition in value.items()]
        return value

    @field_validator("gates")
    @classmethod
    def _gates_parse(cls, value: list[str]) -> list[str]:
        from tunekit.gates import parse_gate

        for text in value:
            parse_gate(text)  # raises ValueError naming the gate and the allowed operators
        return value


class RagConfig(Section):
    index: str | None = Field(None, description="SQLite index file from `tunekit index`")
    docs: list[str] = Field(default_factory=list, description="files or folders to index when index is missing")
    top_k: int = Field(4, ge=1, le=50)
    mode: Literal["hybrid", "bm25", "dense"] = "hybrid"
    rrf_k: int = Field(60, ge=1, description="reciprocal rank fusion constant")
    chunk_chars: int = Field(1200, ge=100, description="target chunk size in characters")
    chunk_overlap: int = Field(200, ge=0, description="characters shared by neighbouring chunks")
    require_citations: bool = True
    # "none", not "off": YAML reads a bare `off` as false.
    citations: Literal["auto", "inline", "json_field", "none"] = Field(
        "auto", description="how grounded answers cite: inline, [n] markers in prose; json_field, a list of "
        "source numbers in one field of a JSON answer (structured outputs keep their format); none, sources "
        "as context only; auto: json_field when answers are JSON (a JSON schema, label_field or a JSON "
        "metric is configured), else inline")
    citation_field: str = Field("sources", min_length=1, description="the JSON field for json_field citations")


class GuardConfig(Section):
    enabled: bool = False
    input: list[Literal[INPUT_POLICIES]] = Field(default_factory=lambda: list(INPUT_POLICIES))  # type: ignore[valid-type]
    output: list[Literal[OUTPUT_POLICIES]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["denied_patterns", "max_length"]
    )
    pii_action: Literal["redact", "block"] = "redact"
    pii_kinds: list[str] | None = None
    denied_topics: list[str] = Field(default_factory=list, description="regular expressions on the input")
    denied_patterns: list[str] = Field(default_factory=list, description="regular expressions on the output")
    max_input_tokens: int = Field(2048, ge=1)
    max_output_chars: int = Field(4000, ge=1)
    json_schema: str | None = Field(None, description="schema file the output must conform to")
    json_retries: int = Field(2, ge=0, le=10)
    fallback: str = "Sorry, I can't help with that request."


class ServeConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # Keys come from the environment or a file, never from this config: it is copied into run folders.
    api_keys_env: str = Field("TUNEKIT_API_KEYS", description="comma-separated bearer keys from this variable; "
                              "no keys anywhere: no auth (loopback only)")
    api_keys_file: str | None = Field(None, description="file of bearer keys, one a line, # comments; "
                                      "must not be writable by group or others")
    admin_keys_env: str = Field("TUNEKIT_ADMIN_KEYS", description="comma-separated bearer keys for "
                                "/v1/load_lora_adapter and /v1/unload_lora_adapter, from this variable only; "
                                "none: those routes answer 403. API keys never open them")
    max_body_bytes: int = Field(1_000_000, ge=1024)
    max_tokens_limit: int = Field(512, ge=1, description="most new tokens one request may ask for")
    max_n: int = Field(8, ge=1, le=128, description="most choices (n) one request may ask for; each is a row "
                       "of the batch, and the request is charged n x max_tokens")
    max_input_tokens: int = Field(4096, ge=1)
    max_input_chars: int | None = Field(
        None, ge=1, description="characters of message text per request, checked before tokenizing; "
                               "default 16 x max_input_tokens")
    rate_limit_per_minute: int = Field(120, ge=1, description="requests per key (or client) per minute")
    tokens_per_minute: int = Field(100_000, ge=1, description="tokens per key (or client) per minute: "
                                   "max_tokens times n plus the prompt estimated at 4 characters a token "
                                   "(embeddings: their input so estimated)")
    auth_failures_per_minute: int = Field(10, ge=1, description="wrong or missing keys from one client address "
                                          "before it gets 429s, even with a right key, for a minute")
    trusted_proxies: list[str] = Field(default_factory=list, description="addresses or networks (CIDR) whose "
                                       "X-Forwarded-For names the client; empty: the socket peer is the client")
    timeout_s: float = Field(120.0, gt=0)
    max_concurrency: int = Field(8, ge=1, description="requests decoded together")
    queue_size: int = Field(64, ge=1, description="waiting requests before 503")
    grounding: bool = Field(False, description="retrieve from rag.index and cite sources")
    log_db: str | None = Field(None, description="request log SQLite file (default: RUN/serve/requests.db)")
    log_retention_days: float | None = Field(30.0, gt=0, description="delete logged requests older than this; "
                                                                     "null: keep them all")
    log_max_mb: float | None = Field(1024.0, gt=0, description="over this, the oldest logged requests are "
                                                               "deleted; null: no cap")
    log_queue_size: int = Field(10_000, ge=1, description="rows waiting to be logged; more are dropped and "
                                                          "counted, so a slow disk never slows a request")
    preflight_prompts: int = Field(3, ge=0)
    engine: Literal["tunekit", "vllm"] = Field(
        "tunekit", description="what decodes: tunekit's own batched engine in this process, or vLLM's OpenAI "
                               "server started beside it (CUDA only) with the runs' adapters; guardrails, "
                               "grounding, limits and logging stay tunekit's (docs/serving.md)")
    engine_url: str | None = Field(
        None, description="an OpenAI-compatible server already running (vLLM on GPU nodes, say) that decodes "
                          "for this one, e.g. http://10.0.0.5:8000/v1; its bearer key from $TUNEKIT_ENGINE_API_KEY")
    engine_args: list[str] = Field(default_factory=list, description="extra arguments for `vllm serve`, e.g. "
                                   "[--gpu-memory-utilization, '0.8', --tensor-parallel-size, '2']")

    @field_validator("engine_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL ending in the API's root, e.g. http://host:8000/v1")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _one_engine(self) -> ServeConfig:
        if self.engine == "vllm" and self.engine_url is not None:
            raise ValueError("serve.engine=vllm starts vLLM here and serve.engine_url uses one already running: "
                             "set one of them")
        return self

    @property
    def input_chars_limit(self) -> int:
        return self.max_input_chars or 16 * self.max_input_tokens

    @model_validator(mode="before")
    @classmethod
    def _no_keys_in_config(cls, value: object) -> object:
        """`serve.api_keys` is gone: a key in a config ends up in every run folder and model card made from it.

        Raised as a ConfigError, not a ValueError, so pydantic's message (which quotes the input) never
        prints the key. An empty list is dropped quietly: older versions saved `api_keys: []` in each run."""
        if isinstance(value, dict) and "api_keys" in value:
            value = dict(value)
            if value.pop("api_keys"):
                from tunekit.errors import ConfigError

                raise ConfigError("API keys are no longer read from a config file, which is copied into run "
                                  "folders", where="serve.api_keys", fix="remove it; put the keys in "
                                  "$TUNEKIT_API_KEYS or another variable named by serve.api_keys_env, or in "
                                  "a file named by serve.api_keys_file")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_addresses(cls, value: list[str]) -> list[str]:
        """Written as uvicorn matches them; a malformed entry would otherwise be trusted never, silently."""
        import ipaddress

        normalized = []
        for entry in value:
            try:
                normalized.append(str(ipaddress.ip_network(entry.strip(), strict=False)) if "/" in entry
                                  else str(ipaddress.ip_address(entry.strip())))
            except ValueError:
                raise ValueError(f"'{entry}' is not an IP address or network such as 10.0.0.0/8") from None
        return normalized


class MonitorConfig(Section):
    psi_threshold: float = Field(0.2, gt=0, description="input length shift (population stability index)")
    embedding_p_value: float = Field(0.01, gt=0, lt=1, description="permutation test on embedding centroids")
    new_vocab_threshold: float = Field(0.2, ge=0, le=1, description="share of words never seen in training")
    label_psi_threshold: float = Field(0.2, gt=0)
    block_rate_threshold: float = Field(0.05, ge=0, le=1)
    schema_failure_threshold: float = Field(0.05, ge=0, le=1)
    latency_slo_ms: float = Field(2000.0, gt=0, description="p95 latency objective")


class GovernanceConfig(Section):
    owner: str = Field("", description="the named person or team that owns this model")
    on_call: str = Field("", description="who is paged when it misbehaves")
    slices: list[str] = Field(default_factory=list, description="metadata fields to report accuracy per value of")
    base_model_license: str | None = Field(None, description="default: looked up for known models")
