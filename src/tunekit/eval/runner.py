"""`tunekit eval`: every candidate on the one fixed test set, then gates, comparisons and a decision.

`check_eval` does everything that can fail on a bad config or bad data, and runs before any model loads;
`run_eval` then generates, scores and writes the eval folder (predictions, eval.json, the report).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunekit.config import ProjectConfig
from tunekit.data.records import Example
from tunekit.errors import ConfigError, UserError
from tunekit.eval.candidates import (
    BASELINE_KINDS,
    CandidateSpec,
    build_prompts,
    finetuned_run_dir,
    loaded_model,
    plan_candidates,
)
from tunekit.eval.decision import apply_gates, decide
from tunekit.eval.testset import TestSet, load_json_schema, load_test_set, load_train_examples, resolve_labels
from tunekit.gates import Gate, parse_gate
from tunekit.io import write_text_atomic

MAX_DISAGREEMENTS = 20


@dataclass
class EvalPlan:
    cfg: ProjectConfig
    test: TestSet
    train: list[Example]
    specs: list[CandidateSpec]
    gates: list[Gate]
    primary: str
    ctx: Any  # MetricContext
    template_sha256: str | None
    out_dir: Path


def eval_out_dir(cfg: ProjectConfig) -> Path:
    return (cfg.base_dir / cfg.eval.out_dir).resolve() if cfg.eval.out_dir else finetuned_run_dir(cfg) / "eval"


def check_eval(cfg: ProjectConfig) -> EvalPlan:
    """Every check that needs no model: candidates, metrics, gates, the test split, labels, the template."""
    from tunekit.eval.metrics import MetricContext, check_metrics
    from tunekit.eval.system_metrics import SYSTEM_METRICS

    specs = plan_candidates(cfg)
    metrics = cfg.eval.metrics
    if not metrics:
        raise ConfigError("no metrics to compute", where="eval.metrics")
    primary = cfg.eval.primary_metric or metrics[0]
    if primary not in metrics:
        raise ConfigError(f"primary metric '{primary}' is not in eval.metrics {metrics}", where="eval.primary_metric")
    gates = [parse_gate(text) for text in cfg.eval.gates]
    computed = {*metrics, *SYSTEM_METRICS, *(_safety_metric_names() if cfg.eval.safety else ())}
    for gate in gates:
        if gate.metric not in computed:
            raise ConfigError(f"gate '{gate.text}' is on '{gate.metric}', which is not computed; computed: "
                              f"{', '.join(sorted(computed))}", where="eval.gates",
                              fix=f"add {gate.metric} to eval.metrics, or fix the gate's metric name")
    test = load_test_set(cfg)
    train = load_train_examples(cfg)
    ctx = MetricContext(label_field=cfg.eval.label_field, json_schema=load_json_schema(cfg),
                        citation_field=cfg.rag.citation_field)
    needs_labels = any(_requires(name, "labels") for name in metrics)
    if needs_labels or cfg.eval.labels:
        ctx.labels = resolve_labels(cfg, test, train)
    check_metrics(metrics, ctx)
    if cfg.eval.safety and cfg.guard.enabled:
        from tunekit.guard import validate_guard_config

        validate_guard_config(cfg)
    return EvalPlan(cfg, test, train, specs, gates, primary, ctx, _checked_template(cfg, specs), eval_out_dir(cfg))


def _requires(metric: str, what: str) -> bool:
    from tunekit.eval.metrics import get_metric

    return what in get_metric(metric).requires


def _safety_metric_names() -> tuple[str, ...]:
    return ("attack_success_rate", "attack_success_rate_guarded")


def _checked_template(cfg: ProjectConfig, specs: list[CandidateSpec]) -> str | None:
    """The run's chat template must be the one it was trained with (its manifest's hash)."""
    from transformers import AutoTokenizer

    from tunekit.train.manifest import chat_template_hash

    run_dir = finetuned_run_dir(cfg)
    if not (run_dir / "tokenizer").is_dir():
        return None
    current = chat_template_hash(AutoTokenizer.from_pretrained(run_dir / "tokenizer", local_files_only=True))
    manifest = run_dir / "manifest.json"
    if manifest.is_file() and any(s.kind == "finetuned" for s in specs):
        trained = json.loads(manifest.read_text(encoding="utf-8")).get("chat_template_sha256")
        if trained and trained != current:
            raise UserError("the run's chat template differs from the one it was trained with",
                            where=str(run_dir / "tokenizer"),
                            fix="restore the tokenizer saved by `tunekit train`, or retrain with the new template")
    return current


def run_eval(plan: EvalPlan, say: Any = print) -> dict[str, Any]:
    test = plan.test
    candidates = []
    for spec in plan.specs:
        if spec.skip_reason:
            say(f"skipping {spec.name}: {spec.skip_reason}")
            candidates.append(_skipped(spec))
            continue
        say(f"evaluating {spec.name} on {len(test.examples)} test rows ...")
        candidates.append(_evaluate(spec, plan, say))
    for candidate in candidates:
        if candidate["status"] == "ok":
            apply_gates(candidate, plan.gates)
    comparisons = _comparisons(plan, candidates)
    higher = _higher_is_better(plan.primary)
    decision = decide(candidates, plan.gates, comparisons, plan.primary, higher)
    result = _result(plan, candidates, comparisons, decision)
    _write(plan, result, candidates)
    return result


def _skipped(spec: CandidateSpec) -> dict[str, Any]:
    return {"name": spec.name, "kind": spec.kind, "model": spec.source, "status": "skipped",
            "skip_reason": spec.skip_reason, "metrics": {}, "gate_results": [], "passed_all": False,
            "latencies_ms": [], "details": {}}


def _evaluate(spec: CandidateSpec, plan: EvalPlan, say: Any) -> dict[str, Any]:
    from tunekit.eval.latency import measure_latency
    from tunekit.generate import GenerationParams, Generator

    cfg = plan.cfg
    prompts = build_prompts(spec, plan.test.prompts, cfg, plan.train)
    params = GenerationParams(max_new_tokens=cfg.eval.max_new_tokens)
    with loaded_model(spec, cfg) as (model, tokenizer):
        generator = Generator(model, tokenizer, dtype=cfg.eval.dtype, max_batch_size=cfg.eval.batch_size)
        start = time.perf_counter()
        generations = generator.generate(prompts, params)  # quality, tokens/s and cost: one batched pass
        wall = time.perf_counter() - start
        probe = measure_latency(generator, prompts, params, samples=cfg.eval.latency.samples,
                                concurrency=cfg.eval.latency.concurrency, seed=cfg.data.split.seed)
        safety = _safety(generator, cfg) if cfg.eval.safety else {}
        dtype = generator.device.dtype_name  # what "auto" resolved to: serve's preflight repeats it
    raw = [g.text for g in generations]
    predictions = _answers(plan.cfg, spec, raw)
    metrics, details, per_example = _score(plan, spec, predictions, raw)
    metrics.update(_system(cfg, spec.name, generations, wall, probe))
    metrics.update(safety)
    say(f"  {spec.name}: {plan.primary} {metrics[plan.primary]:.4f}, {wall:.1f} s for the test set; "
        f"latency p95 {metrics['latency_p95_ms']:.0f} ms over {len(probe.indices)} requests "
        f"at concurrency {probe.concurrency}")
    return {"name": spec.name, "kind": spec.kind, "model": spec.source, "status": "ok", "skip_reason": None,
            "metrics": metrics, "gate_results": [], "passed_all": False, "dtype": dtype,
            "latencies_ms": [round(s * 1000, 2) for s in probe.latencies_s],
            "latency_probe": {"rows": probe.indices, "concurrency": probe.concurrency}, "details": details,
            "_predictions": predictions, "_raw": raw, "_prompts": prompts, "_correct": per_example,
            "_retrieved": spec.retrieved, "_generations": generations, "_latency_by_row": probe.by_row()}


def _answers(cfg: ProjectConfig, spec: CandidateSpec, raw: list[str]) -> list[str]:
    """What the quality metrics score: a grounded JSON answer without its citation field (the references,
    and the program reading the answers, have no such field; citation_accuracy reads it from `raw`)."""
    if spec.kind != "rag":
        return raw
    from tunekit.rag.grounding import Grounding

    grounding = Grounding.from_config(cfg)
    return [grounding.answer_only(text) for text in raw]


def _score(plan: EvalPlan, spec: CandidateSpec, predictions: list[str],
           raw: list[str]) -> tuple[dict, dict, list | None]:
    from tunekit.eval.metrics import get_metric

    metrics, details, per_example = {}, {}, None
    for name in plan.cfg.eval.metrics:
        metric = get_metric(name)
        texts, ctx = _metric_inputs(plan, metric, spec.retrieved, predictions, raw)
        result = metric.compute(texts, plan.test.references, ctx)
        metrics[name] = round(float(result.value), 6)
        if result.details:
            details[name] = result.details
        if name == plan.primary:
            per_example = result.per_example
    return metrics, details, per_example


def _metric_inputs(plan: EvalPlan, metric: Any, retrieved: list[list[str]] | None, predictions: list[str],
                   raw: list[str]) -> tuple[list[str], Any]:
    """What one metric scores for one candidate: the raw output when it reads citations, with the sources
    that candidate was given (citation_accuracy checks ids against them); the answer alone otherwise."""
    ctx = replace(plan.ctx, retrieved=retrieved) if retrieved else plan.ctx
    return (raw if metric.reads_citations else predictions), ctx


def _system(cfg: ProjectConfig, name: str, generations: list[Any], wall: float, probe: Any) -> dict[str, float]:
    from tunekit.eval.system_metrics import system_metrics

    price = cfg.eval.cost.token_prices.get(name)
    return system_metrics(
        probe.latencies_s, [g.ttft_s for g in probe.generations], [g.prompt_tokens for g in generations],
        [g.completion_tokens for g in generations], wall,
        usd_per_hour=None if price else cfg.eval.cost.usd_per_hour,
        input_per_1k=price.input_per_1k if price else None, output_per_1k=price.output_per_1k if price else None,
    )


def _safety(generator: Any, cfg: ProjectConfig) -> dict[str, float]:
    """Attack success rate on the red-team set, without and (when configured) with guardrails."""
    from tunekit.generate import GenerationParams
    from tunekit.guard import Guardrails
    from tunekit.guard.redteam import run_safety

    params = GenerationParams(max_new_tokens=cfg.eval.max_new_tokens)

    def generate(conversations: list[list[dict[str, str]]]) -> list[str]:
        return [g.text for g in generator.generate(conversations, params)]

    guard = Guardrails.from_config(cfg, tokenizer=generator.tokenizer) if cfg.guard.enabled else None
    outcome = run_safety(generate, guard, system_prompt=cfg.data.system_prompt)
    metrics = {"attack_success_rate": outcome["attack_success_rate"]}
    if "attack_success_rate_guarded" in outcome:
        metrics["attack_success_rate_guarded"] = outcome["attack_success_rate_guarded"]
    return metrics


def _higher_is_better(metric: str) -> bool:
    from tunekit.eval.system_metrics import higher_is_better

    return higher_is_better(metric)


def _comparisons(plan: EvalPlan, candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every fine-tune against every baseline on the primary metric, with a paired bootstrap interval."""
    from tunekit.eval.bootstrap import paired_bootstrap
    from tunekit.eval.metrics import get_metric

    ran = [c for c in candidates if c["status"] == "ok"]
    metric = get_metric(plan.primary)
    out = []
    for tune in (c for c in ran if c["kind"] not in BASELINE_KINDS):
        for base in (c for c in ran if c["kind"] in BASELINE_KINDS):
            texts_a, ctx_a = _metric_inputs(plan, metric, tune["_retrieved"], tune["_predictions"], tune["_raw"])
            texts_b, ctx_b = _metric_inputs(plan, metric, base["_retrieved"], base["_predictions"], base["_raw"])
            boot = paired_bootstrap(metric, texts_a, texts_b, plan.test.references, ctx_a, ctx_b=ctx_b,
                                    samples=plan.cfg.eval.bootstrap_samples, seed=plan.cfg.data.split.seed)
            out.append({"a": tune["name"], "b": base["name"], "metric": plan.primary, "diff": round(boot.diff, 6),
                        "low": round(boot.low, 6), "high": round(boot.high, 6), "confidence": 0.95,
                        "samples": boot.samples, "higher_is_better": metric.higher_is_better})
    return out


