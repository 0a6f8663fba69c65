"""Everything a run needs before its first step, validated in the order that fails fastest:
config and method options against the architecture (no weights), then data, then the model."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from tunekit.config import ProjectConfig
from tunekit.devices import DeviceInfo, attention_implementation, pick_device
from tunekit.runfolder import DataFolder, RunFolder
from tunekit.train.compile import compile_layers, decide_compile
from tunekit.train.optimizers import resolve_optimizer, store_trained_weights_in
from tunekit.train.recompute import keep_outputs_of, projection_shapes, resolve_keep
from tunekit.train.token_cache import EncodedSplit, encoded_splits

if TYPE_CHECKING:
    from tunekit.models.resolve import ResolvedModel

@dataclass
class RunSetup:
    cfg: ProjectConfig
    run_dir: Path
    device: DeviceInfo
    method: Any
    arch: Any
    model_path: Path
    tokenizer: Any
    model: torch.nn.Module
    train: EncodedSplit  # rows read on demand
    validation: EncodedSplit
    learning_rate: float
    optimizer: str  # resolved: never "auto"
    residuals: dict[torch.nn.Parameter, torch.Tensor]  # rounding errors of weights stored in bf16 for it
    matmul_params: int  # every Linear of the base model, lm_head included: the FLOP count's basis
    compiled: bool  # decoder layers under torch.compile (training.compile)
    compile_reason: str  # why they are, or are not
    kept_projections: list[str]  # outputs that checkpointed layers keep instead of recomputing

    @property
    def peft_model(self) -> Any:
        return self.model if self.method.uses_peft else None


class ValidatedMethod(NamedTuple):
    """What validate_method found: passed on to build_run, so a run inspects the architecture once."""

    method: Any
    arch: Any
    resolved: ResolvedModel


def validate_method(cfg: ProjectConfig) -> ValidatedMethod:
    """Method options against the model's architecture, before any weights load."""
    from tunekit.methods import check_gradient_checkpointing, check_options_read, get_method, inspect_architecture
    from tunekit.models.resolve import resolve_model

    method = get_method(cfg.method.name)
    check_options_read(method, cfg.method)
    check_gradient_checkpointing(method, bool(cfg.training.gradient_checkpointing))
    resolved = resolve_model(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code)
    arch = inspect_architecture(resolved.path, trust_remote_code=cfg.model.trust_remote_code)
    method.validate(cfg.method, arch)
    return ValidatedMethod(method, arch, resolved)


def check_optimizer(cfg: ProjectConfig) -> None:
    from tunekit.methods.base import require_bitsandbytes

    if cfg.training.optimizer == "adamw_8bit":
        require_bitsandbytes("adamw_8bit", where="training.optimizer", instead="adamw")


def ensure_prepared(cfg: ProjectConfig, tokenizer: Any, say: Any) -> DataFolder:
    data = RunFolder(cfg.run_path()).data
    if not data.split_path("train").exists():
        from tunekit.data.pinned import describe
        from tunekit.data.prepare import prepare
        from tunekit.runfolder import ProjectFolder

        say(f"no prepared data in {data.root}; running `tunekit data prepare` first")
        _, result = prepare(cfg, tokenizer)
        if result.pin is not None:
            say(describe(result.pin, ProjectFolder.of(cfg), kept=result.test_data is not None))
    return data


def encoding_options(cfg: ProjectConfig) -> dict[str, Any]:
    return {"max_seq_len": cfg.model.max_seq_len, "loss_on": cfg.data.loss_on,
            "truncation": "truncate_left" if cfg.data.too_long == "drop" else cfg.data.too_long}


def prepare_once(cfg: ProjectConfig, say: Any = print) -> None:
    """Prepare and encode the data in the launching process, so several training processes never race to write
    it. Under a lock on the run folder: the launchers of several machines sharing it (multi-machine runs need a
    shared filesystem) wait for the first one's data instead of writing it again."""
    import fcntl

    from tunekit.models.load import load_chat_tokenizer
    from tunekit.models.resolve import resolve_model

    run_dir = cfg.run_path()
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".prepare.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another machine's launcher may be making them: wait for its result
        trust = cfg.model.trust_remote_code
        tokenizer = load_chat_tokenizer(resolve_model(cfg.model.name, trust_remote_code=trust), trust, say=say)
        encoded_splits(ensure_prepared(cfg, tokenizer, say), tokenizer, encoding_options(cfg), say)


