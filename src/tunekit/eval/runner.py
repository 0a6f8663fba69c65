"""`tunekit eval`: every candidate on the one fixed test set, then gates, comparisons and a decision.

`check_eval` does everything that can fail on a bad config or bad data, and runs before any model loads;
`run_eval` then generates, scores and decides, writes the eval folder's result and predictions, and
returns the typed result. The report is rendered from that result by the caller (`tunekit eval`), one
layer up: judging does not depend on how the judgement is shown.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from tunekit.config import ProjectConfig
from tunekit.data.records import Example
from tunekit.errors import ConfigError, UserError
from tunekit.eval.candidates import CandidateSpec, build_prompts, finetuned_run_dir, loaded_model, plan_candidates
from tunekit.eval.constraint import LABEL_METRICS, ConstraintPlan, decide_constraint
from tunekit.eval.decision import gate_outcomes
from tunekit.eval.outcome import build_result, write_outputs
from tunekit.eval.testset import TestSet, load_json_schema, load_test_set, load_train_examples, resolve_labels
from tunekit.gates import Gate, parse_gate
from tunekit.results import FINETUNED, CandidateResult, EvalResult, LatencySample, RowOutputs
from tunekit.runfolder import EvalFolder, RunFolder, chat_template_hash


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
    folder: EvalFolder
    constraint: ConstraintPlan  # what every candidate is decoded under (eval.constrained)
    calibrate: bool  # label metrics: each answer's label probability, and the ECE
    unconstrained_rows: list[int]  # test rows also decoded without the constraint

    def metric_inputs(self, metric: Any, rows: RowOutputs) -> tuple[list[str], Any]:
        """What one metric scores for one candidate: the raw output when it reads citations, with the sources
        that candidate was given (citation_accuracy checks ids against them); the answer alone otherwise."""
        ctx = replace(self.ctx, retrieved=rows.retrieved) if rows.retrieved else self.ctx
        return (rows.raw if metric.reads_citations else rows.scored), ctx


def eval_folder(cfg: ProjectConfig) -> EvalFolder:
    if cfg.eval.out_dir:
        return EvalFolder((cfg.base_dir / cfg.eval.out_dir).resolve())
    return RunFolder(finetuned_run_dir(cfg)).eval


def check_eval(cfg: ProjectConfig) -> EvalPlan:
    """Every check that needs no model: candidates, metrics, gates, the test split, labels, the template."""
    from tunekit.eval.latency import sample_rows
    from tunekit.eval.metrics import MetricContext, check_metrics
    from tunekit.eval.system_metrics import CALIBRATION_METRICS, SAFETY_METRICS, SYSTEM_METRICS

    specs = plan_candidates(cfg)
    metrics = cfg.eval.metrics
    if not metrics:
        raise ConfigError("no metrics to compute", where="eval.metrics")
    primary = cfg.eval.primary_metric or metrics[0]
    if primary not in metrics:
        raise ConfigError(f"primary metric '{primary}' is not in eval.metrics {metrics}", where="eval.primary_metric")
    gates = [parse_gate(text) for text in cfg.eval.gates]
    calibrate = any(name in LABEL_METRICS for name in metrics)
    computed = {*metrics, *SYSTEM_METRICS, *(SAFETY_METRICS if cfg.eval.safety else ()),
                *(CALIBRATION_METRICS if calibrate else ())}
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
    constraint = decide_constraint(cfg, train, ctx.json_schema)
    free_rows = sample_rows(len(test.examples), cfg.eval.unconstrained_samples, cfg.data.split.seed) \
        if constraint.kind is not None and cfg.eval.unconstrained_samples else []
    return EvalPlan(cfg, test, train, specs, gates, primary, ctx, _template_hash(cfg, specs), eval_folder(cfg),
                    constraint, calibrate, free_rows)


def _requires(metric: str, what: str) -> bool:
    from tunekit.eval.metrics import get_metric

    return what in get_metric(metric).requires


def _template_hash(cfg: ProjectConfig, specs: list[CandidateSpec]) -> str | None:
    """The hash of the run's chat template, which every candidate is prompted with. When the run itself is a
    candidate, the template must be the one it was trained with (RunFolder.check_template raises if not)."""
    run = RunFolder(finetuned_run_dir(cfg))
    if not run.tokenizer_dir.is_dir():
        return None
    if any(spec.kind == FINETUNED for spec in specs):
        return run.check_template()
    return chat_template_hash(run.tokenizer())


def run_eval(plan: EvalPlan, say: Any = print) -> EvalResult:
    """Evaluate every candidate, decide, and write the result and the predictions into the eval folder."""
    candidates = []
    for spec in plan.specs:
        if spec.skip_reason:
            say(f"skipping {spec.name}: {spec.skip_reason}")
            candidates.append(CandidateResult(name=spec.name, kind=spec.kind, model=spec.source, status="skipped",
                                              skip_reason=spec.skip_reason))
            continue
        say(f"evaluating {spec.name} on {len(plan.test.examples)} test rows ...")
        candidates.append(_evaluate(spec, plan, say))
    result = build_result(plan, candidates)
    write_outputs(plan.folder, result, plan.test)
    return result


def _evaluate(spec: CandidateSpec, plan: EvalPlan, say: Any) -> CandidateResult:
    from tunekit.eval.latency import measure_latency
    from tunekit.eval.structured import decode_unconstrained
    from tunekit.generate import GenerationParams, Generator

    cfg = plan.cfg
    prompts = build_prompts(spec, plan.test.prompts, cfg, plan.train)
    constraint, note = plan.constraint.for_candidate(spec, cfg)
    params = GenerationParams(max_new_tokens=cfg.eval.max_new_tokens, constraint=constraint,
                              logprobs=0 if plan.calibrate else None)
    free, free_s = None, None
    with loaded_model(spec, cfg) as (model, tokenizer):
        generator = Generator(model, tokenizer, dtype=cfg.eval.dtype, max_batch_size=cfg.eval.batch_size)
        generations, wall, params, note = _quality_pass(generator, prompts, params, plan, note)
        probe = measure_latency(generator, prompts, replace(params, logprobs=None), samples=cfg.eval.latency.samples,
                                concurrency=cfg.eval.latency.concurrency, seed=cfg.data.split.seed)
        if params.constraint is not None and plan.unconstrained_rows:
            free, free_s = decode_unconstrained(generator, prompts, params, plan.unconstrained_rows)
        safety = _safety(generator, cfg) if cfg.eval.safety else {}
        dtype = generator.device.dtype_name  # what "auto" resolved to: serve's preflight repeats it
    raw = [g.text for g in generations]
    rows = RowOutputs(prompts=prompts, raw=raw, scored=_answers(cfg, spec, raw), scores=None,
                      latency_ms={row: _ms(s) for row, s in probe.by_row().items()},
                      retrieved=spec.retrieved or None, unconstrained=free)
    metrics, details, scores = _score(plan, rows)
    calibration, confidence = _calibration(plan, generations, rows)
    if calibration is not None:
        metrics["ece"] = calibration.ece
    metrics.update(_system(cfg, spec.name, generations, wall, probe))
    metrics.update(safety)
    structured = _structured(plan, spec, params.constraint, note, rows, free_s)
    say(f"  {spec.name}: {plan.primary} {metrics[plan.primary]:.4f}, {wall:.1f} s for the test set; "
        f"latency p95 {metrics['latency_p95_ms']:.0f} ms over {len(probe.indices)} requests "
        f"at concurrency {probe.concurrency}" + _structured_text(structured))
    return CandidateResult(
        name=spec.name, kind=spec.kind, model=spec.source, status="ok", dtype=dtype, metrics=metrics,
        details=details, gate_results=gate_outcomes(plan.gates, metrics),
        latencies_ms=[_ms(s) for s in probe.latencies_s],
        latency_probe=LatencySample(rows=probe.indices, concurrency=probe.concurrency),
        structured=structured, calibration=calibration,
        rows=replace(rows, scores=scores, confidence=confidence),
    )


def _quality_pass(generator: Any, prompts: list[Any], params: Any, plan: EvalPlan,
                  note: str | None) -> tuple[list[Any], float, Any, str | None]:
    """The batched pass over the test set (quality, tokens/s and cost): generations, seconds, the params they were
    decoded with and the candidate's constraint note. Under `eval.constrained: auto` a constraint the engine
    cannot compile leaves the candidate unconstrained and says why; under `true` it is the user's error."""
    try:
        start = time.perf_counter()
        return generator.generate(prompts, params), time.perf_counter() - start, params, note
    except UserError as exc:
        if params.constraint is None or exc.where != "constraint":
            raise
        if plan.constraint.mode != "auto":
            raise ConfigError(f"the engine cannot decode under the constraint ({plan.constraint.source}): "
                              f"{exc.message}", where="eval.constrained",
                              fix="simplify the schema, or set eval.constrained to auto") from None
        reason = f"unconstrained: the engine cannot compile the constraint ({exc.message})"
    params = replace(params, constraint=None)
    start = time.perf_counter()
    return generator.generate(prompts, params), time.perf_counter() - start, params, reason


