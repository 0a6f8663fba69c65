"""What the evaluated candidates add up to: comparisons, the decision, the rows worth reading, and the
typed result with everything it was measured under; then the eval folder's eval.json and predictions."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING

from tunekit.errors import UserError
from tunekit.eval.decision import Ranker, decide, ranker
from tunekit.results import (
    FINETUNED,
    CandidateResult,
    Comparison,
    ConstraintSettings,
    Decision,
    Disagreement,
    Disagreements,
    EvalResult,
    EvaluatedSplit,
    LatencySettings,
    RoundScore,
    write_predictions,
)
from tunekit.runfolder import EvalFolder

if TYPE_CHECKING:
    from tunekit.eval.runner import EvalPlan
    from tunekit.eval.testset import TestSet

MAX_DISAGREEMENTS = 20
CONFIDENCE = 0.95
LATENCY_HOW = "per request through the serving scheduler, apart from the batched quality pass"


def build_result(plan: EvalPlan, candidates: list[CandidateResult]) -> EvalResult:
    from importlib.metadata import version

    from tunekit.eval.system_metrics import higher_is_better

    ran = [c for c in candidates if c.ran]
    measured = [*plan.cfg.eval.metrics, *(g.metric for g in plan.gates), *(m for c in ran for m in c.metrics)]
    directions = {name: higher_is_better(name) for name in dict.fromkeys(measured)}
    comparisons = _comparisons(plan, ran)
    decision = decide(candidates, plan.gates, comparisons, plan.primary, directions[plan.primary])
    previous = _previous_test_hash(plan.folder)
    test = plan.test
    return EvalResult(
        project=plan.cfg.project,
        created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        tunekit_version=version("tunekit"),
        test_split=EvaluatedSplit(path=str(test.path), sha256=test.sha256, rows=test.rows,
                                  evaluated=len(test.examples)),
        chat_template_sha256=plan.template_sha256,
        previous_test_sha256=previous,
        primary_metric=plan.primary,
        metrics=list(plan.cfg.eval.metrics),
        higher_is_better=directions,
        gates=plan.gates,
        dtype=_resolved_dtype(plan, ran),
        max_new_tokens=plan.cfg.eval.max_new_tokens,
        latency=LatencySettings(samples=plan.cfg.eval.latency.samples,
                                concurrency=plan.cfg.eval.latency.concurrency, how=LATENCY_HOW),
        candidates=candidates,
        comparisons=comparisons,
        decision=decision,
        disagreements=_disagreements(plan, ran, decision, ranker(plan.primary, directions[plan.primary])),
        warnings=_warnings(plan, previous),
        rounds=_rounds(plan, ran),
        constraint=_constraint(plan),
    )


def write_outputs(folder: EvalFolder, result: EvalResult, test: TestSet) -> None:
    """predictions/<candidate>.jsonl for every candidate that ran, then eval.json, which indexes them."""
    metas = [example.meta for example in test.examples]
    for candidate in result.ran:
        write_predictions(folder.predictions_path(candidate.name), candidate.prediction_rows(test.references, metas))
    result.write(folder.result_path)


def _comparisons(plan: EvalPlan, ran: list[CandidateResult]) -> list[Comparison]:
    """Every fine-tune against every baseline on the primary metric, with a paired bootstrap interval."""
    from tunekit.eval.bootstrap import paired_bootstrap
    from tunekit.eval.metrics import get_metric

    metric = get_metric(plan.primary)
    out = []
    for tune in (c for c in ran if not c.is_baseline):
        for base in (c for c in ran if c.is_baseline):
            texts_a, ctx_a = plan.metric_inputs(metric, tune.rows)
            texts_b, ctx_b = plan.metric_inputs(metric, base.rows)
            boot = paired_bootstrap(metric, texts_a, texts_b, plan.test.references, ctx_a, ctx_b=ctx_b,
                                    samples=plan.cfg.eval.bootstrap_samples, confidence=CONFIDENCE,
                                    seed=plan.cfg.data.split.seed)
            out.append(Comparison(a=tune.name, b=base.name, metric=plan.primary, diff=round(boot.diff, 6),
                                  low=round(boot.low, 6), high=round(boot.high, 6), confidence=CONFIDENCE,
                                  samples=boot.samples, higher_is_better=metric.higher_is_better))
    return out


def _disagreements(plan: EvalPlan, ran: list[CandidateResult], decision: Decision, rank: Ranker) -> Disagreements:
    """Test rows where the fine-tune (the chosen one, else the best) and the best baseline differ in correctness
    (or, without per-row scores, in their answer): the examples to read before trusting the numbers."""
    from tunekit.rag.prompt import query_from_messages  # the last user turn, as retrieval reads it

    tunes = sorted((c for c in ran if not c.is_baseline), key=lambda c: (c.name != decision.candidate, rank(c)))
    bases = sorted((c for c in ran if c.is_baseline), key=rank)
    if not tunes or not bases:
        return Disagreements(finetune=tunes[0].name if tunes else None, baseline=bases[0].name if bases else None)
    tune, base = tunes[0], bases[0]
    a, b = tune.rows, base.rows
    rows = []
    for i, (answer_a, answer_b) in enumerate(zip(a.scored, b.scored)):
        differs = (a.scores[i] != b.scores[i]) if a.scores and b.scores else answer_a != answer_b
        if differs:
            rows.append(Disagreement(index=i, input=query_from_messages(plan.test.prompts[i]),
                                     reference=plan.test.references[i],
                                     predictions={tune.name: answer_a, base.name: answer_b}))
        if len(rows) >= MAX_DISAGREEMENTS:
            break
    return Disagreements(finetune=tune.name, baseline=base.name, rows=rows)


def _resolved_dtype(plan: EvalPlan, ran: list[CandidateResult]) -> str:
    """The dtype the run was evaluated in (serve's preflight generates in it to reproduce the answers)."""
    tuned = [c.dtype for c in ran if c.kind == FINETUNED and c.dtype]
    return tuned[0] if tuned else plan.cfg.eval.dtype


def _warnings(plan: EvalPlan, previous: str | None) -> list[str]:
    warnings = [] if plan.gates else ["no gates were declared in eval.gates: the decision rests on the primary "
                                      "metric's confidence interval alone"]
    if previous and previous != plan.test.sha256:
        warnings.append(f"the test split differs from the one the previous report used ({previous[:12]}... -> "
                        f"{plan.test.sha256[:12]}...): the two reports are not comparable")
    return warnings + _pin_warnings(plan)


def _constraint(plan: EvalPlan) -> ConstraintSettings:
    """What eval.constrained decided, the constraint itself included, so what was evaluated can be served so."""
    decided = plan.constraint
    constraint = decided.constraint
    return ConstraintSettings(mode=decided.mode, kind=decided.kind,
                              description=constraint.describe() if constraint else None, source=decided.source,
                              value=list(decided.value) if decided.kind == "choice" else decided.value,
                              unconstrained_rows=plan.unconstrained_rows)


def _rounds(plan: EvalPlan, ran: list[CandidateResult]) -> list[RoundScore]:
    """Every round of the loop scored on this test set (data/rounds.py): the earlier ones as their own evals
    measured them, this run as measured now. Empty for a project that never ran `tunekit iterate`."""
    from tunekit.data.rounds import read_rounds
    from tunekit.runfolder import ProjectFolder

    this_run = str(plan.cfg.run_path())
    tuned = next((c for c in ran if c.kind == FINETUNED), None)
    scores = []
    for entry in read_rounds(ProjectFolder.of(plan.cfg)):
        if entry["test_sha256"] != plan.test.sha256:
            continue
        metrics = entry["metrics"]
        if entry["run"] == this_run and tuned is not None:
            metrics = {m: tuned.metrics.get(m) for m in plan.cfg.eval.metrics}
        scores.append(RoundScore(round=entry["round"], run=entry["run"], test_sha256=entry["test_sha256"],
                                 metrics=metrics))
    return scores


def _pin_warnings(plan: EvalPlan) -> list[str]:
    """What the project's pinned test set (data/pinned.py) says about comparing this report with others."""
    from tunekit.data.pinned import read_pin
    from tunekit.runfolder import ProjectFolder

    pin = read_pin(ProjectFolder.of(plan.cfg)) if plan.cfg.data.pin_test else None
    if pin is None:
        return []
    if pin.sha256 != plan.test.sha256:
        return [f"this test split (sha256 {plan.test.sha256[:12]}...) is not the project's pinned test set "
                f"(sha256 {pin.sha256[:12]}...): its scores are not comparable with reports scored on the pinned one"]
    if replaced := pin.record.get("replaced"):
        return [f"the project's test set was replaced on {pin.record['pinned_at']} (`data prepare --new-test`: "
                f"{replaced['removed']} row(s) removed, {replaced['added']} added; was sha256 "
                f"{replaced['sha256'][:12]}...): reports made before that are not comparable with this one"]
    return []


def _previous_test_hash(folder: EvalFolder) -> str | None:
    """The test split the eval folder's last result scored; None when there is none this tunekit reads."""
    try:
        previous = folder.result()
    except UserError:
        return None
    return previous.test_split.sha256 if previous else None