def _result(plan: EvalPlan, candidates: list[dict[str, Any]], comparisons: list[dict[str, Any]],
            decision: dict[str, Any]) -> dict[str, Any]:
    from importlib.metadata import version

    warnings = [] if plan.gates else ["no gates were declared in eval.gates: the decision rests on the primary "
                                      "metric's confidence interval alone"]
    previous = _previous_test_hash(plan.out_dir)
    if previous and previous != plan.test.sha256:
        warnings.append(f"the test split differs from the one the previous report used ({previous[:12]}... -> "
                        f"{plan.test.sha256[:12]}...): the two reports are not comparable")
    return {
        "project": plan.cfg.project,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tunekit_version": version("tunekit"),
        "test_split": {"path": str(plan.test.path), "sha256": plan.test.sha256, "rows": plan.test.rows,
                       "evaluated": len(plan.test.examples)},
        "chat_template_sha256": plan.template_sha256,
        "previous_test_sha256": previous,
        "primary_metric": plan.primary,
        "metrics": list(plan.cfg.eval.metrics),
        "gates": [{"text": g.text, "metric": g.metric, "op": g.op, "threshold": g.threshold} for g in plan.gates],
        "dtype": _resolved_dtype(plan, candidates),
        "max_new_tokens": plan.cfg.eval.max_new_tokens,
        "latency": {"samples": plan.cfg.eval.latency.samples, "concurrency": plan.cfg.eval.latency.concurrency,
                    "how": "per request through the serving scheduler, apart from the batched quality pass"},
        "candidates": [{k: v for k, v in c.items() if not k.startswith("_")} for c in candidates],
        "comparisons": comparisons,
        "decision": decision,
        "disagreements": _disagreements(plan, candidates, decision),
        "warnings": warnings,
    }


