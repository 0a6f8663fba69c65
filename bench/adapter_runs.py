"""N LoRA run folders of one base model, for benchmarks that serve several adapters together.

Run 0 is a real `tunekit train` run: LoRA on the first rows of examples/support_tickets for one step, so
its layout, config, manifest and tokenizer are exactly what training writes (1-2 minutes on 2 busy cores).
Runs 1..N-1 copy it and draw LoRA B again from a seeded normal: B is zero at init and one step barely
moves it, so without this every adapter would answer like the base model. At std 0.04 answers change
but stay fluent, so they are about as long as the base model's (serving cost depends on length, not on
what is said). Everything is cached under ~/.cache/tunekit/bench/, keyed by the recipe and tunekit's
version, and made again only when missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TUNEKIT = str(Path(sys.executable).with_name("tunekit"))
EXAMPLE = ROOT / "examples" / "support_tickets"
ROWS = 40  # 32 train / 4 validation / 4 test after the split: data prepare and validation take seconds
B_STD = 0.04
TRAINING = {"max_steps": 1, "batch_size": 4, "warmup_ratio": 0.0, "lr_scheduler": "constant",
            "compile": False, "seed": 0}  # no warmup: with it, the only step has learning rate 0


def adapter_runs(base: str, n: int, say=print) -> list[Path]:
    """Run folders 0..n-1 for `base`, made (or reused from the cache) now."""
    config, rows = recipe(base)
    key = hashlib.sha256(f"{config}\n{rows}\n{version('tunekit')}\n{B_STD}".encode()).hexdigest()[:12]
    folder = cache_root() / f"lora-{key}"
    template = trained_run(folder, config, rows, say)
    return [template] + [reseeded_copy(template, folder / f"run{i}", seed=i) for i in range(1, n)]


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tunekit" / "bench" / "serve_load"


def recipe(base: str) -> tuple[str, str]:
    """The training config (YAML text; run_dir and data paths are filled in per folder) and the data rows."""
    import yaml

    cfg = yaml.safe_load((EXAMPLE / "tunekit.yaml").read_text(encoding="utf-8"))
    for key in ("run_dir", "eval", "rag"):  # set per cache folder; relative paths training does not need
        cfg.pop(key, None)
    cfg["model"]["name"] = base
    cfg["data"]["files"] = ["tickets.jsonl"]
    cfg["training"] = TRAINING
    rows = "".join((EXAMPLE / "tickets.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:ROWS])
    return yaml.safe_dump(cfg, sort_keys=False), rows


def trained_run(folder: Path, config: str, rows: str, say) -> Path:
    run = folder / "run0"
    if (run / "summary.json").is_file():  # training writes it last
        return run
    shutil.rmtree(run, ignore_errors=True)  # an interrupted earlier try
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tickets.jsonl").write_text(rows, encoding="utf-8")
    (folder / "tunekit.yaml").write_text(f"run_dir: {run}\n{config}", encoding="utf-8")
    log = folder / "train.log"
    say(f"training the template adapter run (1 step, ~1-2 min on 2 cores); log: {log}")
    started = time.perf_counter()
    with log.open("w") as out:
        run_to_end([TUNEKIT, "train", "tunekit.yaml"], cwd=folder, stdout=out, stderr=subprocess.STDOUT)
    if not (run / "summary.json").is_file():
        raise SystemExit(f"`tunekit train` failed:\n{log.read_text(encoding='utf-8')[-3000:]}")
    say(f"trained in {time.perf_counter() - started:.0f} s")
    return run


def run_to_end(cmd: list[str], **popen) -> None:
    """Run `cmd`; if this process is interrupted or fails meanwhile, the child is stopped too."""
    proc = subprocess.Popen(cmd, **popen)
    try:
        proc.wait()
    finally:
        stop(proc)


def stop(proc: subprocess.Popen, grace_s: float = 60) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def reseeded_copy(run: Path, out: Path, *, seed: int) -> Path:
    """`run` without checkpoints, its LoRA B drawn from N(0, B_STD²) with `seed` (A stays as trained)."""
    import torch
    from safetensors.torch import load_file, save_file

    if out.is_dir():
        return out
    partial = out.with_name(out.name + ".partial")  # renamed when complete: a cut-off copy is never reused
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(run, partial, ignore=shutil.ignore_patterns("checkpoints", "eval", "serve"))
    weights = partial / "adapter" / "adapter_model.safetensors"
    tensors = load_file(weights)
    draw = torch.Generator().manual_seed(seed)
    for name, tensor in sorted(tensors.items()):  # sorted: the same draws for the same seed
        if ".lora_B." in name:
            tensors[name] = (torch.randn(tensor.shape, generator=draw) * B_STD).to(tensor.dtype)
    save_file(tensors, weights, metadata={"format": "pt"})  # as PEFT writes it
    note = {"copied_from": str(run), "lora_B": f"normal(0, {B_STD}), seed {seed}", "by": "bench/adapter_runs.py"}
    (partial / "bench_adapter.json").write_text(json.dumps(note, indent=2) + "\n", encoding="utf-8")
    partial.rename(out)
    return out
