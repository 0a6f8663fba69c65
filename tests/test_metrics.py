"""Evaluation metrics on hand-computed cases, macro-F1 against scikit-learn, the paired bootstrap,
system metrics, and the registry's errors."""

from __future__ import annotations

import random
import sys

import pytest

from tunekit.errors import UserError
from tunekit.eval import metrics as metrics_pkg
from tunekit.eval.bootstrap import paired_bootstrap
from tunekit.eval.metrics import (
    Metric,
    MetricContext,
    MetricResult,
    available_metrics,
    check_metrics,
    get_metric,
    register,
)
from tunekit.eval.system_metrics import SYSTEM_METRICS, higher_is_better, system_metrics

BUILTIN = {
    "exact_match",
    "accuracy",
    "macro_f1",
    "token_f1",
    "rouge_l",
    "json_valid",
    "json_schema",
    "field_accuracy",
    "refusal_rate",
}
LABELS = ["billing", "refund", "tech"]
SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": ["a", "b"]}},
    "required": ["label"],
}


def score(name: str, predictions: list[str], references: list[str], **ctx) -> MetricResult:
    return get_metric(name).compute(predictions, references, MetricContext(**ctx))


# --- exact match -------------------------------------------------------------------------------------


def test_exact_match_ignores_case_punctuation_and_spacing():
    result = score("exact_match", ["Paris.", "  paris ", "London", ""], ["paris", "Paris", "Paris", ""])
    assert result.per_example == [1.0, 1.0, 0.0, 1.0]
    assert result.value == 0.75


def test_exact_match_compares_json_as_json():
    predictions = [
        '```json\n{"b": 2, "a": "X"}\n```',  # fenced, other key order and case
        '{"a": true}',  # true is not 1
        '{"a": 1.0}',  # 1.0 is 1
        '{"a": 1',  # truncated: the words match, the JSON does not
        '"Paris"',  # a bare JSON string is just an answer
    ]
    references = ['{"a": "x", "b": 2}', '{"a": 1}', '{"a": 1}', '{"a": 1}', "paris"]
    assert score("exact_match", predictions, references).per_example == [1.0, 0.0, 1.0, 0.0, 1.0]


# --- accuracy and macro-F1 ---------------------------------------------------------------------------


def test_accuracy_with_confusion_matrix_and_other_column():
    predictions = ["Billing", "refund.", "banana", ""]
    references = ["billing", "tech", "tech", "refund"]
    result = score("accuracy", predictions, references, labels=LABELS)
    assert result.per_example == [1.0, 0.0, 0.0, 0.0]
    assert result.details["confusion"] == {
        "labels": LABELS,
        "columns": [*LABELS, "<other>"],
        "matrix": [[1, 0, 0, 0], [0, 0, 0, 1], [0, 1, 0, 1]],
    }


def test_accuracy_reads_a_json_field_through_chatter_and_fences():
    predictions = ['Sure! ```json\n{"label": "Refund", "x": 1}\n```', '{"label": "tech"}', "no json here", "{}"]
    references = ['{"label": "refund"}', '{"label": "billing"}', '{"label": "tech"}', '{"label": "tech"}']
    result = score("accuracy", predictions, references, labels=LABELS, label_field="label")
    assert result.per_example == [1.0, 0.0, 0.0, 0.0]
    assert result.details["confusion"]["matrix"][2] == [0, 0, 0, 2]  # tech: missing field and no JSON


def test_accuracy_reference_outside_the_label_set_gets_an_other_row():
    result = score("accuracy", ["spam", "billing"], ["spam", "billing"], labels=LABELS)
    assert result.value == 0.5  # an out-of-set reference is never a hit, even when echoed
    assert result.details["confusion"]["labels"] == [*LABELS, "<other>"]
    assert result.details["confusion"]["matrix"][3] == [0, 0, 0, 1]


