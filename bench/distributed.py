"""Two training processes on one machine: FSDP (sharded) against DDP (replicated), same rows, same run.

SmolLM2-135M-Instruct on ../shared/bench/data/synth_train.jsonl with train_throughput.py's settings (batch 4
per process, max length 512), `--steps` optimizer steps of each method under each launcher:

  DDP   `tunekit train --num-processes 2` (torchrun, gloo)
  FSDP  `tunekit train --accelerate-config fsdp.yaml` (FSDP2, fully sharded, written into a temporary folder)

Both with eager layers (training.compile=false): FSDP layers run eagerly, so the comparison is of the
parallelism alone. Prints one JSON line: useful tokens/s, the peak resident memory of each process, final
validation loss, and FSDP/DDP ratios per method. On 2 cores each process gets one thread.

  .venv/bin/python bench/distributed.py [--methods lora,full] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import EVAL, TRAIN, bench_overrides, write_splits
from tunekit.runfolder import RunFolder

FSDP = """compute_environment: LOCAL_MACHINE
distributed_type: FSDP
num_machines: 1
num_processes: 2
machine_rank: 0
main_process_port: 29561
mixed_precision: 'no'
use_cpu: false
fsdp_config:
  fsdp_version: 2
  fsdp_reshard_after_forward: true
"""
LAUNCHERS = {"ddp": ["--num-processes", "2"], "fsdp": ["--accelerate-config", "{fsdp}"]}


def train(method: str, launcher: str, steps: int, workdir: Path) -> dict:
    run = workdir / f"run-{method}-{launcher}"
    write_splits(run, TRAIN, EVAL)
    config = workdir / "tunekit.yaml"
    config.write_text("project: bench\n", encoding="utf-8")
    args = [a.format(fsdp=workdir / "fsdp.yaml") for a in LAUNCHERS[launcher]]
    cmd = [str(Path(sys.executable).with_name("tunekit")), "train", str(config), *args,
           *bench_overrides(run, method, steps), "training.compile=false"]
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"tunekit train failed:\n{proc.stderr[-4000:]}")
    summary = json.loads(RunFolder(run).summary_path.read_text())
    keys = ("useful_tokens_per_s", "steady_useful_tokens_per_s", "peak_rss_mb_per_process", "final_val_loss",
            "processes", "sharded", "optimizer", "dtype")
    return {key: summary[key] for key in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="lora,full")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    result: dict = {"bench": "distributed", "steps": args.steps, "rows_per_process_step": 4}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "fsdp.yaml").write_text(FSDP, encoding="utf-8")
        for method in args.methods.split(","):
            runs = {launcher: train(method, launcher, args.steps, workdir) for launcher in LAUNCHERS}
            ddp, fsdp = runs["ddp"], runs["fsdp"]
            result[method] = runs | {
                "fsdp_over_ddp_tokens_per_s": round(fsdp["useful_tokens_per_s"] / ddp["useful_tokens_per_s"], 3),
                "fsdp_over_ddp_peak_rss": round(max(fsdp["peak_rss_mb_per_process"])
                                                / max(ddp["peak_rss_mb_per_process"]), 3),
            }
    result["commit"] = subprocess.run(["git", "-C", str(Path(__file__).resolve().parents[1]), "log", "-1",
                                       "--format=%h"], capture_output=True, text=True).stdout.strip()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
