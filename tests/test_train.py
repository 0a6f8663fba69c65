"""Training end to end on the tiny model: run folder, PEFT format, resume, NaN stop, interrupts, merge."""

import json
import os
import signal
import subprocess
import time

import psutil
import pytest
import torch
from safetensors.torch import load_file

from cli_helpers import started
from train_helpers import TUNEKIT, make_project, read_metrics, run_in_process, tunekit
from tunekit.errors import ConfigError
from tunekit.methods import available_methods, get_method
from tunekit.train.loop import TrainingStopped


def test_lora_run_folder_is_complete_and_peft_loadable(tmp_path, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = make_project(tmp_path, tiny_model_dir)
    result = tunekit("train", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    for name in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "tokenizer/tokenizer.json",
                 "config.yaml", "metrics.jsonl", "summary.json", "manifest.json", "loss_curve.png"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["useful_tokens_per_s"] > 0 and summary["peak_rss_mb"] > 0
    assert summary["steady_useful_tokens_per_s"] > 0 and 0 < summary["first_step_s"] < summary["train_s"]
    assert summary["final_val_loss"] is not None
    assert summary["device"] == "cpu" and summary["peak_gpu_mb"] is None  # a figure only where CUDA ran
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["data"]["splits"]["train"]["sha256"] and len(manifest["chat_template_sha256"]) == 64
    assert manifest["libraries"]["torch"].startswith("2.13")
    losses = [m["loss"] for m in read_metrics(run) if "loss" in m]
    assert len(losses) == 8 and losses[-1] < losses[0]
    # PEFT's own loader, unmodified, takes the adapter.
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(base, str(run / "adapter"))
    trained = load_file(str(run / "checkpoints" / "step-000008" / "trainable.safetensors"))
    state = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(state) == len(trained)
    for name, tensor in trained.items():
        assert torch.equal(state[name].float(), tensor.float()), name
    assert str(run) in result.stdout


@pytest.mark.parametrize("method", available_methods())
def test_every_method_trains(tmp_path, tiny_model_dir, method):
    config = make_project(tmp_path, tiny_model_dir)
    # One of the tiny model's two layers, for the methods that train the last N.
    layers = ["method.trainable_layers=1"] if "trainable_layers" in get_method(method).options else []
    _, result = run_in_process(config, f"method.name={method}", "training.max_steps=4", *layers)
    assert result["state"].step == 4
    assert (tmp_path / "run" / ("adapter" if get_method(method).uses_peft else "model")).is_dir()


def test_resume_after_sigkill_ends_with_the_same_weights(tmp_path, tiny_model_dir):
    steps = "training.max_steps=60"  # killed after step 10: the rest is the window to kill it in
    straight = make_project(tmp_path / "a", tiny_model_dir, extra="  save_every: 5\n")
    assert tunekit("train", str(straight), steps).returncode == 0
    killed = make_project(tmp_path / "b", tiny_model_dir, extra="  save_every: 5\n")
    checkpoints = tmp_path / "b" / "run" / "checkpoints"
    with started([TUNEKIT, "train", str(killed), steps], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                 env=os.environ.copy()) as proc:
        deadline = time.time() + 120
        while time.time() < deadline and not any(int(p.name[5:]) >= 10 for p in checkpoints.glob("step-*")):
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (tmp_path / "b" / "run" / "summary.json").exists(), "the run finished before it was killed"
    resumed = tunekit("train", str(killed), steps, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    a = load_file(str(tmp_path / "a" / "run" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "run" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
    steps_logged = [m["step"] for m in read_metrics(tmp_path / "b" / "run") if "loss" in m]
    assert steps_logged == list(range(1, 61))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny_model_dir, monkeypatch):
    import tunekit.train.loop as loop

    real = loop.supervised_loss_sum
    calls = {"n": 0}

    def poisoned(model, batch, **options):
        calls["n"] += 1
        loss, count = real(model, batch, **options)
        return (loss * float("nan"), count) if calls["n"] > 6 else (loss, count)

    monkeypatch.setattr(loop, "supervised_loss_sum", poisoned)
    config = make_project(tmp_path, tiny_model_dir, extra="  save_every: 2\n  eval_every: 100\n")
    with pytest.raises(TrainingStopped, match="loss became nan at step 7"):
        run_in_process(config)
    names = [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()]
    assert "step-000006" in names and not any(n > "step-000006" for n in names)


# Started as from a terminal, and as from a background job or CI runner (SIGINT inherited as ignored, which
# Python keeps unless tunekit installs its own handler); SIGTERM as from `kill`, docker or a scheduler.
@pytest.mark.parametrize(("signum", "ignore_sigint"), [(signal.SIGINT, False), (signal.SIGINT, True),
                                                       (signal.SIGTERM, True)], ids=["ctrl-c", "sigint-ignored",
                                                                                     "sigterm"])
def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path, tiny_model_dir, signum, ignore_sigint):
    config = make_project(tmp_path, tiny_model_dir, extra="  save_every: 3\n")
    checkpoints = tmp_path / "run" / "checkpoints"
    with started([TUNEKIT, "train", str(config), "training.max_steps=100000"], ignore_sigint=ignore_sigint,
                 env=os.environ.copy()) as proc:
        deadline = time.time() + 120
        while time.time() < deadline and not (checkpoints.is_dir() and any(checkpoints.iterdir())):
            time.sleep(0.05)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-2000:]
    assert "interrupted at step" in err and "Traceback" not in err
    step = int(err.split("interrupted at step ")[1].split(";")[0])
    assert (checkpoints / f"step-{step:06d}" / "trainable.safetensors").is_file()


def test_sigterm_stops_every_training_process_after_a_checkpoint(tmp_path, tiny_model_dir):
    """Several processes: the signal reaches the workers through the launcher, once; none outlives the run."""
    config = make_project(tmp_path, tiny_model_dir, extra="  save_every: 3\n")
    checkpoints = tmp_path / "run" / "checkpoints"
    with started([TUNEKIT, "train", str(config), "training.max_steps=100000", "--num-processes", "2"],
                 ignore_sigint=True, env=os.environ.copy()) as proc:
        deadline = time.time() + 180
        while time.time() < deadline and not (checkpoints.is_dir() and any(checkpoints.iterdir())):
            time.sleep(0.05)
        run = psutil.Process(proc.pid).children(recursive=True)  # the launcher and its two workers
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    assert len(run) == 3, [p.cmdline() for p in run]
    assert not psutil.wait_procs(run, timeout=5)[1], "a training process outlived `tunekit train`"
    assert proc.returncode == 1, err[-3000:]
    # Every worker stops after the same step (they agree through accelerate's trigger) and they saved it.
    steps = {int(part.split(";")[0]) for part in err.split("interrupted at step ")[1:]}
    assert len(steps) == 1, err[-3000:]
    assert (checkpoints / f"step-{steps.pop():06d}" / "trainable.safetensors").is_file(), err[-3000:]


def test_early_stopping(tmp_path, tiny_model_dir, monkeypatch):
    import tunekit.train.trainer as trainer

    values = iter([1.0, 0.9, 0.95, 0.97, 0.99, 1.2, 1.3, 1.4])
    monkeypatch.setattr(trainer, "validation_loss", lambda *a, **k: next(values))
    config = make_project(tmp_path, tiny_model_dir, extra="  eval_every: 1\n  early_stopping_patience: 2\n")
    _, result = run_in_process(config, "training.max_steps=8")
    assert result["stop_reason"] == "early_stopping" and result["state"].step == 4


def test_merge_writes_a_plain_model_that_answers_the_same(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    config = make_project(tmp_path, tiny_model_dir)
    assert tunekit("train", str(config)).returncode == 0
    result = tunekit("merge", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "match base+adapter" in result.stdout
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "merged")
    assert not any("lora" in n for n, _ in model.named_parameters())


def test_reproduce_reports_a_match(tmp_path, tiny_model_dir):
    config = make_project(tmp_path, tiny_model_dir)
    assert tunekit("train", str(config)).returncode == 0
    result = tunekit("train", str(config), "--reproduce", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert '"matches": true' in result.stdout


def test_bad_method_options_fail_before_loading(tmp_path, tiny_model_dir):
    config = make_project(tmp_path, tiny_model_dir)
    result = tunekit("train", str(config), "method.r=0")
    assert result.returncode == 2 and "method.r" in result.stderr and "Traceback" not in result.stderr
    result = tunekit("train", str(config), "method.target_modules=[q_proj, nope]")
    assert result.returncode == 2 and "q_proj" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("method", available_methods())
def test_every_method_trains_the_real_model(tmp_path, smollm2_dir, method):
    config = make_project(tmp_path, smollm2_dir, n=60)
    # Eager layers: compiling this model's layers cold costs ~45 s, over a minute of the suite's 15 on a slow
    # machine. tests/test_compile.py checks compiled layers against eager ones on the tiny model, and `make
    # demo` and bench/train_throughput.py train this model compiled, as a user gets it.
    _, result = run_in_process(config, f"method.name={method}", "training.max_steps=3", "training.batch_size=2",
                               "training.eval_every=3", "training.compile=false")
    history = result["state"].history
    assert result["state"].step == 3 and all(h["loss"] == h["loss"] for h in history)  # finite, not NaN
    assert history[-1]["val_loss"] is not None


def test_answer_eval_and_tensorboard_logging(tmp_path, tiny_model_dir):
    pytest.importorskip("tensorboard")
    config = make_project(tmp_path, tiny_model_dir, extra="  answer_eval_every: 4\n  answer_eval_samples: 4\n"
                                                         "  max_new_tokens: 4\n  tensorboard: true\n")
    run_in_process(config)
    records = [m for m in read_metrics(tmp_path / "run") if "answer_exact_match" in m]
    assert [m["step"] for m in records] == [4, 8]
    assert all(0.0 <= m["answer_exact_match"] <= 1.0 for m in records)
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_chat_answers_with_the_runs_template(tmp_path, tiny_model_dir):
    config = make_project(tmp_path, tiny_model_dir)
    assert tunekit("train", str(config)).returncode == 0
    result = tunekit("chat", str(tmp_path / "run"), "--max-new-tokens", "5", input="paint it\nand again\n\n")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("model> ") == 2


def test_chunked_output_layer_loss_matches_the_whole_logits_loss():
    from tunekit.train.loss import LOSS_CHUNK, chunked_head_loss

    torch.manual_seed(0)
    rows = 2 * LOSS_CHUNK + 37  # two full pieces and a ragged one
    head = torch.nn.Linear(24, 300, bias=False)
    hidden = torch.randn(rows, 24, requires_grad=True)
    targets = torch.randint(0, 300, (rows,))
    whole = torch.nn.functional.cross_entropy(head(hidden), targets, reduction="sum")
    expected = torch.autograd.grad(whole, [hidden, head.weight])
    chunked = chunked_head_loss(head, hidden, targets)
    got = torch.autograd.grad(chunked, [hidden, head.weight])
    torch.testing.assert_close(chunked, whole)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)
    with torch.no_grad():
        torch.testing.assert_close(chunked_head_loss(head, hidden, targets), whole.detach())


def test_updating_weights_during_backward_matches_updating_after_it(tiny_model_dir):
    """Full fine-tuning without clipping steps each weight inside backward; the result must not change."""
    from transformers import AutoModelForCausalLM

    from tunekit.train.loop import step_in_backward

    def trained(in_backward: bool) -> dict[str, torch.Tensor]:
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)  # tied embeddings
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        params = list(model.parameters())
        optimizer = torch.optim.AdamW(params, lr=1e-2, fused=True)
        if in_backward:
            step_in_backward(optimizer, params)
        ids = torch.randint(3, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
        for _ in range(3):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            if not in_backward:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    after, during = trained(False), trained(True)
    assert after.keys() == during.keys()
    for name, weight in after.items():
        torch.testing.assert_close(during[name], weight, rtol=0, atol=0, msg=name)


def test_full_fine_tuning_without_clipping_trains_and_resumes(tmp_path, tiny_model_dir):
    config = make_project(tmp_path, tiny_model_dir, extra="  save_every: 2\n")
    overrides = ["method.name=full", "training.max_grad_norm=null", "training.learning_rate=0.001"]
    _, result = run_in_process(config, *overrides, "training.max_steps=4")
    assert result["state"].step == 4
    losses = [m["loss"] for m in read_metrics(tmp_path / "run") if "loss" in m]
    assert losses[-1] < losses[0] and not any("grad_norm" in m for m in read_metrics(tmp_path / "run"))
    _, resumed = run_in_process(config, *overrides, "training.max_steps=6", "training.resume=auto")
    assert resumed["state"].step == 6


def test_eight_bit_adamw_trains_and_resumes_exactly(tmp_path, tiny_model_dir):
    """training.optimizer=adamw_8bit keeps 8-bit moments, and a resumed run (8-bit state restored) ends
    with the same weights as an uninterrupted one."""
    overrides = ["method.name=full", "training.optimizer=adamw_8bit", "training.learning_rate=0.001",
                 "training.lr_scheduler=constant", "training.warmup_ratio=0"]
    straight = make_project(tmp_path / "a", tiny_model_dir)
    _, result = run_in_process(straight, *overrides, "training.max_steps=4")
    losses = [m["loss"] for m in read_metrics(tmp_path / "a" / "run") if "loss" in m]
    assert result["state"].step == 4 and losses[-1] < losses[0]
    state = torch.load(next((tmp_path / "a" / "run" / "checkpoints").glob("step-*")) / "optimizer.pt",
                       weights_only=True)["state"]
    packed = [s.get("__bnb_optimizer_quant_state__", s) for s in state.values()]  # bnb's state_dict layout
    moments = [t for s in packed for k, t in s.items() if k in ("state1", "state2")]
    eight_bit = sum(t.numel() for t in moments if t.dtype == torch.uint8)
    assert eight_bit > 0.9 * sum(t.numel() for t in moments)  # all but the smallest tensors (norms)
    resumed = make_project(tmp_path / "b", tiny_model_dir, extra="  save_every: 2\n")
    run_in_process(resumed, *overrides, "training.max_steps=2")
    run_in_process(resumed, *overrides, "training.max_steps=4", "training.resume=auto")
    a = load_file(str(tmp_path / "a" / "run" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "run" / "model" / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


def test_eight_bit_adamw_without_bitsandbytes_fails_before_loading(tmp_path, tiny_model_dir, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    config = make_project(tmp_path, tiny_model_dir)
    with pytest.raises(ConfigError, match="bitsandbytes") as error:
        run_in_process(config, "training.optimizer=adamw_8bit")
    assert error.value.where == "training.optimizer"
    assert not (tmp_path / "run" / "data").exists()  # failed before data preparation and model loading


def test_a_full_disk_stops_with_a_clear_message_before_writing(tmp_path, tiny_model_dir, monkeypatch):
    """Checked before each checkpoint: torch's own error on a full disk is "unexpected pos ..."."""
    import shutil
    from collections import namedtuple

    from tunekit.errors import UserError

    config = make_project(tmp_path, tiny_model_dir, extra="  save_every: 2\n")
    real = shutil.disk_usage
    usage = namedtuple("usage", "total used free")
    calls = {"n": 0}

    def nearly_full(path):
        calls["n"] += 1
        return usage(10 << 30, 10 << 30, 1 << 20) if calls["n"] > 1 else real(path)  # the 2nd checkpoint

    monkeypatch.setattr(shutil, "disk_usage", nearly_full)
    with pytest.raises(UserError, match="not enough disk space to write checkpoint step 4") as error:
        run_in_process(config, "training.max_steps=6")
    assert "keep_checkpoints" in error.value.fix
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-000002"]
