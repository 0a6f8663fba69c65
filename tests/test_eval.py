"""`tunekit eval` end to end on a tiny trained run: candidates, gates, decision, exit codes, report files,
and every bad config caught before a model loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from train_helpers import make_project, tunekit
from tunekit.eval.decision import decide, gate_outcomes
from tunekit.gates import parse_gate
from tunekit.results import CandidateResult, Comparison, Decision
from tunekit.runfolder import EvalFolder


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir) -> Path:
    root = tmp_path_factory.mktemp("eval_project")
    config = make_project(root, tiny_model_dir, extra="eval:\n  max_new_tokens: 4\n  bootstrap_samples: 200\n"
                                                        "  latency: {samples: 5}\n")
    proc = tunekit("train", str(config))
    assert proc.returncode == 0, proc.stderr
    return config


def _eval(config: Path, *overrides: str):
    return tunekit("eval", str(config), *overrides)


def test_eval_writes_report_predictions_and_decision(trained, tmp_path):
    proc = _eval(trained, 'eval.gates=["exact_match >= 0.0", "latency_p95_ms <= 600000"]')
    assert proc.returncode == 0, proc.stderr
    out = trained.parent / "run" / "eval"
    result = json.loads((out / "eval.json").read_text())
    typed = EvalFolder(out).result()  # what every later stage reads: the file round-trips exactly
    typed.write(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == (out / "eval.json").read_bytes()
    assert typed.higher_is_better["exact_match"] and not typed.higher_is_better["latency_p95_ms"]
    assert (typed.disagreements.finetune, typed.disagreements.baseline) in {("finetuned", "zero_shot"),
                                                                            ("finetuned", "few_shot")}
    names = [c["name"] for c in result["candidates"]]
    assert names == ["zero_shot", "few_shot", "finetuned"]
    # Every gate passes for the zero-shot baseline, so fine-tuning is not needed: the cheapest wins.
    assert result["decision"]["verdict"] == "use_prompting"
    assert result["decision"]["candidate"] == "zero_shot"
    assert "Don't fine-tune" in proc.stdout
    for c in result["candidates"]:
        assert c["passed_all"] is True
        assert {"exact_match", "latency_p50_ms", "latency_p95_ms", "cost_per_1k"} <= set(c["metrics"])
        # Latency comes from the per-request probe: 5 rows, the same rows for every candidate.
        assert len(c["latencies_ms"]) == 5
        assert c["latency_probe"]["rows"] == result["candidates"][0]["latency_probe"]["rows"]
    assert {(c["a"], c["b"]) for c in result["comparisons"]} == {("finetuned", "zero_shot"), ("finetuned", "few_shot")}
    for c in result["comparisons"]:
        assert c["low"] <= c["diff"] <= c["high"]
    assert len(result["test_split"]["sha256"]) == 64 and result["chat_template_sha256"]
    rows = [json.loads(x) for x in (out / "predictions" / "finetuned.jsonl").read_text().splitlines()]
    assert len(rows) == result["test_split"]["evaluated"]
    assert {"messages", "reference", "prediction", "correct", "latency_ms"} <= set(rows[0])
    probed = {i for i, row in enumerate(rows) if row["latency_ms"] is not None}
    assert probed == set(result["candidates"][-1]["latency_probe"]["rows"])
    few = [json.loads(x) for x in (out / "predictions" / "few_shot.jsonl").read_text().splitlines()]
    assert len(few[0]["messages"]) == len(rows[0]["messages"]) + 2 * 3  # three shots, user + assistant each
    assert (out / "report.md").read_text().strip() and (out / "report.html").is_file()


def test_few_shot_examples_come_from_train_never_test(trained):
    run = trained.parent / "run"
    train = {json.loads(x)["messages"][0]["content"] for x in (run / "data" / "train.jsonl").read_text().splitlines()}
    test = {json.loads(x)["messages"][0]["content"] for x in (run / "data" / "test.jsonl").read_text().splitlines()}
    assert _eval(trained, "eval.candidates=[few_shot]").returncode == 0
    row = json.loads((run / "eval" / "predictions" / "few_shot.jsonl").read_text().splitlines()[0])
    shots = [m["content"] for m in row["messages"][:-1] if m["role"] == "user"]
    assert shots and all(s in train and s not in test for s in shots)


def test_nothing_meets_exits_1_with_gaps(trained):
    proc = _eval(trained, 'eval.gates=["exact_match >= 1.5"]', "eval.candidates=[zero_shot,finetuned]")
    assert proc.returncode == 1, proc.stderr
    result = json.loads((trained.parent / "run" / "eval" / "eval.json").read_text())
    assert result["decision"]["verdict"] == "nothing_meets"
    gaps = result["decision"]["gaps"]["exact_match >= 1.5"]
    assert set(gaps) == {"zero_shot", "finetuned"} and all(g > 0 for g in gaps.values())


def test_rag_without_an_index_is_skipped_not_faked(trained):
    proc = _eval(trained, "eval.candidates=[zero_shot,rag]")
    assert proc.returncode == 0, proc.stderr
    assert "skipping rag" in proc.stderr
    rag = json.loads((trained.parent / "run" / "eval" / "eval.json").read_text())["candidates"][1]
    assert rag["status"] == "skipped" and "index" in rag["skip_reason"] and rag["metrics"] == {}


@pytest.mark.parametrize(("overrides", "message"), [
    (["eval.metrics=[exact_match,acuracy]"], "acuracy"),
    (['eval.gates=["rouge_l >= 0.5"]'], "not computed"),
    (["eval.candidates=[zero_shot,gpt5]"], "unknown candidate 'gpt5'"),
    (["eval.metrics=[accuracy]", "eval.labels=[red,green]"], "not in eval.labels"),
    (["eval.primary_metric=token_f1"], "primary metric"),
    (["eval.json_schema=missing.json", "eval.metrics=[json_schema]"], "does not exist"),
])
def test_bad_configs_fail_before_any_model_loads(trained, overrides, message):
    proc = _eval(trained, *overrides)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and "evaluating" not in proc.stderr


def test_missing_or_empty_test_split_is_a_user_error(trained, tmp_path):
    project = tmp_path / "p"
    shutil.copytree(trained.parent, project, ignore=shutil.ignore_patterns("eval", "checkpoints"))
    config = project / "tunekit.yaml"
    config.write_text(config.read_text().replace(str(trained.parent / "run"), str(project / "run")))
    (project / "run" / "data" / "test.jsonl").write_text("")
    proc = _eval(config)
    assert proc.returncode == 2 and "test split is empty" in proc.stderr
    (project / "run" / "data" / "test.jsonl").unlink()
    proc = _eval(config)
    assert proc.returncode == 2 and "no test split" in proc.stderr and "data prepare" in proc.stderr


def test_changed_template_is_an_error_and_changed_test_split_a_warning(trained, tmp_path):
    project = tmp_path / "p"
    shutil.copytree(trained.parent, project, ignore=shutil.ignore_patterns("checkpoints"))
    config = project / "tunekit.yaml"
    config.write_text(config.read_text().replace(str(trained.parent / "run"), str(project / "run")))
    run = project / "run"
    assert _eval(config, "eval.candidates=[zero_shot]").returncode == 0
    test = run / "data" / "test.jsonl"
    test.write_text("".join(test.read_text().splitlines(keepends=True)[:-1]))
    proc = _eval(config, "eval.candidates=[zero_shot]")
    assert proc.returncode == 0 and "test split differs" in proc.stderr
    tok_config = run / "tokenizer" / "tokenizer_config.json"
    data = json.loads(tok_config.read_text())
    template = run / "tokenizer" / "chat_template.jinja"
    if template.is_file():
        template.write_text(template.read_text() + "{# edited #}")
    else:
        data["chat_template"] += "{# edited #}"
        tok_config.write_text(json.dumps(data))
    proc = _eval(config)
    assert proc.returncode == 2 and "chat template differs" in proc.stderr


def _candidate(name: str, kind: str, accuracy: float) -> dict:
    return {"name": name, "kind": kind, "accuracy": accuracy}


def _decide(gates: list[str], *candidates: dict, comparisons: list | None = None) -> Decision:
    parsed = [parse_gate(g) for g in gates]
    ran = []
    for c in candidates:
        metrics = {"accuracy": c["accuracy"], "latency_p95_ms": 100.0}
        ran.append(CandidateResult(name=c["name"], kind=c["kind"], model="m", status="ok", metrics=metrics,
                                   gate_results=gate_outcomes(parsed, metrics)))
    compared = [Comparison(**{"confidence": 0.95, "samples": 1000, "higher_is_better": True, **c})
                for c in comparisons or []]
    return decide(ran, parsed, compared, "accuracy", True)


def test_decision_prefers_the_cheapest_candidate_that_meets_every_gate():
    cands = (_candidate("zero_shot", "zero_shot", 0.5), _candidate("few_shot", "few_shot", 0.9),
             _candidate("finetuned", "finetuned", 0.95))
    decision = _decide(["accuracy >= 0.85"], *cands)
    assert (decision.verdict, decision.candidate) == ("use_prompting", "few_shot")
    decision = _decide(["accuracy >= 0.92"], *cands, comparisons=[
        {"a": "finetuned", "b": "few_shot", "metric": "accuracy", "diff": 0.05, "low": 0.01, "high": 0.09}])
    assert (decision.verdict, decision.candidate) == ("ship_finetune", "finetuned")
    assert "+0.050" in decision.headline
    rag = _candidate("rag", "rag", 0.93)
    assert _decide(["accuracy >= 0.92"], cands[0], rag, cands[2]).verdict == "use_rag"


def test_decision_without_gates_needs_a_confident_win():
    cands = (_candidate("zero_shot", "zero_shot", 0.5), _candidate("finetuned", "finetuned", 0.6))
    unsure = [{"a": "finetuned", "b": "zero_shot", "metric": "accuracy", "diff": 0.1, "low": -0.02, "high": 0.2,
               "higher_is_better": True}]
    assert _decide([], *cands, comparisons=unsure).verdict == "use_prompting"
    sure = [{**unsure[0], "low": 0.03}]
    assert _decide([], *cands, comparisons=sure).verdict == "ship_finetune"
    # For a lower-is-better metric the interval must lie below zero instead.
    lower = [{**unsure[0], "diff": -0.1, "low": -0.2, "high": -0.03, "higher_is_better": False}]
    assert _decide([], *cands, comparisons=lower).verdict == "ship_finetune"
    assert _decide([], *cands, comparisons=[{**lower[0], "high": 0.01}]).verdict == "use_prompting"