def _resolved_dtype(plan: EvalPlan, candidates: list[dict[str, Any]]) -> str:
    tuned = [c.get("dtype") for c in candidates if c["kind"] == "finetuned" and c.get("dtype")]
    return tuned[0] if tuned else plan.cfg.eval.dtype


def _previous_test_hash(out_dir: Path) -> str | None:
    previous = out_dir / "eval.json"
    if not previous.is_file():
        return None
    try:
        return json.loads(previous.read_text(encoding="utf-8"))["test_split"]["sha256"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return None


def _disagreements(plan: EvalPlan, candidates: list[dict[str, Any]], decision: dict[str, Any]) -> list[dict]:
    """Test rows where the fine-tune and the best baseline differ in correctness (or, without per-example
    scores, in their answer): the examples a reader should look at before trusting the numbers."""
    from tunekit.rag.prompt import query_from_messages  # the last user turn, as retrieval reads it

    ran = {c["name"]: c for c in candidates if c["status"] == "ok"}
    tunes = [c for c in ran.values() if c["kind"] not in BASELINE_KINDS]
    bases = [c for c in ran.values() if c["kind"] in BASELINE_KINDS]
    if not tunes or not bases:
        return []
    sign = 1 if _higher_is_better(plan.primary) else -1
    tune = ran.get(decision.get("candidate") or "")
    if tune not in tunes:
        tune = max(tunes, key=lambda c: sign * c["metrics"][plan.primary])
    base = max(bases, key=lambda c: sign * c["metrics"][plan.primary])
    rows = []
    for i, (a, b) in enumerate(zip(tune["_predictions"], base["_predictions"])):
        differs = (tune["_correct"][i] != base["_correct"][i]) if tune["_correct"] and base["_correct"] else a != b
        if differs:
            rows.append({"index": i, "input": query_from_messages(plan.test.prompts[i]),
                         "reference": plan.test.references[i], "predictions": {tune["name"]: a, base["name"]: b}})
        if len(rows) >= MAX_DISAGREEMENTS:
            break
    return rows


def _write(plan: EvalPlan, result: dict[str, Any], candidates: list[dict[str, Any]]) -> None:
    from tunekit.report import write_report

    out = plan.out_dir
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    for c in candidates:
        if c["status"] != "ok":
            continue
        lines = []
        for i, example in enumerate(plan.test.examples):
            correct = c["_correct"][i] if c["_correct"] else None
            lines.append(json.dumps({
                "index": i, "messages": c["_prompts"][i], "reference": plan.test.references[i],
                "prediction": c["_raw"][i], **_scored_if_different(c, i),
                "correct": None if correct is None else bool(correct >= 1.0),
                "score": correct, "latency_ms": _latency_ms(c, i), "meta": example.meta,
                "retrieved": c["_retrieved"][i] if c["_retrieved"] else None,
            }, ensure_ascii=False))
        write_text_atomic(out / "predictions" / f"{c['name']}.jsonl", "\n".join(lines) + "\n")
    write_report(result, out)  # report.md, report.html, plots/ and eval.json


def _scored_if_different(candidate: dict[str, Any], row: int) -> dict[str, str]:
    scored = candidate["_predictions"][row]
    return {} if scored == candidate["_raw"][row] else {"scored_answer": scored}


def _latency_ms(candidate: dict[str, Any], row: int) -> float | None:
    """The row's latency when the probe sent it (None otherwise: its time in the batch means nothing alone)."""
    seconds = candidate["_latency_by_row"].get(row)
    return None if seconds is None else round(seconds * 1000, 2)
