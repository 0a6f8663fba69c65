"""GPU check: tunekit trains and generates correctly on a CUDA GPU, and this fast. Prints one JSON line.

Made for a machine that can reach no model hub and to which the embedded GGUF (93 MB) cannot be carried,
so it builds SmolLM2-135M-Instruct's architecture with random weights from its config.json and tokenizer
(--model-files: a folder without weights). Speed depends only on the shapes. Correctness is checked by
comparison, not by loss values:
- `parity`: the same LoRA steps (fp32, no dropout, same rows, same initial weights) on the CPU and on the
  GPU reach the same losses, to a relative 1e-3;
- `generation.fp32_identical`: tunekit's batched greedy generation in fp32 gives the tokens HF `generate`
  gives for each prompt alone, on the GPU;
- `fsdp`: the parity run again under an accelerate FSDP2 config (NCCL; one process, as the machine has one
  GPU): the same losses, a torch distributed checkpoint per save and the consolidated adapter; then the
  run resumed from its middle checkpoint, and how far its final adapter is from the uninterrupted one's.
Figures: the bf16 matmul rate of an 8192^3 product (the MFU denominator); useful tokens/s, MFU and peak
GPU memory of 30-step LoRA (eager, and compiled), QLoRA and full fine-tuning runs on the benchmark's rows
(../shared/bench/data, or --data), each as `tunekit train` runs it; generation tokens/s in bf16.

  python bench/gpu_check.py --model-files DIR [--data DIR] [--steps 30] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from generate_throughput import hf_reference, prompts_of, timed_generate  # noqa: E402
from train_throughput import bench_overrides, mfu, write_splits  # noqa: E402
from tunekit.runfolder import RunFolder  # noqa: E402

RUNS = {  # name: (method, extra overrides); compiling last, as it may take longest on a cold cache
    "lora": ("lora", []),
    "qlora": ("qlora", []),
    "full": ("full", []),
    "lora_compiled": ("lora", ["training.compile=true"]),
}


def matmul_peak_gflops(device: str, size: int = 8192, reps: int = 10) -> float:
    import torch

    a, b = (torch.randn(size, size, device=device, dtype=torch.bfloat16) for _ in range(2))
    def wait() -> None:  # CUDA runs asynchronously: time the products, not their launches
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):
        a @ b
    wait()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    wait()
    return round(2 * size**3 * reps / (time.perf_counter() - start) / 1e9, 1)


def random_model(files: Path, out: Path) -> Path:
    """The architecture in files/config.json with seeded random weights, saved with the tokenizer files."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(files), dtype=torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for f in files.iterdir():
        if f.name != "config.json":
            shutil.copy(f, out / f.name)
    return out