def test_accuracy_all_right_and_all_wrong_and_default_label_set():
    assert score("accuracy", ["a", "b"], ["a", "b"]).value == 1.0
    assert score("accuracy", ["b", "a"], ["a", "b"]).value == 0.0
    assert score("accuracy", ["a", "b"], ["a", "b"]).details["confusion"]["labels"] == ["a", "b"]


def test_macro_f1_hand_computed():
    result = score(
        "macro_f1", ["billing", "Refund.", "xx", "billing"], ["billing", "refund", "refund", "tech"], labels=LABELS
    )
    # billing: P 1/2 R 1 -> 2/3; refund: P 1 R 1/2 -> 2/3; tech: never predicted -> 0
    assert result.value == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert result.per_example is None
    assert result.details["per_label_f1"] == {"billing": 0.666667, "refund": 0.666667, "tech": 0.0}


def test_macro_f1_all_right_all_wrong():
    assert score("macro_f1", LABELS, LABELS, labels=LABELS).value == 1.0
    assert score("macro_f1", ["x", "y", "z"], LABELS, labels=LABELS).value == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_macro_f1_matches_sklearn(seed: int):
    sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is the reference implementation")
    rng = random.Random(seed)
    labels = ["alpha", "beta", "gamma", "delta"]
    references = [rng.choice(labels[:3]) for _ in range(200)]  # delta never a reference
    predictions = [rng.choice([*labels, "junk"]) if rng.random() < 0.5 else r for r in references]
    result = score("macro_f1", predictions, references, labels=labels)
    y_pred = [p if p in labels else "<other>" for p in predictions]
    present = sorted((set(references) | set(y_pred)) - {"<other>"})
    expected = sklearn_metrics.f1_score(references, y_pred, labels=present, average="macro", zero_division=0)
    assert result.value == pytest.approx(expected, abs=1e-12)


# --- token F1 and ROUGE-L ----------------------------------------------------------------------------


def test_token_f1_hand_computed():
    assert score("token_f1", ["the cat sat"], ["a cat sat down"]).value == pytest.approx(0.8)  # P 1, R 2/3
    assert score("token_f1", ["x x y"], ["x y y"]).value == pytest.approx(2 / 3)  # repeats count once each
    assert score("token_f1", ["", "", "cat"], ["", "cat", "dog"]).per_example == [1.0, 0.0, 0.0]


def test_rouge_l_hand_computed():
    # LCS "the cat on the mat": 5 of 6 words on both sides
    assert score("rouge_l", ["the cat sat on the mat"], ["the cat lay on the mat"]).value == pytest.approx(5 / 6)
    # LCS "b d": P 2/4, R 2/3 -> F 4/7; order matters, unlike token F1
    assert score("rouge_l", ["a b c d"], ["b d a"]).value == pytest.approx(4 / 7)
    assert score("rouge_l", ["", "", "cat"], ["", "cat", "dog"]).per_example == [1.0, 0.0, 0.0]
    assert score("rouge_l", ["Same words."], ["same WORDS"]).value == 1.0


# --- JSON metrics -----------------------------------------------------------------------------------


def test_json_valid_tolerates_fences_not_chatter():
    predictions = ['{"a": 1}', "```json\n[1, 2]\n```", 'Here is JSON: {"a": 1}', "", '{"a": 1', "null"]
    result = score("json_valid", predictions, [""] * len(predictions))
    assert result.per_example == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]


def test_json_schema_counts_conforming_outputs_and_names_failures():
    predictions = ['{"label": "a"}', '```\n{"label": "b"}\n```', '{"label": "c"}', "{}", "oops"]
    result = score("json_schema", predictions, [""] * 5, json_schema=SCHEMA)
    assert result.per_example == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert result.details["failures"] == {"label: enum": 1, "<root>: required": 1, "not JSON": 1}


def test_json_schema_is_checked_before_any_model_loads():
    with pytest.raises(UserError, match=r"eval\.json_schema"):
        check_metrics(["json_schema"], MetricContext())
    with pytest.raises(UserError, match="not a valid JSON schema"):
        check_metrics(["json_schema"], MetricContext(json_schema={"type": 5}))
    check_metrics(["json_schema"], MetricContext(json_schema=SCHEMA))


