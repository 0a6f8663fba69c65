"""Training throughput: tunekit against TRL SFTTrainer + PEFT, same machine, same run, same rows.

Both fine-tune SmolLM2-135M-Instruct on ../shared/bench/data/synth_train.jsonl for the same number
of optimizer steps (batch 4, max length 512, same learning rate and LoRA settings) and report
validation loss on synth_eval.jsonl. Prints one JSON line: useful (non-padding) tokens/s of each,
their ratio, validation losses, peak RSS, and MFU against the attainable matmul rate that
../shared/bench/peak_flops.py measures in the same run, for the dtype each side used.

  .venv/bin/python bench/train_throughput.py [--methods lora,qlora,full] [--steps 30] [--skip-baseline] [--cold]
  .venv/bin/python bench/train_throughput.py --workload short [--methods lora] [--steps 30]

--workload short (issue #22): banking77-like rows, ~66 tokens each with the chat template's default system
prompt and a 3-4 token label, batch 16, max length 128. The rows are what ../shared/bench/make_bench_data.py
writes from ../shared/datasets/banking77 (400 train rows, 64 eval rows), made into a temporary folder in the
same run; without that dataset, synthetic rows of the same lengths (a random-word query of 10-30 words and
one of three labels).

tunekit compiles its decoder layers (training.compile=auto) and inductor caches the result on the machine;
a 2-step run of each method first fills that cache, so the timed run includes loading the compiled layers
(~2 s) but not compiling them (~20 s, once per machine). --cold skips the warm-up.
`mfu` counts the whole run; `mfu_steady` leaves out its first step (`first_step_s`), which holds that
loading and tracing: a fixed cost of ~3 s that is ~12% of a 30-step LoRA run and ~0.3% of a 1000-step one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's tunekit, installed or not

from tunekit.runfolder import RunFolder  # noqa: E402

SHARED = ROOT.parent / "shared" / "bench"
TRAIN, EVAL = SHARED / "data" / "synth_train.jsonl", SHARED / "data" / "synth_eval.jsonl"
BANKING77 = ROOT.parent / "shared" / "datasets" / "banking77"
# (batch size, max length) of each workload
WORKLOADS = {"long": (4, 512), "short": (16, 128)}
LORA = ["method.r=16", "method.alpha=32", "method.dropout=0.05", "method.target_modules=[q_proj, v_proj]"]


def run_json(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def model_dir() -> Path:
    from tunekit.models.resolve import EMBEDDED_DEFAULT, resolve_model

    return resolve_model(EMBEDDED_DEFAULT).path


def write_splits(run: Path, train: Path, evaluation: Path) -> None:
    """The benchmark's rows as the run's prepared splits (evaluation rows serve as validation and test)."""
    folder = RunFolder(run)
    folder.data_dir.mkdir(parents=True, exist_ok=True)
    folder.split_path("train").write_bytes(train.read_bytes())
    folder.split_path("validation").write_bytes(evaluation.read_bytes())
    folder.split_path("test").write_bytes(evaluation.read_bytes())


def short_rows(folder: Path) -> tuple[Path, Path]:
    """The short-row workload's train and eval files, written into `folder` (see the module docstring)."""
    subprocess.run([sys.executable, str(SHARED / "make_bench_data.py"), "--out-dir", str(folder),
                    "--banking77", str(BANKING77)], check=True, capture_output=True)
    train, evaluation = folder / "banking77_train.jsonl", folder / "banking77_eval.jsonl"
    if not train.is_file():  # no banking77 beside the repository: rows of the same lengths
        import random

        rng = random.Random(1234)
        words = ["card", "account", "transfer", "payment", "money", "fee", "cash", "top", "up", "pending",
                 "refund", "app", "pin", "limit"]

        def row() -> str:
            query = " ".join(rng.choice(words) for _ in range(rng.randint(10, 30)))
            label = rng.choice(["card_arrival", "card_linking", "exchange_rate"])
            return json.dumps({"messages": [{"role": "user", "content": query + "\n\nWhich banking intent does this "
                               "customer message express? Answer with the intent label only."},
                                            {"role": "assistant", "content": label}]}) + "\n"

        train.write_text("".join(row() for _ in range(400)), encoding="utf-8")
        evaluation.write_text("".join(row() for _ in range(64)), encoding="utf-8")
    return train, evaluation


