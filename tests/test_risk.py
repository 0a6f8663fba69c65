"""`tunekit risk RUN`: the model card and checklist on a run folder made by the real data writers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from cli_helpers import run_in_process
from result_helpers import sample_result
from tunekit.config import dump_config, load_config
from tunekit.results import PredictionRow, write_predictions
from tunekit.runfolder import EvalFolder

TICKETS = Path(__file__).resolve().parents[1] / "examples" / "support_tickets" / "tickets.jsonl"
SAFE_RUN = {
    "governance": {"owner": "Support ML team (ml-support@example.com)", "on_call": "#support-ml-oncall",
                   "slices": ["product", "priority"]},
    "guard": {"enabled": True, "input": ["pii", "injection"], "output": ["json_schema", "max_length"]},
    "serve": {"api_keys_file": "api_keys.txt"},  # written next to the config by `configure`
}


def write_config(folder: Path, model_dir: Path, run: Path, **sections: dict) -> Path:
    raw = {
        "project": "support-triage", "run_dir": str(run), "model": {"name": str(model_dir), "max_seq_len": 384},
        "data": {"files": ["tickets.jsonl"], "system_prompt": "Triage the ticket. Reply with JSON only.",
                 "user_template": "Ticket: {input}", "pii": "redact"},
        "eval": {"label_field": "category", "metrics": ["exact_match"]},
        **sections,
    }
    path = folder / "tunekit.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A run folder after `data prepare` (the real one, with the tiny model's tokenizer) and a training run."""
    from tunekit.cli.data import load_tokenizer_for
    from tunekit.data.prepare import prepare

    folder = tmp_path_factory.mktemp("project")
    rows = TICKETS.read_text(encoding="utf-8").splitlines()[:400]
    leaked = {"input": "Refund me at jane.doe@example.com or call +44 20 7946 0958, charged twice",
              "output": '{"category": "refund", "priority": "high", "product": "ledgerly"}'}
    (folder / "tickets.jsonl").write_text("\n".join([*rows, json.dumps(leaked)]) + "\n", encoding="utf-8")
    run = folder / "run"
    cfg = load_config(write_config(folder, tiny_model_dir, run))
    prepare(cfg, load_tokenizer_for(cfg))
    _fake_training(run, cfg)
    return run


def _fake_training(run: Path, cfg) -> None:
    """What `tunekit train` leaves behind: safetensors adapter, pickled optimizer state, manifest and config."""
    import torch
    from safetensors.torch import save_file

    (run / "adapter").mkdir()
    save_file({"lora_A": torch.zeros(2, 2)}, run / "adapter" / "adapter_model.safetensors")
    (run / "checkpoints" / "step-000010").mkdir(parents=True)
    torch.save({"state": {}}, run / "checkpoints" / "step-000010" / "optimizer.pt")
    splits = json.loads((run / "data" / "splits.json").read_text())
    manifest = {"seed": 42, "data": splits, "config": dump_config(cfg), "chat_template_sha256": "ab" * 32,
                "base_model": {"name": "smollm2-135m-instruct", "path": cfg.model.name}, "method": "lora",
                "dtype": "bf16", "libraries": {"tunekit": "0.1.0"}, "weights_sha256": "cd" * 32}
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "config.yaml").write_text(dump_config(cfg))


def add_eval(run: Path, verdict: str = "ship_finetune", wrong_product: str | None = None) -> None:
    """An eval result and the fine-tune's per-row predictions, written by the typed writers eval uses; rows of
    `wrong_product` are answered wrong."""
    test = [json.loads(line) for line in (run / "data" / "test.jsonl").read_text().splitlines()]
    rows = []
    for i, row in enumerate(test):
        reference = row["messages"][-1]["content"]
        wrong = json.loads(reference)["product"] == wrong_product or i % 10 == 0
        rows.append(PredictionRow(
            index=i, messages=row["messages"][:-1], reference=reference,
            prediction='{"category": "other"}' if wrong else reference, correct=not wrong, score=float(not wrong),
            latency_ms=40.0, meta=row.get("meta", {}),
        ))
    folder = EvalFolder(run / "eval")
    write_predictions(folder.predictions_path("finetuned"), rows)
    decision = {"verdict": verdict, "candidate": "finetuned" if verdict == "ship_finetune" else "few_shot",
                "headline": "Ship the fine-tune: finetuned meets every gate and no baseline does.", "reasons": []}
    sample_result(created="2026-11-29T07:00:00Z", decision=decision).write(folder.result_path)