def _calibration(plan: EvalPlan, generations: list[Any], rows: RowOutputs) -> tuple[Any, list[float | None] | None]:
    """Label metrics: the ECE record and each row's label probability (None, None without log-probabilities)."""
    if not plan.calibrate or all(g.logprobs is None for g in generations):
        return None, None
    from tunekit.eval.calibration import calibration, label_confidence
    from tunekit.eval.metrics._labels import label_outputs

    field = plan.ctx.label_field
    confidence = [label_confidence(g.text, g.logprobs, field) for g in generations]
    labelled = label_outputs(rows.scored, plan.test.references, plan.ctx)
    correct = [p == r != labelled.other for p, r in zip(labelled.prediction_ids, labelled.reference_ids)]
    return calibration(confidence, correct), [None if c is None else round(c, 6) for c in confidence]


def _structured(plan: EvalPlan, spec: CandidateSpec, constraint: Any, note: str | None, rows: RowOutputs,
                seconds: float | None) -> Any:
    """The candidate's constraint and its validity rate with and without it; None when no candidate is
    constrained (eval.constrained decided none)."""
    if plan.constraint.kind is None:
        return None
    from tunekit.eval.structured import structured_output

    labels = list(constraint.value) if constraint is not None and constraint.kind == "choice" else None
    free = dict(zip(rows.unconstrained, _answers(plan.cfg, spec, list(rows.unconstrained.values())))) \
        if rows.unconstrained else None
    return structured_output(constraint, note, plan.constraint.validity_metric, rows.scored, free, seconds, labels)