def bench_overrides(run: Path, method: str, steps: int, workload: str = "long") -> list[str]:
    """The benchmark's training settings, as `key=value` overrides of `tunekit train`."""
    batch, length = WORKLOADS[workload]
    return [
        f"run_dir={run}", f"model.max_seq_len={length}", f"method.name={method}", f"training.max_steps={steps}",
        f"training.batch_size={batch}", "training.lr_scheduler=linear", "training.warmup_ratio=0",
        f"training.eval_every={steps}", f"training.learning_rate={2e-5 if method == 'full' else 2e-4}",
        "training.seed=42", "data.too_long=truncate_right",
    ] + (LORA if method in ("lora", "qlora") else [])


def tunekit_run(method: str, steps: int, workdir: Path, extra: list[str], workload: str = "long") -> dict:
    """Train with the tunekit CLI on exactly the benchmark's rows (written as the prepared splits)."""
    run = workdir / f"run-{method}"
    write_splits(run, TRAIN, EVAL)
    overrides = bench_overrides(run, method, steps, workload) + extra
    exe = str(Path(sys.executable).with_name("tunekit"))
    config = workdir / "tunekit.yaml"
    config.write_text("project: bench\n", encoding="utf-8")
    proc = subprocess.run([exe, "train", str(config), *overrides], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"tunekit train failed:\n{proc.stderr[-4000:]}")
    return json.loads(RunFolder(run).summary_path.read_text())


def trl_eval_loss(run: Path, base_dir: Path, evaluation: Path) -> float:
    """tunekit's trained weights scored by the very evaluate() the TRL baseline reports (same SFTConfig
    eval settings, same prompt-completion rows, same tokenizer files), so the losses compare like for
    like. tunekit's own validation loss counts answer tokens and their end token only; TRL also
    counts the newline after the end token and an appended EOS, which lowers its figure."""
    import torch
    from datasets import Dataset
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    sys.path.insert(0, str(SHARED))
    from baseline_trl import to_prompt_completion

    folder = RunFolder(run)
    if folder.adapter_dir.is_dir():
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        model = PeftModel.from_pretrained(model, str(folder.adapter_dir))
    else:
        model = AutoModelForCausalLM.from_pretrained(folder.model_dir, dtype=torch.float32)
    rows = [json.loads(line) for line in evaluation.read_text().splitlines() if line.strip()]
    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(output_dir=out, per_device_eval_batch_size=4, max_length=512, bf16=False, fp16=False,
                           use_cpu=True, report_to="none", disable_tqdm=True)
        dataset = Dataset.from_list(to_prompt_completion(rows, "eval"))
        trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, eval_dataset=dataset,
                             processing_class=AutoTokenizer.from_pretrained(base_dir))
        return float(trainer.evaluate()["eval_loss"])


def score_run(run: Path) -> float:
    """trl_eval_loss in a child process: loading a model here would grow this process, and every child
    started afterwards (tunekit, TRL) inherits its peak RSS through ru_maxrss, which survives exec."""
    return run_json([sys.executable, __file__, "--score-run", str(run), "--score-eval", str(EVAL)])["eval_loss"]


def mfu(flops_per_token: float, tokens_per_s: float | None, peak_gflops: float) -> float | None:
    """Model FLOP utilisation; None where there is no figure (a 1-step run has no steady-state speed)."""
    return None if tokens_per_s is None else round(flops_per_token * tokens_per_s / 1e9 / peak_gflops, 4)