@pytest.fixture()
def run(prepared: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(prepared, copy)
    return copy


def configure(run: Path, tiny_model_dir: Path, **sections: dict) -> Path:
    keys = run.parent / "api_keys.txt"
    keys.write_text("# for SAFE_RUN\na-long-random-key-for-tests\n", encoding="utf-8")
    keys.chmod(0o600)
    return write_config(run.parent, tiny_model_dir, run, **sections)


def card_of(run: Path) -> str:
    return (run / "model_card.md").read_text(encoding="utf-8")


def test_a_fresh_run_flags_the_missing_owner_first(run, monkeypatch, capsys):
    code, output = run_in_process(monkeypatch, capsys, "risk", run)
    assert code == 1 and "first: A named owner" in output
    card = card_of(run)
    risks = card.split("## Risks")[1].split("## Checklist")[0]
    assert risks.strip().startswith("1. ✗ **A named owner**")
    assert "Not ready" in card and "not evaluated yet" in card.lower() and "Not evaluated yet." in card
    assert "email in 1 examples" in card and "data.pii: redact" in card  # from the real data_report.json
    assert "smollm2-135m-instruct: Apache-2.0" in card
    assert "1 pickled training-state file" in card  # the optimizer checkpoint, not shipped
    splits = json.loads((run / "data" / "splits.json").read_text())
    assert splits["splits"]["test"]["sha256"] in card


def test_a_governed_evaluated_run_passes(run, tiny_model_dir, monkeypatch, capsys):
    add_eval(run)
    config = configure(run, tiny_model_dir, **SAFE_RUN)
    code, output = run_in_process(monkeypatch, capsys, "risk", run, "--config", config, "--out", run / "card.md")
    card = (run / "card.md").read_text()
    assert code == 0, card
    assert "Ready: 11 of 11 required checks pass" in card and "ready" in output
    assert "### Accuracy of `finetuned` by product" in card and "### Accuracy of `finetuned` by priority" in card
    assert "ship_finetune" in card and "Support ML team" in card


def test_a_weak_slice_fails_the_bias_check(run, tiny_model_dir, monkeypatch, capsys):
    add_eval(run, wrong_product="thermapilot")
    config = configure(run, tiny_model_dir, **SAFE_RUN)
    code, _ = run_in_process(monkeypatch, capsys, "risk", run, "-c", config)
    card = card_of(run)
    assert code == 1
    bias = next(line for line in card.splitlines() if "| Bias |" in line)
    assert bias.startswith("| ✗") and "product=thermapilot 0% on" in bias


def test_security_failures_and_eval_verdicts(run, tiny_model_dir, monkeypatch, capsys):
    add_eval(run, verdict="use_prompting")
    (run / "adapter" / "adapter_model.bin").write_bytes(b"pickle")
    unsafe = {**SAFE_RUN, "serve": {}, "guard": {"enabled": False},
              "model": {"name": str(tiny_model_dir), "trust_remote_code": True}}
    config = configure(run, tiny_model_dir, **unsafe)
    monkeypatch.delenv("TUNEKIT_API_KEYS", raising=False)
    code, _ = run_in_process(monkeypatch, capsys, "risk", run, "-c", config)
    card = card_of(run)
    assert code == 1
    failed = {line.split(" | ")[2] for line in card.splitlines() if line.startswith("| ✗")}
    assert {"API authentication on", "No remote code", "Weights in safetensors only (no pickle)", "Guardrails on",
            "Evaluated against prompting and RAG: decision to ship"} <= failed
    assert "adapter/adapter_model.bin" in card
    monkeypatch.setenv("TUNEKIT_API_KEYS", "key-from-the-environment")
    run_in_process(monkeypatch, capsys, "risk", run, "-c", config)
    assert "| ✓ | Security | API authentication on" in card_of(run)


def test_an_unreadable_eval_result_is_not_a_pass(run, tiny_model_dir, monkeypatch, capsys):
    add_eval(run)
    result = EvalFolder(run / "eval").result_path
    result.write_text(result.read_text().replace('"verdict": "ship_finetune"', '"verdict": "ship_it"'))
    code, _ = run_in_process(monkeypatch, capsys, "risk", run, "-c", configure(run, tiny_model_dir, **SAFE_RUN))
    card = card_of(run)
    assert code == 1
    evaluation = next(line for line in card.splitlines() if "| Evaluation |" in line)
    assert evaluation.startswith("| ?") and "decision.verdict" in evaluation and "tunekit eval" in evaluation


def test_base_model_licence_unknown_or_from_readme(run, tiny_model_dir, tmp_path, monkeypatch, capsys):
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["base_model"] = {"name": "acme-chat-1b", "path": str(tmp_path / "acme")}
    (run / "manifest.json").write_text(json.dumps(manifest))
    config = configure(run, tiny_model_dir)
    run_in_process(monkeypatch, capsys, "risk", run, "-c", config)
    assert "acme-chat-1b: unknown: fill governance.base_model_license" in card_of(run)
    (tmp_path / "acme").mkdir()
    (tmp_path / "acme" / "README.md").write_text("---\nlicense: mit\nlibrary_name: transformers\n---\n# Acme\n")
    run_in_process(monkeypatch, capsys, "risk", run, "-c", config)
    assert "| ✓ | Governance | Base model licence known | yes | acme-chat-1b: mit |" in card_of(run)


def test_risk_user_errors_exit_2(tmp_path, monkeypatch, capsys):
    code, output = run_in_process(monkeypatch, capsys, "risk", tmp_path / "missing")
    assert code == 2 and "run folder does not exist" in output
    (tmp_path / "empty").mkdir()
    code, output = run_in_process(monkeypatch, capsys, "risk", tmp_path / "empty")
    assert code == 2 and "no config.yaml" in output and "Traceback" not in output
