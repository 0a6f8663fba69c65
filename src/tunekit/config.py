"""The one typed project config: YAML in, `key.sub=value` overrides on top, validated before any model loads.

Every section forbids unknown keys, so a typo like `data.fromat` is an error that names the key and
the allowed ones instead of a setting that silently does nothing.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunekit.config_stages import (
    EvalConfig,
    GovernanceConfig,
    GuardConfig,
    MonitorConfig,
    RagConfig,
    ServeConfig,
)
from tunekit.errors import ConfigError, UserError

DATA_FORMATS = ("auto", "messages", "sharegpt", "alpaca", "prompt_completion", "text", "task", "label")



# The vocabulary `data` is configured with. It lives here, one layer below `data`, so that the config
# can check names without importing the readers and detectors that use them.
MAPPABLE_FIELDS = (
    "messages", "conversations", "system", "instruction", "input", "output", "prompt", "completion",
    "text", "label",
)  # fmt: skip
PII_KINDS = ("email", "phone", "credit_card", "iban", "ip_address", "api_key")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    name: str = Field("smollm2-135m-instruct", description="embedded name, local HF folder or .gguf file")
    trust_remote_code: bool = Field(False, description="run Python code shipped with a model folder")
    max_seq_len: int = Field(512, ge=16, le=131072, description="longest example in tokens")


class DedupeConfig(Section):
    exact: bool = True
    near: bool = True
    near_threshold: float = Field(0.85, gt=0.0, le=1.0, description="estimated Jaccard similarity")
    num_perm: int = Field(64, ge=16, le=512, description="MinHash permutations (more: slower, finer)")


class SplitConfig(Section):
    train: float = Field(0.8, gt=0.0, lt=1.0)
    validation: float = Field(0.1, ge=0.0, lt=1.0)
    test: float = Field(0.1, gt=0.0, lt=1.0)
    seed: int = 42
    stratify: Literal["auto", "none"] = Field("auto", description="auto: by label or repeating answer")

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> SplitConfig:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + validation + test must be 1.0, got {total:g}")
        return self


class SplitFiles(Section):
    """Your own splits instead of fractions of data.files (e.g. a task's published train/test files, or a
    golden test set): each a list of files in any format `data` reads, relative to the config file."""

    train: list[str] = Field(min_length=1)
    validation: list[str] = Field(default_factory=list,
                                  description="default: data.split.validation of the train rows, by its seed")
    test: list[str] = Field(min_length=1)


class DataConfig(Section):
    files: list[str] = Field(default_factory=list, description="input files, relative to the config file")
    splits: SplitFiles | None = Field(None, description="{train: [...], validation: [...], test: [...]}: your "
                                      "own split files, instead of data.files cut by data.split")
    convert_types: bool = Field(False, description="a number, true/false, object or list where text belongs: "
                                "false refuses the row (file:line and field), true converts it with a warning")
    pin_test: bool = Field(True, description="keep the project's test split across prepare runs and rounds "
                           "(tunekit-pinned/<project>/ beside the config; `data prepare --new-test` replaces it)")
    leakage: Literal["error", "drop_from_train"] = Field(
        "error", description="a test prompt that equals or nearly equals a train prompt: refuse with both "
        "file:lines, or drop the train rows")
    format: Literal[DATA_FORMATS] = "auto"  # type: ignore[valid-type]
    columns: dict[str, str] = Field(
        default_factory=dict, description="map of tunekit field -> your column, e.g. {input: question}"
    )
    system_prompt: str | None = Field(None, description="system turn added to task and label records")
    user_template: str = Field("{input}", description="user turn for task records; fields in braces")
    label_set_max: int = Field(100, ge=2, description="answers count as labels when at most this many differ")
    pii: Literal["keep", "redact", "drop"] = "redact"
    pii_kinds: list[str] | None = None
    too_long: Literal["drop", "truncate_left", "truncate_right", "keep"] = "drop"
    loss_on: Literal["assistant", "all"] = "assistant"
    normalize: bool = Field(True, description="unicode NFC, control characters, whitespace")
    dedupe: DedupeConfig = Field(default_factory=DedupeConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)

    @model_validator(mode="after")
    def _files_or_splits(self) -> DataConfig:
        if self.files and self.splits is not None:
            raise ValueError("data.files and data.splits are two ways to give the data; use one "
                             "(data.splits: {train: [...], test: [...]} for your own splits)")
        return self

    @field_validator("columns")
    @classmethod
    def _known_fields(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(MAPPABLE_FIELDS))
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}; allowed: {', '.join(MAPPABLE_FIELDS)}")
        return value

    @field_validator("pii_kinds")
    @classmethod
    def _known_pii(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (bad := sorted(set(value) - set(PII_KINDS))):
            raise ValueError(f"unknown PII kind(s) {bad}; allowed: {', '.join(PII_KINDS)}")
        return value


class MethodConfig(Section):
    """Options of every method in one flat section (so `method.r=8` works). Each method declares the ones it
    reads (`Method.options`) and validates them against the real model's architecture before any weights
    load; a key set for a method that does not read it is an error there (methods.check_options_read)."""

    # The one method named outside tunekit.methods: a config needs a default.
    name: str = Field("lora", description="a module of tunekit.methods; an unknown name lists them all")
    r: int = Field(16, description="adapter rank")
    alpha: int = Field(32, description="adapter scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the adapters' input")
    target_modules: list[str] | str = Field("all-linear", description="module names, or all-linear")
    num_virtual_tokens: int = Field(20, description="prompt learning: virtual tokens")
    prompt_init_text: str | None = Field(None, description="prompt learning: initialise from this text")
    trainable_layers: int = Field(2, description="train only the last N decoder layers")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit base weights: data type")
    double_quant: bool = Field(True, description="4-bit base weights: quantize the quantization constants too")


class TrainingConfig(Section):
    epochs: float = Field(1.0, gt=0, description="passes over train; max_steps wins when set")
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(4, ge=1, description="examples per micro-batch, per process")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    learning_rate: float | None = Field(None, gt=0, description="default: the method's (2e-4 for adapters, "
                                         "less where the model's own weights train)")
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    optimizer: Literal["auto", "adamw", "adamw_bf16", "adamw_8bit"] = Field(
        "auto", description="adamw: fp32 state; adamw_bf16: bf16 state and compensated bf16 weights, half the "
        "memory of weights and state; adamw_8bit: 8-bit state (bitsandbytes), slow on CPU; auto: adamw_bf16 "
        "where the method trains the model's own weights, in bf16 on one process, adamw otherwise",
    )
    max_grad_norm: float | None = Field(1.0, gt=0)
    seed: int = 42
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="auto: bf16 where native")
    group_by_length: bool = Field(True, description="batch similar lengths together: little padding")
    gradient_checkpointing: bool | None = Field(
        None, description="recompute activations in backward: about half the memory for ~20% more time; "
        "default: on where the method supports it",
    )
    checkpoint_keep: Literal["auto"] | list[str] = Field(
        "auto", description="projections whose outputs gradient checkpointing keeps instead of recomputing "
        "in backward (each costs 2 bytes per output feature per token and layer); auto: q_proj, k_proj, "
        "v_proj and o_proj when the layers are compiled (5-9% faster LoRA steps), [] to recompute all",
    )
    attention: Literal["auto", "eager", "sdpa"] = Field("auto", description="auto: eager on CPU, sdpa on GPU")
    compile: Literal["auto", True, False] = Field(
        "auto", description="torch.compile the decoder layers (~25% faster LoRA steps on CPU; ~20 s to compile "
        "once per machine, then cached); auto: on for CPU training in bf16 when a C++ compiler is present",
    )
    num_threads: int | None = Field(None, ge=1, description="default: one per core")
    eval_every: int | None = Field(None, ge=1, description="validation loss every N steps (default: 10/run)")
    early_stopping_patience: int | None = Field(None, ge=1, description="evals without improvement")
    save_every: int | None = Field(None, ge=1, description="checkpoint every N steps (and at the end)")
    keep_checkpoints: int = Field(2, ge=1)
    resume: Literal["auto", "never"] | str = Field("never", description="auto, never, or a checkpoint path")
    log_every: int = Field(1, ge=1)
    answer_eval_every: int | None = Field(None, ge=1, description="generate on validation every N steps")
    answer_eval_samples: int = Field(16, ge=1)
    max_new_tokens: int = Field(64, ge=1)
    tensorboard: bool = False
    mlflow_uri: str | None = Field(None, description="e.g. sqlite:///mlflow.db or a folder")


class ProjectConfig(Section):
    project: str = Field("tunekit-project", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
                         description="1-64 letters, digits, '.', '_' or '-': it names the project's folders")
    run_dir: str = Field("runs/default", description="run folder, relative to the working directory")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    rag: RagConfig = Field(default_factory=RagConfig)
    guard: GuardConfig = Field(default_factory=GuardConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    governance: GovernanceConfig = Field(default_factory=GovernanceConfig)

    # Where the YAML lives: data files are resolved relative to it, so a config can move with its data.
    base_dir: Path = Field(default_factory=Path.cwd, exclude=True)

    def data_paths(self) -> list[Path]:
        """Every input file: data.files, or the files of data.splits."""
        return [path for paths in self.split_paths().values() for path in paths] if self.data.splits else \
            [(self.base_dir / f).resolve() for f in self.data.files]

    def split_paths(self) -> dict[str, list[Path]]:
        """data.splits as paths, by split name ({} when the data comes as data.files)."""
        given = self.data.splits
        if given is None:
            return {}
        return {name: [(self.base_dir / f).resolve() for f in getattr(given, name)]
                for name in ("train", "validation", "test")}

    def run_path(self) -> Path:
        return Path(self.run_dir).resolve()


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> ProjectConfig:
    """Read a YAML config (or start from defaults), apply `key.sub=value` overrides, validate."""
    raw: dict[str, Any] = {}
    base_dir = Path.cwd()
    if path is not None:
        path = Path(path)
        raw = _read_yaml(path)
        base_dir = path.resolve().parent
    for item in overrides:
        apply_override(raw, item)
    return validate_config(raw, base_dir=base_dir, source=str(path) if path else "<overrides>")


def load_saved_config(path: Path, overrides: Sequence[str] = (), *, say: Any = None) -> ProjectConfig:
    """A config that tunekit wrote (RUN/config.yaml, RUN/data/config.yaml), with the user's `key=value`
    overrides on top. Unlike a user's config, keys this version does not know are not an error: another
    tunekit version wrote them. Each is named in one warning (once per process) and dropped; overrides and
    every other value are checked as strictly as ever."""
    raw = _read_yaml(path)
    for loc in _unknown_keys(raw):
        if (str(path), loc) not in _WARNED:
            _WARNED.add((str(path), loc))
            (say or _warn_on_stderr)(f"{path}: ignoring '{'.'.join(loc)}', a key this tunekit version does not "
                                     "know (the run was written by another version)")
        _drop_key(raw, loc)
    for item in overrides:
        apply_override(raw, item)
    return validate_config(raw, base_dir=path.resolve().parent, source=str(path))


# (path, key) pairs already warned about: a server loads a run's config more than once at start.
_WARNED: set[tuple[str, tuple[str, ...]]] = set()


def _unknown_keys(raw: dict[str, Any]) -> list[tuple[str, ...]]:
    try:
        ProjectConfig.model_validate(raw)
    except ValidationError as exc:
        return [tuple(str(p) for p in err["loc"]) for err in exc.errors() if err["type"] == "extra_forbidden"]
    return []


def _drop_key(raw: dict[str, Any], loc: tuple[str, ...]) -> None:
    node: Any = raw
    for part in loc[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(loc[-1], None)


def _warn_on_stderr(message: str) -> None:
    from tunekit.console import err_console

    err_console.print(f"[yellow]warning[/]: {message}", highlight=False)


def validate_config(raw: dict[str, Any], *, base_dir: Path, source: str) -> ProjectConfig:
    try:
        cfg = ProjectConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, raw), where=source) from None
    cfg.base_dir = base_dir
    return cfg


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise UserError("config file does not exist", where=str(path), fix="`tunekit init` writes a starter")
    if path.is_dir():
        raise UserError("is a folder, expected a YAML config file", where=str(path))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError("config is not UTF-8 text", where=str(path)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"invalid YAML: {getattr(exc, 'problem', exc)}", where=where) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError("config must be a mapping of sections (model:, data:, ...)", where=str(path))
    return data


def apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{item}' is not key=value", fix="e.g. training.learning_rate=1e-4")
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"'{part}' is a value, not a section", where=key)
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        node[parts[-1]] = value


def _explain(exc: ValidationError, raw: dict[str, Any]) -> str:
    lines = [f"{exc.error_count()} invalid config value(s):"]
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not str(p).startswith("function-")]
        key = ".".join(loc) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key{_allowed_keys(loc)}")
            continue
        message = err["msg"].removeprefix("Value error, ")
        shown = "" if err["type"] == "missing" else f" (got {err.get('input')!r})"
        lines.append(f"  {key}: {message}{shown}")
    return "\n".join(lines)


def _allowed_keys(loc: list[str]) -> str:
    model: type[BaseModel] = ProjectConfig
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    allowed = [name for name, f in model.model_fields.items() if not f.exclude]
    close = difflib.get_close_matches(loc[-1], allowed, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"{hint} allowed: {', '.join(allowed)}"


def dump_config(cfg: ProjectConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
