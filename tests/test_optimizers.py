"""The bf16 AdamW (`training.optimizer=adamw_bf16`): rounding, how closely it follows fp32 AdamW, and a full
fine-tuning run with it that resumes exactly and saves fp32 weights."""

import pytest
import torch
from safetensors.torch import load_file

from train_helpers import make_project, read_metrics, run_in_process
from tunekit.methods import get_method
from tunekit.train.optimizers import CompactAdamW, resolve_optimizer, stochastic_round, store_trained_weights_in


def test_stochastic_rounding_is_unbiased_and_exact_on_the_grid():
    generator = torch.Generator().manual_seed(0)
    quarter_up = torch.full((1 << 20,), 1.0 + 2**-9)  # a quarter of a bf16 step above 1
    rounded = stochastic_round(quarter_up.clone(), generator).float()
    assert set(rounded.unique().tolist()) == {1.0, 1.0 + 2**-7}
    assert abs((rounded > 1).float().mean().item() - 0.25) < 0.002
    assert abs(rounded.mean().item() - (1.0 + 2**-9)) < 2e-5
    negative = stochastic_round(-quarter_up.clone(), generator).float()
    assert abs(negative.mean().item() + (1.0 + 2**-9)) < 2e-5
    on_grid = torch.randn(10_000).bfloat16().float()
    assert torch.equal(stochastic_round(on_grid.clone(), generator).float(), on_grid)


def _train(param, optimizer, grads):
    for grad in grads:
        param.grad = grad.to(param.dtype)
        optimizer.step()


def test_compact_adamw_follows_fp32_adamw_where_plain_bf16_does_not():
    torch.manual_seed(0)
    start = torch.randn(300, 200) * 0.05  # not on the bf16 grid, like fp32 weights loaded from a checkpoint
    grads = [torch.randn(300, 200) * (1 + i % 3) + 0.3 for i in range(200)]
    options = {"lr": 1e-4, "weight_decay": 0.01}

    reference = torch.nn.Parameter(start.clone())
    _train(reference, torch.optim.AdamW([reference], fused=True, **options), grads)
    moved = (reference.detach() - start).abs().mean()

    module = torch.nn.Sequential(torch.nn.Linear(200, 300, bias=False))
    module[0].weight.data = start.clone()
    module.get_input_embeddings = lambda: None
    residuals = store_trained_weights_in(module, torch.bfloat16)
    compact = CompactAdamW([module[0].weight], residuals=residuals, **options)
    _train(module[0].weight, compact, grads)
    assert module[0].weight.dtype == torch.bfloat16
    compact.finish()
    weight = module[0].weight.detach()
    assert weight.dtype == torch.float32 and not compact.state
    assert (weight - reference.detach()).abs().mean() < 0.02 * moved

    plain = torch.nn.Parameter(start.clone().bfloat16())
    _train(plain, torch.optim.AdamW([plain], fused=True, **options), grads)
    assert (plain.detach().float() - reference.detach()).abs().mean() > 0.3 * moved  # updates rounded away

    fp32 = torch.nn.Parameter(start.clone())  # fp32 weights: updated in place, bf16 moments only
    _train(fp32, CompactAdamW([fp32], **options), grads)
    assert fp32.dtype == torch.float32
    assert (fp32.detach() - reference.detach()).abs().mean() < 0.02 * moved


def test_compact_adamw_state_stays_bf16_through_a_state_dict():
    weight = torch.nn.Parameter(torch.randn(64, 64))
    optimizer = CompactAdamW([weight], lr=1e-3)
    weight.grad = torch.randn(64, 64)
    optimizer.step()
    again = CompactAdamW([weight], lr=1e-3)
    again.load_state_dict(optimizer.state_dict())
    assert again.state[weight]["exp_avg"].dtype == torch.bfloat16
    assert again.state[weight]["exp_avg_sq"].dtype == torch.bfloat16
    assert torch.equal(again.state[weight]["exp_avg"], optimizer.state[weight]["exp_avg"])