def _structured_text(structured: Any) -> str:
    if structured is None or structured.unconstrained is None:
        return ""
    return (f"; {structured.metric} {structured.constrained:.2f} under the {structured.constraint}, "
            f"{structured.unconstrained:.2f} without it ({structured.rows} rows, {structured.seconds:.1f} s)")


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _answers(cfg: ProjectConfig, spec: CandidateSpec, raw: list[str]) -> list[str]:
    """What the quality metrics score: a grounded JSON answer without its citation field (the references,
    and the program reading the answers, have no such field; citation_accuracy reads it from `raw`)."""
    if spec.kind != "rag":
        return raw
    from tunekit.rag.grounding import Grounding

    grounding = Grounding.from_config(cfg)
    return [grounding.answer_only(text) for text in raw]


def _score(plan: EvalPlan, rows: RowOutputs) -> tuple[dict[str, float | None], dict, list[float] | None]:
    """Every quality metric, its details, and the primary metric's per-row scores (when it has them)."""
    from tunekit.eval.metrics import get_metric

    metrics: dict[str, float | None] = {}
    details, scores = {}, None
    for name in plan.cfg.eval.metrics:
        metric = get_metric(name)
        texts, ctx = plan.metric_inputs(metric, rows)
        result = metric.compute(texts, plan.test.references, ctx)
        metrics[name] = round(float(result.value), 6)
        if result.details:
            details[name] = result.details
        if name == plan.primary:
            scores = result.per_example
    return metrics, details, scores


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