def test_field_accuracy_per_field():
    references = ['{"label": "a", "prio": "high"}', '{"label": "b", "prio": "low"}', '{"label": "a"}']
    predictions = ['{"prio": "HIGH", "label": "a"}', '```json\n{"label": "b", "prio": "high"}\n```', "not json"]
    result = score("field_accuracy", predictions, references)
    assert result.details["per_field"] == {"label": pytest.approx(2 / 3, abs=1e-6), "prio": 0.5}
    assert result.value == pytest.approx((2 / 3 + 1 / 2) / 2)
    only_prio = score("field_accuracy", predictions, references, fields=["prio", "missing"])
    assert only_prio.value == 0.5
    assert only_prio.details["fields_in_no_reference"] == ["missing"]


def test_field_accuracy_needs_json_references():
    with pytest.raises(UserError, match="exact_match"):
        score("field_accuracy", ['{"a": 1}'], ["plain text"])


# --- refusals ---------------------------------------------------------------------------------------


def test_refusal_rate():
    outputs = [
        "I can\u2019t do that.",
        "Sorry to hear that. I cannot help with that request.",
        "I'm sorry, but I won't share it.",
        "As an AI, I have no opinion.",
        "Your refund was sent on Monday.",
        "I cannot reproduce the issue; please send logs.",  # "cannot" without a refusing verb
        "",
    ]
    result = score("refusal_rate", outputs, [""] * len(outputs))
    assert result.per_example == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert get_metric("refusal_rate").higher_is_better is False


# --- registry ---------------------------------------------------------------------------------------


def test_every_module_is_one_registered_metric():
    assert set(available_metrics()) >= BUILTIN
    for name in available_metrics():
        metric = get_metric(name)
        assert isinstance(metric, Metric) and metric.name == name
        assert type(metric).__module__ == f"tunekit.eval.metrics.{name}"  # one module per metric


def test_unknown_metric_names_the_allowed_ones():
    with pytest.raises(UserError) as err:
        get_metric("acuracy")
    message = str(err.value)
    assert "did you mean 'accuracy'" in message
    assert all(name in message for name in BUILTIN)


def test_check_metrics_reports_every_problem_at_once():
    with pytest.raises(UserError) as err:
        check_metrics(
            ["exact_match", "rogue_l", "json_schema", "accuracy", "accuracy"], MetricContext(labels=["A", "a"])
        )
    message = str(err.value)
    assert "unknown metric 'rogue_l'" in message and "did you mean 'rouge_l'" in message
    assert "json_schema" in message and "eval.json_schema" in message
    assert "'A' and 'a'" in message
    assert "listed more than once" in message
    check_metrics(["exact_match", "accuracy", "macro_f1"], MetricContext(labels=LABELS))


def test_register_rejects_clashing_and_malformed_names():
    class Impostor(Metric):
        name = "accuracy"

        def compute(self, predictions, references, ctx):
            return MetricResult(0.0, None, {})

    with pytest.raises(ValueError, match="registered twice"):
        register(Impostor)
    Impostor.name = "Not A Name"
    with pytest.raises(ValueError, match="lower-case identifier"):
        register(Impostor)


def test_a_new_module_in_the_package_is_discovered(tmp_path, monkeypatch):
    (tmp_path / "echo_length.py").write_text(
        "from tunekit.eval.metrics import register\n"
        "from tunekit.eval.metrics.base import Metric, mean_result\n\n\n"
        "@register\n"
        "class EchoLength(Metric):\n"
        "    name = 'echo_length'\n\n"
        "    def compute(self, predictions, references, ctx):\n"
        "        return mean_result([float(len(p)) for p in predictions])\n"
    )
    monkeypatch.setattr(metrics_pkg, "__path__", [*metrics_pkg.__path__, str(tmp_path)])
    monkeypatch.setattr(metrics_pkg, "_discovered", False)
    monkeypatch.setattr(metrics_pkg, "_METRICS", dict(metrics_pkg._METRICS))
    try:
        assert "echo_length" in available_metrics()
        assert get_metric("echo_length").compute(["abc"], ["x"], MetricContext()).value == 3.0
    finally:
        sys.modules.pop("tunekit.eval.metrics.echo_length", None)


