"""Training past one process on the tiny model: FSDP on CPU (gloo) killed and resumed, two "machines" on
loopback, and the launcher configs tunekit refuses before any process starts."""

import json
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file

from cli_helpers import started
from train_helpers import TUNEKIT, make_project, read_metrics, tunekit
from tunekit.processes import free_port


def accelerate_config(path: Path, **fields) -> Path:
    base = {"compute_environment": "LOCAL_MACHINE", "num_machines": 1, "num_processes": 2, "machine_rank": 0,
            "mixed_precision": "no", "use_cpu": False}
    path.write_text(yaml.safe_dump({**base, **fields}), encoding="utf-8")
    return path


def fsdp_config(path: Path, **fsdp) -> Path:
    return accelerate_config(path, distributed_type="FSDP", main_process_port=free_port(),
                             fsdp_config={"fsdp_version": 2, "fsdp_reshard_after_forward": True, **fsdp})


def kill_tree(proc: psutil.Popen) -> None:
    """SIGKILL the command, its launcher and every worker at once: a machine that loses power."""
    family = [proc, *psutil.Process(proc.pid).children(recursive=True)]
    for member in family:
        member.kill()
    psutil.wait_procs(family, timeout=30)


def final_weights(run: Path, method: str) -> dict[str, torch.Tensor]:
    name = "adapter/adapter_model.safetensors" if method == "lora" else "model/model.safetensors"
    return load_file(str(run / name))