def test_bf16_weights_give_nearly_the_forward_of_fp32_weights_under_autocast(tiny_model_dir):
    """Matmuls read the same bf16 values either way; the embedding rows looked up, and the residual stream
    they start, differ by bf16's rounding (measured: 0.6% of the logits' norm on the tiny model)."""
    from transformers import AutoModelForCausalLM

    fp32 = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    compact = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    originals = {name: p.detach().clone() for name, p in compact.named_parameters()}
    residuals = store_trained_weights_in(compact, torch.bfloat16)
    embedding = compact.get_input_embeddings().weight
    assert embedding.dtype == torch.bfloat16 and embedding in residuals  # tied with the output layer
    assert all(p.dtype == torch.float32 for n, p in compact.named_parameters() if "norm" in n)
    for name, param in compact.named_parameters():
        if param in residuals:  # weight + residual is the fp32 weight to ~17 significant bits
            exact = param.float() + residuals[param].float()
            torch.testing.assert_close(exact, originals[name], rtol=2**-15, atol=0)
    ids = torch.randint(3, fp32.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        expected, got = fp32(input_ids=ids).logits, compact(input_ids=ids).logits
        assert compact.get_input_embeddings()(ids).dtype == torch.bfloat16  # the residual stream is bf16
    got, expected = got.detach().float(), expected.detach().float()
    assert float((got - expected).norm() / expected.norm()) < 2**-6  # bf16 logits are exact to 2^-8 each


def test_auto_picks_bf16_state_only_for_whole_weights_in_bf16_on_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resolve_optimizer("auto", True, torch.bfloat16) == "adamw_bf16"
    assert resolve_optimizer("auto", False, torch.bfloat16) == "adamw"
    assert resolve_optimizer("auto", True, torch.float32) == "adamw"
    assert resolve_optimizer("adamw", True, torch.bfloat16) == "adamw"
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert resolve_optimizer("auto", True, torch.bfloat16) == "adamw"
    # The methods that train the model's own weights: test_methods.py checks the trait against what each does.
    assert get_method("full").trains_base_weights and get_method("freeze").trains_base_weights
    assert not get_method("lora").trains_base_weights


def test_full_fine_tuning_with_bf16_state_resumes_exactly_and_saves_fp32(tmp_path, tiny_model_dir):
    overrides = ["method.name=full", "training.dtype=bf16", "training.optimizer=adamw_bf16",
                 "training.learning_rate=0.001", "training.lr_scheduler=constant", "training.warmup_ratio=0"]
    straight = make_project(tmp_path / "a", tiny_model_dir)
    _, result = run_in_process(straight, *overrides, "training.max_steps=6")
    losses = [m["loss"] for m in read_metrics(tmp_path / "a" / "run") if "loss" in m]
    assert result["state"].step == 6 and losses[-1] < losses[0]
    checkpoint = next((tmp_path / "a" / "run" / "checkpoints").glob("step-*"))
    state = torch.load(checkpoint / "optimizer.pt", weights_only=True)["state"]
    assert {t.dtype for s in state.values() for k, t in s.items() if k.startswith("exp_")} == {torch.bfloat16}
    assert {s["compensation"].dtype for s in state.values() if "compensation" in s} == {torch.bfloat16}

    resumed = make_project(tmp_path / "b", tiny_model_dir, extra="  save_every: 3\n")
    run_in_process(resumed, *overrides, "training.max_steps=3")
    run_in_process(resumed, *overrides, "training.max_steps=6", "training.resume=auto")
    a = load_file(str(tmp_path / "a" / "run" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "run" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and {t.dtype for t in a.values()} == {torch.float32}
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_full_fine_tuning_reports_the_optimizer_it_used(tmp_path, tiny_model_dir, dtype):
    config = make_project(tmp_path, tiny_model_dir)
    run_in_process(config, "method.name=full", f"training.dtype={dtype}", "training.max_steps=2")
    summary = (tmp_path / "run" / "summary.json").read_text()
    assert f'"optimizer": "{"adamw_bf16" if dtype == "bf16" else "adamw"}"' in summary