# --- paired bootstrap -------------------------------------------------------------------------------


def _candidates(seed: int = 0, n: int = 300) -> tuple[list[str], list[str], list[str], list[str]]:
    """References, a strong candidate (85% right), a weak one (50%), and another strong one."""
    rng = random.Random(seed)
    references = [rng.choice(LABELS) for _ in range(n)]

    def noisy(hit_rate: float) -> list[str]:
        return [r if rng.random() < hit_rate else rng.choice([x for x in LABELS if x != r]) for r in references]

    return references, noisy(0.85), noisy(0.5), noisy(0.85)


@pytest.mark.parametrize("name", ["accuracy", "macro_f1"])  # the numpy path and the recompute path
def test_bootstrap_identical_and_equally_good_candidates_include_zero(name: str):
    references, strong, _, other_strong = _candidates()
    ctx = MetricContext(labels=LABELS)
    same = paired_bootstrap(name, strong, strong, references, ctx, samples=200)
    assert same.diff == same.low == same.high == 0.0
    similar = paired_bootstrap(name, strong, other_strong, references, ctx, samples=200)
    assert similar.low < 0 < similar.high


@pytest.mark.parametrize("name", ["accuracy", "macro_f1"])
def test_bootstrap_clearly_better_candidate_is_above_zero(name: str):
    references, strong, weak, _ = _candidates()
    result = paired_bootstrap(name, strong, weak, references, MetricContext(labels=LABELS), samples=200)
    assert 0 < result.low < result.diff < result.high
    assert result.a_is_better()
    assert result.samples == 200


def test_bootstrap_is_deterministic_for_a_seed():
    references, strong, weak, _ = _candidates()
    ctx = MetricContext(labels=LABELS)
    first = paired_bootstrap("macro_f1", strong, weak, references, ctx, samples=100, seed=7)
    assert paired_bootstrap("macro_f1", strong, weak, references, ctx, samples=100, seed=7) == first
    assert paired_bootstrap("macro_f1", strong, weak, references, ctx, samples=100, seed=8) != first


def test_bootstrap_numpy_path_equals_recomputing():
    class AccuracyRecomputed(Metric):
        """Accuracy without per-example scores, which forces the bootstrap to recompute."""

        name = "accuracy_recomputed"

        def compute(self, predictions, references, ctx):
            result = get_metric("accuracy").compute(predictions, references, ctx)
            return MetricResult(result.value, None, result.details)

    references, strong, weak, _ = _candidates(n=80)
    ctx = MetricContext(labels=LABELS)
    fast = paired_bootstrap("accuracy", strong, weak, references, ctx, samples=100, seed=3)
    slow = paired_bootstrap(AccuracyRecomputed(), strong, weak, references, ctx, samples=100, seed=3)
    assert (slow.diff, slow.low, slow.high) == pytest.approx((fast.diff, fast.low, fast.high), abs=1e-12)


def test_bootstrap_rejects_mismatched_lists():
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_bootstrap("accuracy", ["a"], ["a", "b"], ["a"], MetricContext())


