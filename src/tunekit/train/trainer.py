"""`tunekit train`: prepared data in, a fine-tuned adapter (or model) and a complete run folder out."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path
from typing import Any

import torch

from tunekit.config import ProjectConfig, dump_config
from tunekit.devices import peak_gpu_mb, peak_rss_mb, tune_cpu
from tunekit.io import atomic_dir, require_free_space, write_json_atomic, write_text_atomic
from tunekit.runfolder import RunFolder
from tunekit.train.checkpoint import (
    TrainState,
    find_resume_point,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from tunekit.train.compile import compiled_head_loss, eager
from tunekit.train.loop import (
    StepRunner,
    SupervisedLM,
    Throughput,
    TrainingStopped,
    can_step_in_backward,
    step_in_backward,
    validation_loss,
)
from tunekit.train.metrics import MetricsLogger, plot_loss_curve
from tunekit.train.optimizers import CompactAdamW, make_optimizer
from tunekit.train.schedule import make_scheduler
from tunekit.train.setup import RunSetup, ValidatedMethod, build_run
from tunekit.train.sharded_checkpoint import full_state, load_sharded_checkpoint, save_sharded_checkpoint
from tunekit.train.sharding import is_sharded

EVALS_PER_RUN = 10


def train(cfg: ProjectConfig, say: Any = print, progress: Any = None,
          validated: ValidatedMethod | None = None) -> dict[str, Any]:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from tunekit.train.sharding import shard_model, take_fsdp_plan

    fsdp = take_fsdp_plan()  # before the Accelerator: it must not shard on its own (sharding.py says why)
    threads = tune_cpu(cfg.training.num_threads)
    set_seed(cfg.training.seed)
    run = build_run(cfg, say, validated, sharded=fsdp is not None)
    acc = Accelerator(cpu=run.device.device.type == "cpu")
    is_main = acc.is_main_process
    if is_main:
        say(f"{run.method.name} on {run.device.device.type} in {run.device.dtype_name} ({run.device.reason}); "
            f"{threads} threads; {run.optimizer}; {len(run.train)} train / {len(run.validation)} validation examples")
        if run.compiled:
            say(f"decoder layers compiled with torch.compile ({run.compile_reason}): the first step compiles "
                "them, ~20 s once per machine, cached afterwards (training.compile=false turns it off)")
        elif cfg.training.compile == "auto":
            say(f"decoder layers run eagerly: {run.compile_reason}")
        if run.kept_projections:
            say(f"gradient checkpointing keeps the outputs of {', '.join(run.kept_projections)} instead of "
                "recomputing them (training.checkpoint_keep)")
    wrapped = SupervisedLM(run.model, direct=not run.method.prompt_learning,
                           head_loss=compiled_head_loss() if run.compiled else None)
    if fsdp is not None:  # before the optimizer exists: sharding replaces the parameters
        layers = shard_model(wrapped, run.model, run.arch.layer_prefix, fsdp, run.device.dtype)
        if is_main:
            say(f"FSDP over {acc.num_processes} processes: {layers} decoder layers and the rest sharded, "
                f"{'resharded' if fsdp.reshard_after_forward else 'kept whole'} after forward; checkpoints are "
                "sharded (torch distributed checkpoint); answer checks during training are skipped")
    trainable = [p for p in run.model.parameters() if p.requires_grad]
    optimizer = make_optimizer(trainable, run.learning_rate, cfg.training.weight_decay, run.optimizer,
                               seed=cfg.training.seed, residuals=run.residuals)
    run.residuals.clear()  # the optimizer holds them now
    if fsdp is None:
        wrapped, optimizer = acc.prepare(wrapped, optimizer)
    else:  # sharded already; accelerate's prepare would wrap it in DDP too
        optimizer = acc.prepare_optimizer(optimizer)
    runner = StepRunner(
        acc, wrapped, optimizer, None, run.train, batch_size=cfg.training.batch_size,
        grad_accum=cfg.training.grad_accum, seed=cfg.training.seed, group_by_length=cfg.training.group_by_length,
        pad_id=run.tokenizer.pad_token_id, max_grad_norm=cfg.training.max_grad_norm,
        autocast=run.device.autocast(),
    )
    runner.trim_within_step = run.method.trim_heap_within_step
    runner.sharded = fsdp is not None
    compact = isinstance(optimizer.optimizer, CompactAdamW)
    if can_step_in_backward(runner):
        step_in_backward(optimizer, trainable)  # the prepared optimizer: its step() is what the schedule counts
        runner.in_backward = True
        if compact:
            optimizer.optimizer.flat_gradients = False  # each gradient is dropped as soon as it is used
    elif compact:
        optimizer.zero_grad()  # its gradient buffers exist before the first forward
    total_steps = cfg.training.max_steps or max(1, round(cfg.training.epochs * runner.steps_per_epoch()))
    runner.sched = _scheduler(cfg, optimizer, total_steps)
    state = _resume(cfg, run, acc, optimizer, runner.sched, say)
    acc.wait_for_everyone()  # clean-up of an earlier run is done before anything new is written
    if is_main:
        write_text_atomic(RunFolder(run.run_dir).config_path, dump_config(cfg))
    logger = MetricsLogger(
        run.run_dir, tensorboard=cfg.training.tensorboard and is_main,
        mlflow_uri=cfg.training.mlflow_uri if is_main else None, run_name=cfg.project,
        params=cfg.model_dump(mode="json")["training"],
    ) if is_main else None
    try:
        result = _loop(cfg, run, acc, wrapped, runner, state, total_steps, logger, say, progress)
    finally:
        if logger is not None:
            logger.close()
    # Each process's peak before the final gather: what training itself needed (DDP and FSDP differ in it).
    peaks = acc.gather(torch.tensor([peak_rss_mb()], dtype=torch.float64, device=acc.device))
    result |= {"processes": acc.num_processes, "sharded": fsdp is not None}
    result["peak_rss_mb_per_process"] = [round(float(x), 1) for x in peaks.reshape(-1).tolist()]
    read = acc.gather(torch.tensor([run.train.rows_read], device=acc.device))
    result["train_rows_read_per_process"] = [int(x) for x in read.reshape(-1).tolist()]  # each its own shard
    # Sharded weights are gathered by every process together; the main process writes them.
    full = full_state(run.model, trainable=run.method.uses_peft) if fsdp is not None else None
    if is_main:
        _finish(run, acc, wrapped, optimizer, result, full)
    acc.wait_for_everyone()
    return result


def _scheduler(cfg: ProjectConfig, optimizer: Any, total_steps: int) -> Any:
    warmup = round(cfg.training.warmup_ratio * total_steps)
    return make_scheduler(optimizer, cfg.training.lr_scheduler, warmup, total_steps)


def _resume(cfg: ProjectConfig, run: RunSetup, acc: Any, optimizer: Any, scheduler: Any, say: Any) -> TrainState:
    point = find_resume_point(run.run_dir, cfg.training.resume)
    acc.wait_for_everyone()  # every process has seen the same checkpoints before any is removed
    if point is None and not acc.is_main_process:
        return TrainState()
    if point is None:
        # A fresh run starts a fresh log, and an older run's checkpoints must not pass for its own.
        (run.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        old = list_checkpoints(run.run_dir)
        if old:
            say(f"starting afresh: removing {len(old)} checkpoint(s) of an earlier run in {run.run_dir}")
            for path in old:
                shutil.rmtree(path, ignore_errors=True)
        return TrainState()
    if is_sharded(run.model):
        state = load_sharded_checkpoint(point, acc, run.model, getattr(optimizer, "optimizer", optimizer), scheduler)
    else:
        state = load_checkpoint(point, run.model, optimizer, scheduler)
    if acc.is_main_process:
        _truncate_metrics(run.run_dir / "metrics.jsonl", state.step)
    say(f"resumed from {point} at step {state.step}")
    return state


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint, so the resumed log reads as one run."""
    import json

    if not path.exists():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def _loop(cfg: ProjectConfig, run: RunSetup, acc: Any, wrapped: Any, runner: StepRunner, state: TrainState,
          total_steps: int, logger: MetricsLogger | None, say: Any, progress: Any) -> dict[str, Any]:
    t = cfg.training
    eval_every = t.eval_every or max(1, total_steps // EVALS_PER_RUN)
    save_every = t.save_every or total_steps
    speed = Throughput()
    task = progress.add_task("training", total=total_steps, completed=state.step) if progress else None
    stop_reason = "completed"
    stop_requests = _StopRequests(acc)
    wrapped.train()
    try:
        stop_requests.install()
        while state.step < total_steps:
            started = time.perf_counter()
            result = runner.step(state)
            speed.add(result.tokens, time.perf_counter() - started)
            record = {"step": state.step, "epoch": state.epoch, "loss": round(result.loss, 5),
                      "lr": runner.sched.get_last_lr()[0], "tokens": state.tokens,
                      "tokens_per_s": round(speed.tokens_per_s, 1), "elapsed_s": round(speed.elapsed, 2)}
            if result.grad_norm is not None:
                record["grad_norm"] = round(result.grad_norm, 4)
            if state.step % eval_every == 0 or state.step == total_steps:
                with eager():
                    record["val_loss"] = validation_loss(acc, wrapped, run.validation, runner.pad_id,
                                                         runner.autocast, runner.batch_size, lockstep=runner.sharded)
                if _early_stop(state, record["val_loss"], t.early_stopping_patience):
                    stop_reason = "early_stopping"
            answer_check = acc.is_main_process and not runner.sharded  # one process cannot run a sharded model
            if t.answer_eval_every and state.step % t.answer_eval_every == 0 and answer_check:
                from tunekit.train.answer_eval import answer_accuracy

                with eager():
                    record.update(answer_accuracy(run, cfg))
            state.history.append({k: v for k, v in record.items() if k in ("step", "loss", "val_loss")})
            if logger is not None and (state.step % t.log_every == 0 or "val_loss" in record):
                logger.log(record)
            if progress is not None:
                progress.update(task, completed=state.step, loss=result.loss, lr=record["lr"],
                                tps=speed.tokens_per_s)
            if acc.check_trigger():  # a stop signal reached some process: every process stops after this step
                stop_reason = "interrupted"
            if state.step % save_every == 0 or stop_reason != "completed" or state.step == total_steps:
                _save(run, acc, wrapped, runner, state)
            if stop_reason != "completed":
                break
    except KeyboardInterrupt:  # a second signal: stop now; a checkpoint now could hang on a process gone
        raise TrainingStopped(f"interrupted twice at step {state.step}; the last saved checkpoint is kept",
                              fix="continue with training.resume=auto") from None
    finally:
        stop_requests.restore()
    if stop_reason == "interrupted":
        raise TrainingStopped(f"interrupted at step {state.step}; checkpoint saved",
                              fix="continue with training.resume=auto")
    return {"state": state, "speed": speed, "total_steps": total_steps, "stop_reason": stop_reason}


class _StopRequests:
    """SIGINT and SIGTERM during training ask to stop after the current step, with a checkpoint.

    The request goes through accelerate's trigger, which `check_trigger` reduces over all processes at each
    step, so every process stops after the same step and they save one checkpoint together; stopping each
    where its own signal arrived left one waiting at a barrier for a peer that had exited. A second
    signal stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, acc: Any):
        self.acc = acc
        self.received = 0
        self.previous: dict[int, Any] = {}

    def install(self) -> None:
        self.previous = {signum: signal.signal(signum, self._on_signal) for signum in self.SIGNALS}

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.received += 1
        if self.received > 1:
            raise KeyboardInterrupt
        self.acc.set_trigger()


def _early_stop(state: TrainState, val_loss: float | None, patience: int | None) -> bool:
    if val_loss is None:
        return False
    if state.best_val_loss is None or val_loss < state.best_val_loss:
        state.best_val_loss, state.evals_without_improvement = val_loss, 0
        return False
    state.evals_without_improvement += 1
    return patience is not None and state.evals_without_improvement >= patience


def _save(run: RunSetup, acc: Any, wrapped: Any, runner: StepRunner, state: TrainState) -> None:
    if runner.sharded:
        save_sharded_checkpoint(run.run_dir, acc, run.model, getattr(runner.opt, "optimizer", runner.opt),
                                runner.sched, state, run.cfg.training.keep_checkpoints, peft=run.method.uses_peft)
        return
    acc.wait_for_everyone()
    if acc.is_main_process:
        model = acc.unwrap_model(wrapped).model
        save_checkpoint(run.run_dir, model, runner.opt, runner.sched, state, run.cfg.training.keep_checkpoints,
                        peft_model=model if run.method.uses_peft else None)
    acc.wait_for_everyone()


def _finish(run: RunSetup, acc: Any, wrapped: Any, optimizer: Any, result: dict[str, Any],
            full: dict[str, Any] | None) -> None:
    """`full`: a sharded model's gathered weights (full_state), written instead of the model's own."""
    from tunekit.train.manifest import write_manifest

    model = acc.unwrap_model(wrapped).model
    folder = RunFolder(run.run_dir)
    target = folder.weights_dir(run.method.uses_peft)
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds the real one
    if isinstance(optimizer, CompactAdamW):
        optimizer.finish()  # fp32 weights again, from bf16 weights and their compensation
    saved = [p for p in model.parameters() if p.requires_grad] if run.method.uses_peft else list(model.parameters())
    require_free_space(run.run_dir, saved, f"the trained {target.name}",
                       fix="free disk space, then run again with training.resume=auto")
    with atomic_dir(target, replace=True) as tmp:
        model.save_pretrained(str(tmp), **({"state_dict": full} if full is not None else {}))
    with atomic_dir(folder.tokenizer_dir, replace=True) as tmp:
        run.tokenizer.save_pretrained(str(tmp))
    plot_loss_curve(run.run_dir / "metrics.jsonl", run.run_dir / "loss_curve.png")
    write_json_atomic(folder.summary_path, summarize(run, result))
    write_manifest(run, full)


def summarize(run: RunSetup, result: dict[str, Any]) -> dict[str, Any]:
    state, speed = result["state"], result["speed"]
    history = state.history
    train_losses = [h["loss"] for h in history if "loss" in h]
    val_losses = [h["val_loss"] for h in history if h.get("val_loss") is not None]
    trainable = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    return {
        "method": run.method.name,
        "base_model": run.cfg.model.name,
        "steps": state.step,
        "total_steps": result["total_steps"],
        "stop_reason": result["stop_reason"],
        "epochs_completed": state.epoch,
        "tokens": state.tokens,
        "supervised_tokens": state.supervised_tokens,
        "useful_tokens_per_s": round(speed.tokens_per_s, 1),
        # without this process's first step, which also compiles (a fixed cost of a few seconds)
        "steady_useful_tokens_per_s": _rounded(speed.steady_tokens_per_s, 1),
        "first_step_s": _rounded(speed.first_step_seconds, 2),
        "final_train_loss": train_losses[-1] if train_losses else None,
        "final_train_loss_avg5": round(sum(train_losses[-5:]) / len(train_losses[-5:]), 5) if train_losses else None,
        "final_val_loss": val_losses[-1] if val_losses else None,
        "best_val_loss": state.best_val_loss,
        "trainable_params": trainable,
        "matmul_params": run.matmul_params,
        "dtype": run.device.dtype_name,
        "optimizer": run.optimizer,
        "compiled": run.compiled,
        "checkpoint_kept": run.kept_projections,
        "device": run.device.device.type,
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_mb_per_process": result.get("peak_rss_mb_per_process"),
        "train_rows_read_per_process": result.get("train_rows_read_per_process"),
        "processes": result.get("processes", 1),
        "sharded": result.get("sharded", False),
        "peak_gpu_mb": peak_gpu_mb(),
        "train_s": round(speed.train_seconds, 2),
        "wall_s": round(speed.elapsed, 2),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