def build_run(cfg: ProjectConfig, say: Any = print, validated: ValidatedMethod | None = None,
              sharded: bool = False) -> RunSetup:
    """`validated`: validate_method's result where the caller already has it (`tunekit train` checks before
    it starts any process); otherwise it runs here. `sharded`: the model will be sharded with FSDP."""
    from tunekit.models.load import load_chat_tokenizer, load_model
    from tunekit.train.sharding import check_method, refuse_deepspeed

    method, arch, resolved = validated or validate_method(cfg)
    check_optimizer(cfg)
    device = pick_device(cfg.training.dtype)
    refuse_deepspeed(device.device.type)
    if sharded:
        check_method(method, cfg.training.optimizer)
    compile_layers_too, compile_reason = decide_compile(cfg.training.compile, device, method)
    if sharded and compile_layers_too:
        compile_layers_too, compile_reason = False, "FSDP: sharded layers run eagerly (compiled ones are untested)"
    checkpointing = cfg.training.gradient_checkpointing
    if checkpointing is None:
        checkpointing = method.supports_gradient_checkpointing
    keep = checkpoint_keep(cfg, arch, bool(checkpointing), compile_layers_too)
    tokenizer = load_chat_tokenizer(resolved, cfg.model.trust_remote_code, say=say)
    data = ensure_prepared(cfg, tokenizer, say)
    splits = encoded_splits(data, tokenizer, encoding_options(cfg), say)
    train, validation = splits["train"], splits["validation"]
    if not train:
        from tunekit.errors import UserError

        raise UserError("no trainable examples in the train split", where=str(data.split_path("train")))
    # Frozen weights live in the compute dtype (half the memory, no per-step casts); weights that
    # train, and every weight of a method that trains the model's own, stay fp32 so small updates are
    # not rounded away. A quantizing method quantizes from the compute-dtype copy too: half the file to
    # read, and 4-bit NF4 (16 levels per block) is far coarser than the bf16 rounding of its input.
    storage = torch.float32 if method.trains_base_weights else device.dtype
    load_kwargs = method.load_kwargs(cfg.method, device.dtype)
    model = load_model(
        replace(resolved, path=stored_weights(resolved, storage, load_kwargs)), dtype=storage,
        trust_remote_code=cfg.model.trust_remote_code,
        attn_implementation=attention_implementation(device, cfg.training.attention), **load_kwargs,
    )
    model.config.use_cache = False
    kept: list[str] = []
    if checkpointing:
        options: dict[str, Any] = {"use_reentrant": False}
        if keep:
            shapes = projection_shapes(model.get_submodule(arch.layer_prefix)[0], keep)
            options["context_fn"] = keep_outputs_of(shapes)
            kept = sorted({name for names in shapes.values() for name in names})
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
    matmul_params = count_matmul_params(model)
    model = method.apply(model, cfg.method, arch)
    if compile_layers_too:
        compile_layers(model, arch.layer_prefix, fall_back=cfg.training.compile == "auto")
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    optimizer = resolve_optimizer(cfg.training.optimizer, method.trains_base_weights, device.dtype)
    if sharded and optimizer == "adamw_bf16":  # auto on one process; FSDP cannot shard its error buffers
        optimizer = "adamw"
    residuals = {}
    if optimizer == "adamw_bf16" and device.dtype == torch.bfloat16:
        residuals = store_trained_weights_in(model, device.dtype)  # the optimizer keeps them exact
    lr = cfg.training.learning_rate or method.default_learning_rate
    return RunSetup(
        cfg, cfg.run_path(), device, method, arch, resolved.path, tokenizer, model, train, validation, lr,
        optimizer, residuals, matmul_params, compile_layers_too, compile_reason, kept,
    )


def checkpoint_keep(cfg: ProjectConfig, arch: Any, checkpointing: bool, compiled: bool) -> list[str]:
    """training.checkpoint_keep, resolved and checked before the model loads."""
    setting = cfg.training.checkpoint_keep
    if not checkpointing:
        if setting not in ("auto", []):
            from tunekit.errors import ConfigError

            raise ConfigError("checkpoint_keep needs gradient checkpointing", where="training.checkpoint_keep",
                              fix="remove it, or set training.gradient_checkpointing=true")
        return []
    return resolve_keep(setting, arch.projection_names, compiled)


def stored_weights(resolved: ResolvedModel, dtype: torch.dtype, load_kwargs: dict[str, Any]) -> Path:
    """The cached copy of the weights to load: in `dtype`, and quantized already when the method asks for a
    quantization (which is then taken out of `load_kwargs`: the copy's config.json carries it)."""
    from tunekit.models.variants import quantized_weights_in, weights_in

    quantization = load_kwargs.pop("quantization_config", None)
    if quantization is None:
        return weights_in(resolved, dtype)
    return quantized_weights_in(resolved, dtype, quantization)


def count_matmul_params(model: torch.nn.Module) -> int:
    """Weights that take part in a matmul per token (Linear layers, 4-bit ones at their logical size)."""
    total = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt"):
            total += module.in_features * module.out_features
    return total