def main() -> None:
    global TRAIN, EVAL  # the short workload's rows replace the long one's
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="lora,qlora,full")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="long",
                        help="long: the synthetic rows, batch 4; short: banking77-like rows, batch 16")
    parser.add_argument("--skip-baseline", action="store_true", help="tunekit only (for quick iteration)")
    parser.add_argument("--cold", action="store_true", help="no 2-step warm-up run first: the timed run then "
                        "includes compiling the layers, as a machine's very first run does (~20 s)")
    # internal: print trl_eval_loss of one run folder on one eval file
    parser.add_argument("--score-run", help=argparse.SUPPRESS)
    parser.add_argument("--score-eval", default=str(EVAL), help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="extra tunekit key=value overrides")
    args = parser.parse_args()
    if args.score_run:
        print(json.dumps({"eval_loss": trl_eval_loss(Path(args.score_run), model_dir(), Path(args.score_eval))}))
        return
    peak = run_json([sys.executable, str(SHARED / "peak_flops.py")])
    workdir = tempfile.TemporaryDirectory()
    if args.workload == "short":
        TRAIN, EVAL = short_rows(Path(workdir.name))
    batch, length = WORKLOADS[args.workload]
    result: dict = {"bench": "train_throughput", "steps": args.steps, "workload": args.workload,
                    "rows": TRAIN.name, "batch_size": batch,
                    "peak_gflops": {"fp32": peak["peak_fp32_gflops"], "bf16": peak.get("peak_bf16_gflops")}}
    mdir = model_dir()
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            if not args.cold:  # fill inductor's cache (once per machine in real use): see --cold
                tunekit_run(method, 2, Path(tmp) / "warmup", args.overrides, args.workload)
            ours = tunekit_run(method, args.steps, Path(tmp), args.overrides, args.workload)
            flops_per_token = (6 if method == "full" else 4) * ours["matmul_params"]
            peak_ours = result["peak_gflops"][ours["dtype"]] or result["peak_gflops"]["fp32"]
            entry = {"tunekit": {
                "useful_tokens_per_s": ours["useful_tokens_per_s"], "val_loss": round(ours["final_val_loss"], 4),
                "val_loss_trl_eval": round(score_run(Path(tmp) / f"run-{method}"), 4),
                "peak_rss_mb": ours["peak_rss_mb"], "dtype": ours["dtype"],
                "mfu": mfu(flops_per_token, ours["useful_tokens_per_s"], peak_ours),
                # the same without the run's first step, which also loads (or compiles) the compiled layers
                "steady_useful_tokens_per_s": ours["steady_useful_tokens_per_s"],
                "first_step_s": ours["first_step_s"],
                "mfu_steady": mfu(flops_per_token, ours["steady_useful_tokens_per_s"], peak_ours),
            }}
            if not args.skip_baseline:
                base = run_json([sys.executable, str(SHARED / "baseline_trl.py"), "--train", str(TRAIN), "--eval",
                                 str(EVAL), "--method", method, "--steps", str(args.steps), "--model", str(mdir),
                                 "--batch-size", str(batch), "--max-length", str(length),
                                 "--peak-gflops", str(peak["peak_fp32_gflops"])])
                entry["trl"] = {k: base.get(k) for k in ("useful_tokens_per_s", "eval_loss", "peak_rss_mb", "mfu")}
                entry["ratio"] = round(ours["useful_tokens_per_s"] / base["useful_tokens_per_s"], 2)
                entry["val_loss_vs_trl"] = round(entry["tunekit"]["val_loss_trl_eval"] / base["eval_loss"], 4)
                entry["rss_vs_trl"] = round(ours["peak_rss_mb"] / base["peak_rss_mb"], 3)
            result[method] = entry
            print(json.dumps({method: entry}), file=sys.stderr, flush=True)
    print(json.dumps(result))
    workdir.cleanup()


if __name__ == "__main__":
    main()