def test_paired_bootstrap_scores_each_side_with_its_own_sources():
    """A grounded fine-tune against a grounded baseline: each was given its own sources, and citation
    accuracy must check each side's citations against those (one shared context would score B with A's)."""
    references = ["x"] * 40
    preds = ["answer [2]"] * 40
    ctx_a = MetricContext(retrieved=[["doc-1", "doc-2"]] * 40)  # A was given two sources: [2] is valid
    ctx_b = MetricContext(retrieved=[["doc-1"]] * 40)  # B was given one: [2] names nothing
    result = paired_bootstrap("citation_accuracy", preds, preds, references, ctx_a, ctx_b=ctx_b, samples=50)
    assert result.diff == 1.0 and result.low == 1.0
    shared = paired_bootstrap("citation_accuracy", preds, preds, references, ctx_a, samples=50)
    assert shared.diff == 0.0  # what the comparison reported before: the same context for both

    class CitationRecomputed(Metric):  # as if not decomposable: each resample is rescored with its context
        name = "citation_recomputed"
        reads_citations = True

        def compute(self, predictions, references, ctx):
            result = get_metric("citation_accuracy").compute(predictions, references, ctx)
            return MetricResult(result.value, None, result.details)

    mixed = [["doc-1", "doc-2"] if i % 2 else ["doc-1"] for i in range(40)]
    slow = paired_bootstrap(CitationRecomputed(), preds, ["answer [1]"] * 40, references,
                            MetricContext(retrieved=mixed), samples=50, seed=3)
    fast = paired_bootstrap("citation_accuracy", preds, ["answer [1]"] * 40, references,
                            MetricContext(retrieved=mixed), samples=50, seed=3)
    assert (slow.low, slow.high) == pytest.approx((fast.low, fast.high))


# --- system metrics ---------------------------------------------------------------------------------


def test_system_metrics_hand_computed():
    # Latency comes from a probe of 4 requests; tokens and wall time from the batched pass over 4 rows.
    latencies, ttft, inputs, outputs = [0.1, 0.2, 0.3, 0.4], [0.01, 0.02, 0.03, 0.05], [10, 20, 30, 40], [5, 5, 5, 5]
    local = system_metrics(latencies, ttft, inputs, outputs, wall_s=2.0, usd_per_hour=3.6)
    assert set(local) == set(SYSTEM_METRICS)
    assert local["latency_p50_ms"] == pytest.approx(250.0)
    assert local["latency_p95_ms"] == pytest.approx(385.0)  # linear interpolation between 300 and 400
    assert local["ttft_p50_ms"] == pytest.approx(25.0)
    assert (local["input_tokens_mean"], local["output_tokens_mean"]) == (25.0, 5.0)
    assert local["tokens_per_s"] == 10.0 and local["requests_per_s"] == 2.0
    assert local["cost_per_1k"] == pytest.approx(0.5)  # 3.6 USD/h x 0.5 s per request x 1000
    api = system_metrics(latencies, ttft, inputs, outputs, 2.0, usd_per_hour=3.6, input_per_1k=0.001,
                         output_per_1k=0.002)
    assert api["cost_per_1k"] == pytest.approx(25 * 0.001 + 5 * 0.002)
    assert system_metrics(latencies, ttft, inputs, outputs, 2.0)["cost_per_1k"] is None
    # A probe smaller than the test set is the normal case: throughput still counts every row.
    sampled = system_metrics([0.5], [0.1], inputs, outputs, 2.0)
    assert sampled["latency_p95_ms"] == pytest.approx(500.0) and sampled["requests_per_s"] == 2.0
    with pytest.raises(ValueError, match="one latency"):
        system_metrics([], [], [1], [1], 1.0)
    with pytest.raises(ValueError, match="token counts"):
        system_metrics([0.1], [0.1], [1, 2], [1], 1.0)


def test_higher_is_better_covers_system_safety_and_quality_metrics():
    assert not higher_is_better("latency_p95_ms") and not higher_is_better("cost_per_1k")
    # eval records a direction for everything it measured, safety included (eval.safety: true)
    assert not higher_is_better("attack_success_rate") and not higher_is_better("attack_success_rate_guarded")
    assert higher_is_better("tokens_per_s") and higher_is_better("requests_per_s")
    assert higher_is_better("accuracy") and not higher_is_better("refusal_rate")
    with pytest.raises(UserError, match="allowed: "):
        higher_is_better("latency_p99_ms")

