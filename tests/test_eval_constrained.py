"""eval.constrained: one output constraint for every candidate (declared, or inferred from train), the rate each
candidate reaches without it, and the calibration of label answers (ECE and its histogram).

The tiny random model writes garbage on its own, so a constrained candidate's json_valid of 1.0 next to a low
rate without the constraint is the engine's doing, not the model's."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from train_helpers import COLORS, tunekit
from tunekit.config import load_config, validate_config
from tunekit.data.records import Example
from tunekit.errors import ConfigError
from tunekit.eval.calibration import calibration, label_confidence
from tunekit.eval.candidates import CandidateSpec
from tunekit.eval.constraint import decide_constraint
from tunekit.eval.schema_infer import infer_object_schema
from tunekit.runfolder import EvalFolder

SHADES = ["light", "dark"]
# 48 new tokens: room for the JSON grammar's optional whitespace, which the random model likes to write.
FAST_EVAL = ("eval:\n  candidates: [zero_shot, few_shot]\n  few_shot_k: 1\n  max_new_tokens: 48\n"
             "  latency: {samples: 2}\n  unconstrained_samples: 4\n")


def _answered(*answers: str) -> list[Example]:
    return [Example(messages=[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": a}])
            for i, a in enumerate(answers)]


def _cfg(tmp_path: Path, **eval_keys: object):
    return validate_config({"eval": eval_keys}, base_dir=tmp_path, source="test")


# --- deciding the constraint: declared, inferred, none ------------------------------------------------------------

def test_json_answers_give_a_closed_schema_with_the_labels_as_an_enum(tmp_path):
    answers = [json.dumps({"category": c, "priority": p, "note": n, "count": k})
               for c, p, n, k in [("bug", "low", "crashes on start", 1), ("billing", "high", "charged twice", 2),
                                  ("bug", "high", "a longer note about the screen going blank", 3),
                                  ("how_to", "low", "where is it", 4)]]
    train = _answered(*answers, json.dumps({"category": "bug", "priority": "low", "count": 5}))
    plan = decide_constraint(_cfg(tmp_path, label_field="category", metrics=["accuracy"]), train, None)
    assert (plan.mode, plan.kind, plan.validity_metric) == ("auto", "json_schema", "json_valid")
    assert plan.source == "inferred from 5 train answers (JSON objects, 'category' one of 3 labels)"
    schema = plan.value
    assert list(schema["properties"]) == ["category", "priority", "note", "count"]  # the answers' own order
    assert schema["required"] == ["category", "priority", "count"]  # "note" is missing from one answer
    assert schema["additionalProperties"] is False
    props = schema["properties"]
    assert props["category"] == {"enum": ["billing", "bug", "how_to"]}
    assert props["priority"] == {"enum": ["high", "low"]}  # 2 values in 5 answers: label-like
    assert props["note"] == {"type": "string", "maxLength": 2 * len("a longer note about the screen going blank")}
    assert props["count"] == {"type": "integer"}
    assert plan.constraint.describe() == "json schema"


def test_inferred_schema_types_lists_nested_objects_and_mixed_values():
    schema = infer_object_schema([{"tags": ["a", "b"], "meta": {"ok": True}, "score": 1},
                                  {"tags": [], "meta": {"ok": False, "n": None}, "score": 2.5}])
    props = schema["properties"]
    assert props["tags"] == {"type": "array", "maxItems": 4, "items": {"type": "string", "maxLength": 32}}
    assert props["meta"]["properties"] == {"ok": {"type": "boolean"}, "n": {"type": "null"}}
    assert props["meta"]["required"] == ["ok"]
    assert props["score"] == {"type": "number"}  # 1 and 2.5: a number, not an integer


def test_plain_labels_give_a_choice_and_free_text_gives_none(tmp_path):
    labels = _answered(*(COLORS * 5))
    plan = decide_constraint(_cfg(tmp_path), labels, None)
    assert (plan.kind, plan.value, plan.validity_metric) == ("choice", tuple(sorted(COLORS)), "label_valid")
    assert plan.source == "the 4 labels of 20 train answers"
    prose = _answered(*(f"Answer number {i} says something new." for i in range(20)))
    plan = decide_constraint(_cfg(tmp_path), prose, None)
    assert (plan.kind, plan.source) == (None, "the train answers are free text, neither JSON objects nor labels")
    mixed = decide_constraint(_cfg(tmp_path), _answered('{"a": 1}', "not json"), None)
    assert mixed.kind is None and "1 of 2 train answers are not JSON objects" in mixed.source


def test_a_declared_schema_wins_and_false_never_constrains(tmp_path):
    declared = {"type": "object", "properties": {"color": {"enum": ["red"]}}, "required": ["color"]}
    (tmp_path / "guard.schema.json").write_text(json.dumps(declared))
    train = _answered(*(json.dumps({"color": c}) for c in COLORS))
    cfg = validate_config({"guard": {"json_schema": "guard.schema.json"}}, base_dir=tmp_path, source="test")
    plan = decide_constraint(cfg, train, None)
    assert (plan.kind, plan.value) == ("json_schema", declared)
    assert plan.source == "the schema declared in guard.json_schema (guard.schema.json)"
    other = {"type": "object"}
    cfg.eval.json_schema = "eval.schema.json"
    assert decide_constraint(cfg, train, other).value == other  # the json_schema metric's schema comes first
    plan = decide_constraint(_cfg(tmp_path, constrained=False), train, None)
    assert (plan.mode, plan.kind, plan.source) == ("false", None, "eval.constrained is false")


def test_constrained_true_with_nothing_to_infer_is_a_config_error(tmp_path):
    prose = _answered(*(f"Answer number {i} says something new." for i in range(20)))
    with pytest.raises(ConfigError) as raised:
        decide_constraint(_cfg(tmp_path, constrained=True), prose, None)
    assert raised.value.message == ("eval.constrained is true, but no constraint can be decided: the train answers "
                                    "are free text, neither JSON objects nor labels")
    assert raised.value.where == "eval.constrained" and "eval.json_schema" in raised.value.fix


@pytest.mark.parametrize(("value", "expected"), [("auto", "auto"), ("true", True), ("False", False), (True, True)])
def test_constrained_reads_auto_true_false(value, expected):
    assert load_config(None, [f"eval.constrained={value}"]).eval.constrained == expected


def test_constrained_refuses_anything_else_naming_the_values():
    with pytest.raises(ConfigError, match=r"eval.constrained: must be auto, true or false .*\(got 'sometimes'\)"):
        load_config(None, ["eval.constrained=sometimes"])


def test_rag_gets_the_citation_field_or_stays_unconstrained_saying_why(tmp_path):
    train = _answered(*(json.dumps({"color": c}) for c in COLORS * 2))
    rag = CandidateSpec("rag", "rag", "m")
    cfg = validate_config({"rag": {"citations": "json_field", "top_k": 3}}, base_dir=tmp_path, source="test")
    plan = decide_constraint(cfg, train, None)
    assert plan.for_candidate(CandidateSpec("few_shot", "few_shot", "m"), cfg) == (plan.constraint, None)
    constraint, note = plan.for_candidate(rag, cfg)
    assert constraint.value["required"] == ["color", "sources"]
    assert constraint.value["properties"]["sources"] == {
        "type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 3}, "maxItems": 3}
    assert note == "the same schema plus the citation field 'sources'"
    cfg.rag.citations = "inline"
    assert plan.for_candidate(rag, cfg) == (None, "unconstrained: rag.citations is inline, so grounded answers "
                                                  "carry [n] markers in the text, which the constraint does not allow")
    cfg.rag.citations = "none"
    assert plan.for_candidate(rag, cfg) == (plan.constraint, None)


# --- calibration: a label's probability, and ECE ------------------------------------------------------------------

def _tokens(*pairs: tuple[str, float]) -> list[SimpleNamespace]:
    return [SimpleNamespace(token=token, logprob=logprob) for token, logprob in pairs]


def test_a_labels_confidence_is_the_product_of_the_tokens_that_spell_it():
    text = '{"color": "green", "shade": "dark"}'
    tokens = _tokens(('{"', -0.1), ("color", -0.2), ('":', -0.1), (' "', -0.3), ("gr", -0.5), ("een", -0.25),
                     ('",', -0.1), (' "shade": "dark"}', -2.0), ("<|im_end|>", -0.1))
    assert label_confidence(text, tokens, "color") == pytest.approx(math.exp(-0.75))
    # A token that spells the label's first letters and its opening quote chose the label too.
    merged = _tokens(('{"color": ', -0.1), ('"gr', -0.4), ('een"', -0.2), (', "shade": "dark"}', -1.0))
    assert label_confidence(text, merged, "color") == pytest.approx(math.exp(-0.6))
    assert label_confidence("green", _tokens(("green", -0.05), ("<|im_end|>", -0.01)), None) == \
        pytest.approx(math.exp(-0.05))
    assert label_confidence("green", _tokens(("gre", -0.05), ("yn", -0.1)), None) is None  # tokens spell otherwise
    assert label_confidence('{"shade": "dark"}', _tokens(('{"shade": "dark"}', -1.0)), "color") is None
    assert label_confidence("green", None, None) is None


def test_ece_of_a_hand_made_example():
    # Bins of width 0.1: 0.95 and 0.97 (one right), 0.15 (wrong), 0.55 and 0.58 (both right); one row has no label.
    cal = calibration([0.95, 0.97, 0.15, 0.55, 0.58, None], [True, False, False, True, True, False])
    expected = 2 / 5 * abs(0.5 - 0.96) + 1 / 5 * abs(0.0 - 0.15) + 2 / 5 * abs(1.0 - 0.565)
    assert cal.ece == pytest.approx(expected, abs=1e-6) and cal.ece == pytest.approx(0.388, abs=1e-6)
    assert (cal.rows, cal.missing, cal.bins) == (5, 1, 10)
    assert cal.correct == [0, 0, 0, 0, 0, 2, 0, 0, 0, 1] and cal.wrong == [0, 1, 0, 0, 0, 0, 0, 0, 0, 1]
    assert cal.accuracy == pytest.approx(0.6) and cal.confidence_mean == pytest.approx(0.64)
    assert calibration([1.0, 0.0], [True, False]).ece == 0.0  # sure and right, unsure and wrong: calibrated
    assert calibration([None], [True]) is None


# --- end to end on the tiny random model --------------------------------------------------------------------------

def _json_rows(n: int) -> list[dict]:
    rng = random.Random(1)
    return [{"input": f"item {i}: paint it {c} and make it {s} " + " ".join(rng.sample(["now", "please", "soon"], 2)),
             "output": json.dumps({"color": c, "shade": s})}
            for i, (c, s) in enumerate((rng.choice(COLORS), rng.choice(SHADES)) for _ in range(n))]


def _label_rows(n: int) -> list[dict]:
    rng = random.Random(2)
    return [{"text": f"ticket {i} about the {c} item " + rng.choice(["now", "please"]), "label": c}
            for i, c in enumerate(rng.choice(COLORS) for _ in range(n))]


def _project(root: Path, model_dir: Path, rows: list[dict], extra: str) -> Path:
    """A prepared project (no training: the baselines are the candidates)."""
    from tunekit.data.prepare import prepare
    from tunekit.models.load import load_tokenizer
    from tunekit.models.resolve import resolve_model

    root.mkdir(parents=True)
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = root / "tunekit.yaml"
    config.write_text(f"run_dir: {root / 'run'}\nmodel:\n  name: {model_dir}\n  max_seq_len: 128\n"
                      "data:\n  files: [data.jsonl]\n  dedupe:\n    near: false\n" + extra, encoding="utf-8")
    cfg = load_config(config)
    prepare(cfg, load_tokenizer(resolve_model(cfg.model.name)))
    return config


def _evaluate(config: Path, *overrides: str):
    """`tunekit eval` in this process: the result, with the report written beside it."""
    from tunekit.eval.runner import check_eval, run_eval
    from tunekit.report import write_report

    plan = check_eval(load_config(config, list(overrides)))
    result = run_eval(plan, say=lambda *_: None)
    write_report(result, plan.folder)
    return result, plan.folder


@pytest.fixture(scope="module")
def json_project(tmp_path_factory, tiny_model_dir) -> Path:
    extra = FAST_EVAL + "  metrics: [accuracy, json_valid]\n  label_field: color\n"
    return _project(tmp_path_factory.mktemp("constrained") / "json", tiny_model_dir, _json_rows(60), extra)


def test_constrained_candidates_write_valid_json_the_model_alone_does_not(json_project):
    result, folder = _evaluate(json_project)
    setting = result.constraint
    assert (setting.mode, setting.kind, setting.description) == ("auto", "json_schema", "json schema")
    assert setting.value["properties"]["color"] == {"enum": sorted(COLORS)}
    assert setting.value["properties"]["shade"] == {"enum": SHADES[::-1]}
    assert len(setting.unconstrained_rows) == 4
    for candidate in result.ran:
        assert candidate.metrics["json_valid"] == 1.0, candidate.name  # every row, by construction
        out = candidate.structured
        assert (out.constraint, out.metric, out.constrained, out.rows) == ("json schema", "json_valid", 1.0, 4)
        assert out.unconstrained <= 0.5 and out.seconds > 0  # the random model alone: mostly not JSON
        cal = candidate.calibration
        assert cal.rows == result.test_split.evaluated and cal.missing == 0
        assert sum(cal.correct) == round(candidate.metrics["accuracy"] * cal.rows)
        assert 0 < cal.confidence_mean < 1 and candidate.metrics["ece"] == cal.ece
        assert cal.ece >= abs(cal.accuracy - cal.confidence_mean) - 1e-6  # at least the gap over all rows
    rows = folder.predictions("zero_shot")
    assert all(0 < row.confidence <= 1 for row in rows)
    assert sorted(i for i, row in enumerate(rows) if row.unconstrained_prediction is not None) == \
        setting.unconstrained_rows
    md = folder.report_md.read_text(encoding="utf-8")
    assert "## Structured outputs" in md and "## Calibration" in md
    zero = result.ran[0].structured
    assert (f"| zero_shot | json schema | 1.000 | {zero.unconstrained:.3f} | 4 | {zero.seconds:,.1f} |") in md
    assert "json_valid with the constraint | json_valid without it" in md
    assert (folder.plots_dir / "confidence.png").is_file()
    assert "<h2>Structured outputs</h2>" in folder.report_html.read_text(encoding="utf-8")


def test_constrained_false_leaves_the_random_model_to_itself(json_project):
    result, folder = _evaluate(json_project, "eval.constrained=false", "eval.candidates=[zero_shot]")
    assert (result.constraint.mode, result.constraint.kind) == ("false", None)
    zero = result.ran[0]
    assert zero.structured is None and zero.metrics["json_valid"] <= 0.5
    md = folder.report_md.read_text(encoding="utf-8")
    assert "## Structured outputs" not in md
    assert "output constraint: `eval.constrained false: none (eval.constrained is false)`" in md


def test_a_schema_the_engine_cannot_enforce_leaves_auto_unconstrained_and_fails_true(json_project):
    schema = {"type": "object", "properties": {"color": {"type": "string", "pattern": "(?=r)red"}}}
    (json_project.parent / "lookahead.schema.json").write_text(json.dumps(schema))
    args = ("eval.json_schema=lookahead.schema.json", "eval.candidates=[zero_shot]", "eval.max_new_tokens=4")
    result, _ = _evaluate(json_project, *args)
    assert (result.constraint.kind, result.constraint.value) == ("json_schema", schema)
    out = result.ran[0].structured
    assert (out.constraint, out.metric, out.unconstrained) == (None, None, None)
    assert out.note.startswith("unconstrained: the engine cannot compile the constraint") and "look-around" in out.note
    with pytest.raises(ConfigError, match="the engine cannot decode under the constraint") as raised:
        _evaluate(json_project, *args, "eval.constrained=true")
    assert raised.value.where == "eval.constrained"


def test_plain_labels_are_decoded_as_a_choice_of_the_train_labels(tmp_path, tiny_model_dir):
    extra = FAST_EVAL.replace("max_new_tokens: 48", "max_new_tokens: 6") + "  metrics: [accuracy]\n"
    config = _project(tmp_path / "labels", tiny_model_dir, _label_rows(60), extra)
    result, folder = _evaluate(config, "eval.candidates=[zero_shot]")
    assert (result.constraint.kind, result.constraint.value) == ("choice", sorted(COLORS))
    zero = result.ran[0]
    assert (zero.structured.metric, zero.structured.constrained) == ("label_valid", 1.0)
    assert zero.structured.unconstrained <= 0.5
    assert {row.prediction for row in folder.predictions("zero_shot")} <= set(COLORS)
    assert zero.calibration.rows == result.test_split.evaluated


def test_constrained_true_without_anything_to_infer_exits_2_before_a_model_loads(tmp_path, tiny_model_dir):
    rows = [{"input": f"question {i}", "output": f"Answer number {i} says something new."} for i in range(40)]
    config = _project(tmp_path / "prose", tiny_model_dir, rows, FAST_EVAL)
    proc = tunekit("eval", str(config), "eval.constrained=true")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "eval.constrained: eval.constrained is true, but no constraint can be decided: the train answers are " \
           "free text, neither JSON objects nor labels" in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr and not EvalFolder(tmp_path / "prose" / "run" / "eval").result_path.exists()