def train(model: Path, data: Path, work: Path, name: str, method: str, extra: list[str], steps: int,
          env: dict[str, str] | None = None, fresh: bool = True) -> dict:
    """`tunekit train` on the benchmark's rows, as bench/train_throughput.py runs it; the run's summary
    and its per-step losses."""
    run = work / f"run-{name}"
    if fresh:
        write_splits(run, data / "synth_train.jsonl", data / "synth_eval.jsonl")
    overrides = [*bench_overrides(run, method, steps), f"model.name={model}", *extra]
    config = work / "tunekit.yaml"
    config.write_text("project: gpu-check\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "tunekit.cli.main", "train", str(config), *overrides]
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": path, **(env or {})})
    if proc.returncode != 0:
        return {"error": proc.stderr[-3000:]}
    summary = {"stderr": proc.stderr} | json.loads(RunFolder(run).summary_path.read_text())
    lines = (run / "metrics.jsonl").read_text().splitlines()
    summary["losses"] = [json.loads(line)["loss"] for line in lines if '"loss"' in line]
    return summary


def training_figures(summary: dict, method: str, peak: float) -> dict:
    if "error" in summary:
        return summary
    flops_per_token = (6 if method == "full" else 4) * summary["matmul_params"]
    keys = ("device", "dtype", "compiled", "useful_tokens_per_s", "steady_useful_tokens_per_s", "first_step_s",
            "final_val_loss", "peak_gpu_mb", "peak_rss_mb")
    return {**{k: summary.get(k) for k in keys},
            "mfu": mfu(flops_per_token, summary["useful_tokens_per_s"], peak),
            "mfu_steady": mfu(flops_per_token, summary["steady_useful_tokens_per_s"], peak),
            "loss_first_last": [round(summary["losses"][0], 4), round(summary["losses"][-1], 4)]}


def parity(model: Path, data: Path, work: Path, steps: int = 4) -> dict:
    """Per-step LoRA losses on the CPU and on the GPU, fp32, no dropout: the same within 1e-3 relative."""
    extra = ["training.dtype=fp32", "method.dropout=0.0", "training.compile=false"]
    cpu = train(model, data, work, "parity-cpu", "lora", extra, steps, env={"CUDA_VISIBLE_DEVICES": ""})
    gpu = train(model, data, work, "parity-gpu", "lora", extra, steps)
    if "error" in cpu or "error" in gpu:
        return {"cpu": cpu, "gpu": gpu}
    worst = max(abs(a - b) / abs(a) for a, b in zip(cpu["losses"], gpu["losses"]))
    return {"devices": [cpu["device"], gpu["device"]], "cpu_losses": [round(x, 5) for x in cpu["losses"]],
            "gpu_losses": [round(x, 5) for x in gpu["losses"]], "max_rel_diff": round(worst, 6),
            "same": worst < 1e-3}


def fsdp(model: Path, data: Path, work: Path, unsharded_losses: list[float], steps: int = 4) -> dict:
    """The parity run's GPU half under FSDP2 (NCCL), then resumed from its middle checkpoint."""
    import yaml
    from safetensors.torch import load_file

    from tunekit.processes import free_port

    config = work / "fsdp.yaml"
    config.write_text(yaml.safe_dump({
        "compute_environment": "LOCAL_MACHINE", "distributed_type": "FSDP", "num_machines": 1, "num_processes": 1,
        "machine_rank": 0, "main_process_port": free_port(), "mixed_precision": "no", "use_cpu": False,
        "fsdp_config": {"fsdp_version": 2, "fsdp_reshard_after_forward": True}}), encoding="utf-8")
    extra = ["training.dtype=fp32", "method.dropout=0.0", "training.compile=false", f"training.save_every={steps // 2}",
             "--accelerate-config", str(config)]
    run = work / "run-fsdp"
    first = train(model, data, work, "fsdp", "lora", extra, steps)
    if "error" in first:
        return first
    adapter = run / "adapter" / "adapter_model.safetensors"
    middle, last = run / "checkpoints" / f"step-{steps // 2:06d}", run / "checkpoints" / f"step-{steps:06d}"
    shards = sorted(p.name for p in (last / "sharded").glob("*.distcp"))
    result = {"sharded": first.get("sharded"), "device": first.get("device"), "shards": shards,
              "losses": [round(x, 5) for x in first["losses"]], "adapter_tensors": len(load_file(str(adapter))),
              "max_rel_diff_to_unsharded": round(max(abs(a - b) / abs(a) for a, b in zip(unsharded_losses,
                                                                                         first["losses"])), 6)}
    uninterrupted = load_file(str(adapter))
    import shutil  # a run killed after its middle checkpoint: the later checkpoint and the outputs never written

    shutil.rmtree(last)
    shutil.rmtree(run / "adapter")
    RunFolder(run).summary_path.unlink()
    resumed = train(model, data, work, "fsdp", "lora", [*extra, "--resume"], steps, fresh=False)
    if "error" in resumed:
        return {**result, "resume": resumed}
    again = load_file(str(adapter))
    result["resumed_from_middle"] = str(middle) in resumed["stderr"].replace("\n", "")
    result["resume_max_abs_diff"] = max(float((uninterrupted[k] - again[k]).abs().max()) for k in uninterrupted)
    return result


def generation(model_dir: Path, data: Path, device: str, num_prompts: int = 32, new_tokens: int = 64) -> dict:
    from tunekit.generate import GenerationParams, Generator
    from tunekit.models.load import load_chat_tokenizer, load_model
    from tunekit.models.resolve import resolve_model

    resolved = resolve_model(str(model_dir))
    tokenizer = load_chat_tokenizer(resolved)
    model = load_model(resolved).eval().to(device)  # fp32
    prompts = prompts_of(data / "synth_eval.jsonl", num_prompts)
    params = GenerationParams(max_new_tokens=new_tokens)
    fast = Generator(model, tokenizer)
    fast.generate(prompts[:2], GenerationParams(max_new_tokens=4))  # warm-up
    figures, _ = timed_generate(fast, prompts, params)
    exact = Generator(model, tokenizer, dtype="fp32")
    few = prompts[:8]
    _, exact_texts = timed_generate(exact, few, params)
    reference = hf_reference(model, tokenizer, [exact.render(p) for p in few], new_tokens, sorted(exact.eos_ids))
    # eval and serve load models on the CPU; the generator must still decode on the GPU (issue #23).
    on_cpu = Generator(load_model(resolved).eval(), tokenizer)
    return {"device": str(fast.device.device), "training_attention": attention_of(model_dir), **figures,
            "fp32_identical": sum(a == b for a, b in zip(exact_texts, reference)), "of": len(few),
            "cpu_loaded_model_decodes_on": str(on_cpu.device.device)}


def attention_of(model_dir: Path) -> str:
    """The attention implementation training loads the model with on this machine."""
    from tunekit.devices import attention_implementation, pick_device

    return attention_implementation(pick_device("bf16"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-files", type=Path, required=True, help="config.json and tokenizer files")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "bench" / "data")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--runs", default=",".join(RUNS), help=f"any of {','.join(RUNS)}")
    parser.add_argument("--work", type=Path, default=None, help="where run folders go (default: a temp folder)")
    args = parser.parse_args()

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    result: dict = {"bench": "gpu_check", "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                    "torch": torch.__version__, "steps": args.steps}
    result["peak_bf16_gflops"] = peak = matmul_peak_gflops(device, 8192 if device == "cuda" else 1024)
    model = random_model(args.model_files, work / "model")
    result["parity"] = parity(model, args.data, work)
    print(json.dumps({"parity": result["parity"]}), file=sys.stderr, flush=True)
    if "gpu_losses" in result["parity"]:  # on a CPU-only machine both halves ran on the CPU
        result["fsdp"] = fsdp(model, args.data, work, result["parity"]["gpu_losses"])
        print(json.dumps({"fsdp": result["fsdp"]}), file=sys.stderr, flush=True)
    result["generation"] = generation(model, args.data, device)
    print(json.dumps({"generation": result["generation"]}), file=sys.stderr, flush=True)
    for name in args.runs.split(","):
        method, extra = RUNS[name]
        result[name] = training_figures(train(model, args.data, work, name, method, extra, args.steps), method, peak)
        print(json.dumps({name: result[name]}), file=sys.stderr, flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