@pytest.mark.parametrize("method", ["lora", "full"])
def test_an_fsdp_run_killed_and_resumed_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, tiny_model_dir,
                                                                                     method):
    """bf16 with dropout: the sharded weights, optimizer state, schedule, data position and every process's
    random state all come back, or the weights would differ."""
    config = fsdp_config(tmp_path / "fsdp.yaml")
    args = ["--accelerate-config", str(config), f"method.name={method}", "training.max_steps=16",
            "training.save_every=4", "training.eval_every=16"]
    whole = make_project(tmp_path / "whole", tiny_model_dir)
    result = tunekit("train", str(whole), *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FSDP over 2 processes" in result.stderr

    cut = make_project(tmp_path / "cut", tiny_model_dir)
    checkpoints = tmp_path / "cut" / "run" / "checkpoints"
    with started([TUNEKIT, "train", str(cut), *args]) as proc:
        deadline = time.time() + 240
        while time.time() < deadline and not (checkpoints / "step-000004").is_dir():
            time.sleep(0.01)
        kill_tree(psutil.Process(proc.pid))
    kept = sorted(p.name for p in checkpoints.iterdir() if p.name.startswith("step-"))
    assert kept and kept[-1] < "step-000016", kept  # killed part-way
    assert not (tmp_path / "cut" / "run" / "summary.json").exists()
    resumed = tunekit("train", str(cut), *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {checkpoints / kept[-1]}" in resumed.stderr.replace("\n", "")

    expected, got = final_weights(tmp_path / "whole" / "run", method), final_weights(tmp_path / "cut" / "run", method)
    assert expected.keys() == got.keys() and expected
    for name, tensor in expected.items():
        assert torch.equal(tensor, got[name]), name
    losses = [[m["loss"] for m in read_metrics(tmp_path / p / "run") if "loss" in m] for p in ("whole", "cut")]
    assert losses[0] == losses[1] and len(losses[0]) == 16
    if method == "lora":
        check_adapter_equals_the_sharded_checkpoint(tmp_path / "whole" / "run", tiny_model_dir, tmp_path)


def check_adapter_equals_the_sharded_checkpoint(run: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    """The consolidated adapter loads with unmodified PEFT and holds exactly the weights each process saved."""
    from peft import PeftModel
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    from transformers import AutoModelForCausalLM

    step = run / "checkpoints" / "step-000016"
    shards = sorted(p.name for p in (step / "sharded").iterdir() if p.suffix == ".distcp")
    assert shards == ["__0_0.distcp", "__1_0.distcp"]
    dcp_to_torch_save(step / "sharded", tmp_path / "whole.pt")
    sharded = torch.load(tmp_path / "whole.pt", weights_only=True)["model"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(run / "adapter"))
    trained = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert trained and trained.keys() == sharded.keys()  # trainable weights only: no frozen tied output layer
    for name, param in trained.items():
        assert torch.equal(param.detach(), sharded[name]), name
    assert len(load_file(str(step / "adapter" / "adapter_model.safetensors"))) == len(trained)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["trainable_params"] == sum(p.numel() for p in trained.values())


def test_two_machines_on_loopback_match_one_machine_with_double_accumulation(tmp_path, tiny_model_dir):
    """Two `tunekit train` commands, each one "machine" of one process, meeting on 127.0.0.1: the same losses
    as one process accumulating two micro-batches. They share the run folder, and the data is prepared once.
    (It is also the data-parallel check: DDP over gloo gives the update of gradient accumulation; the
    `--num-processes` launcher runs the same worker, and test_train's SIGTERM test runs it.)"""
    # One config for both, as a cluster job has it; each machine's rank and the meeting point come from the
    # command line, where Slurm or Kubernetes fills them in.
    config = accelerate_config(tmp_path / "machines.yaml", distributed_type="MULTI_GPU", num_machines=2,
                               machine_rank=0, main_process_ip="10.255.255.1", rdzv_backend="static",
                               same_network=True)
    place = ["--main-process-ip", "127.0.0.1", "--main-process-port", str(free_port())]
    settings = ["training.dtype=fp32", "method.dropout=0", "training.max_steps=6", "training.batch_size=2"]
    two = make_project(tmp_path / "two", tiny_model_dir)
    with started([TUNEKIT, "train", str(two), "--accelerate-config", str(config), "--machine-rank", "1", *place,
                  *settings]) as other:
        first = tunekit("train", str(two), "--accelerate-config", str(config), *place, *settings, timeout=600)
        _, other_err = other.communicate(timeout=300)
    assert first.returncode == 0 and other.returncode == 0, first.stderr[-2000:] + other_err[-2000:]
    prepared = [err for err in (first.stderr, other_err) if "running `tunekit data prepare` first" in err]
    encoded = [err for err in (first.stderr, other_err) if "encoded train:" in err]
    assert len(prepared) == 1 and len(encoded) == 1  # made once, under the run folder's lock
    # Each process read only the rows of its own micro-batches: 6 steps of 2 rows, none of the other's.
    summary = json.loads((tmp_path / "two" / "run" / "summary.json").read_text())
    assert summary["train_rows_read_per_process"] == [12, 12]
    one = make_project(tmp_path / "one", tiny_model_dir)
    single = tunekit("train", str(one), *settings, "training.grad_accum=2")
    assert single.returncode == 0, single.stderr[-3000:]
    m1 = [m for m in read_metrics(tmp_path / "one" / "run") if "loss" in m]
    m2 = [m for m in read_metrics(tmp_path / "two" / "run") if "loss" in m]
    assert len(m1) == len(m2) == 6
    for a, b in zip(m1, m2):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["tokens"] == b["tokens"]


def test_deepspeed_on_cpu_is_refused_before_any_process_starts(tmp_path, tiny_model_dir):
    project = make_project(tmp_path, tiny_model_dir)
    config = accelerate_config(tmp_path / "ds.yaml", distributed_type="DEEPSPEED", deepspeed_config={"zero_stage": 3})
    result = tunekit("train", str(project), "--accelerate-config", str(config))
    assert result.returncode == 2, result.stderr[-3000:]
    assert "DeepSpeed needs CUDA GPUs" in " ".join(result.stderr.split()) and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()  # not even the data was prepared


def test_launcher_configs_that_would_not_run_as_written_are_refused(tmp_path) -> None:
    """The CLI reads the accelerate config before it prepares data or starts a process (the command-line
    path is test_deepspeed_on_cpu_is_refused_before_any_process_starts)."""
    from tunekit.errors import UserError
    from tunekit.train.launch import read_accelerate_config

    single = accelerate_config(tmp_path / "cpu.yaml", distributed_type="MULTI_CPU", use_cpu=True)
    with pytest.raises(UserError, match="only through mpirun"):  # accelerate would start one process
        read_accelerate_config(single)
    mpi = accelerate_config(tmp_path / "mpi.yaml", distributed_type="MULTI_CPU", use_cpu=True,
                            mpirun_hostfile="hosts")
    assert read_accelerate_config(mpi)["use_cpu"]
    fsdp1 = accelerate_config(tmp_path / "fsdp1.yaml", distributed_type="FSDP", fsdp_config={"fsdp_version": 1})
    with pytest.raises(UserError, match="FSDP2 only"):
        read_accelerate_config(fsdp1)
    (tmp_path / "list.yaml").write_text("- not a mapping\n", encoding="utf-8")
    with pytest.raises(UserError, match="YAML mapping"):
        read_accelerate_config(tmp_path / "list.yaml")


def test_what_fsdp_cannot_shard_is_refused() -> None:
    from tunekit.errors import UserError
    from tunekit.methods import get_method
    from tunekit.train.sharding import check_method, fsdp_plan

    plan = fsdp_plan({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_SHARDING_STRATEGY": "SHARD_GRAD_OP"})
    assert plan is not None and not plan.reshard_after_forward  # ZeRO-2: gathered weights kept until backward
    assert fsdp_plan({}) is None
    for method in ("prompt", "prefix"):
        with pytest.raises(UserError, match="virtual tokens"):
            check_method(get_method(method), "auto")
    with pytest.raises(UserError, match="FSDP does not shard"):
        check_method(get_method("full"), "adamw_bf16")
    check_method(get_method("lora"), "auto")
