"""Gates per candidate, and the decision: ship the fine-tune, keep prompting (or RAG), or nothing meets.

The order of preference is the order of cost: a baseline that already meets every gate wins over a
fine-tune that also does, because it needs no training, no adapter to serve and no retraining when the
data moves. A fine-tune is shipped when it meets the gates and no baseline does.
"""

from __future__ import annotations

from collections.abc import Callable

from tunekit.eval.bootstrap import BootstrapResult
from tunekit.gates import Gate
from tunekit.results import BASELINE_KINDS, CandidateResult, Comparison, Decision, GateOutcome, Verdict

Ranker = Callable[[CandidateResult], float]


def gate_outcomes(gates: list[Gate], metrics: dict[str, float | None]) -> list[GateOutcome]:
    """Each gate on a candidate's metrics: recorded once here, so no reader judges a gate again."""
    outcomes = []
    for gate in gates:
        value = metrics.get(gate.metric)
        outcomes.append(GateOutcome(gate=gate, value=value, passed=gate.passes(value), gap=gate.gap(value)))
    return outcomes


def decide(candidates: list[CandidateResult], gates: list[Gate], comparisons: list[Comparison],
           primary: str, higher_is_better: bool) -> Decision:
    ran = [c for c in candidates if c.ran]
    baselines = sorted((c for c in ran if c.is_baseline), key=lambda c: BASELINE_KINDS.index(c.kind))
    finetunes = [c for c in ran if not c.is_baseline]
    rank = ranker(primary, higher_is_better)
    if not gates:
        return _decide_without_gates(baselines, finetunes, comparisons, primary, rank)
    if passing := [c for c in baselines if c.passed_all]:
        chosen = passing[0]
        verdict = "use_rag" if chosen.kind == "rag" else "use_prompting"
        reasons = [f"{chosen.name} already meets every gate: {_gate_summary(chosen)}."]
        reasons += [_comparison_text(c) for c in comparisons if c.b == chosen.name]
        return _decision(verdict, chosen.name, f"Don't fine-tune: {chosen.name} already meets every gate.", reasons)
    if passing := sorted((c for c in finetunes if c.passed_all), key=rank):
        chosen = passing[0]
        best_baseline = min(baselines, key=rank) if baselines else None
        headline = f"Ship the fine-tune: {chosen.name} meets every gate and no baseline does"
        comparison = _find(comparisons, chosen.name, best_baseline.name) if best_baseline else None
        headline += f"; {_comparison_text(comparison)}" if comparison else "."
        reasons = [f"{chosen.name}: {_gate_summary(chosen)}."]
        reasons += [f"{b.name} fails: {_failed_gates(b)}." for b in baselines]
        return _decision("ship_finetune", chosen.name, headline, reasons)
    best = min(ran, key=rank) if ran else None
    gaps = {g.text: {c.name: r.gap for c in ran for r in c.gate_results if r.gate.text == g.text} for g in gates}
    reasons = [f"{c.name} fails: {_failed_gates(c)}." for c in ran]
    return _decision("nothing_meets", None, "Nothing meets the gates: neither prompting nor the fine-tune "
                     f"is ready (closest on {primary}: {best.name if best else 'none'}).", reasons, gaps)


def _decide_without_gates(baselines: list[CandidateResult], finetunes: list[CandidateResult],
                          comparisons: list[Comparison], primary: str, rank: Ranker) -> Decision:
    """No gates declared: ship a fine-tune only when its confidence interval beats every baseline."""
    for tune in sorted(finetunes, key=rank):
        mine = [c for c in comparisons if c.a == tune.name]
        if baselines and mine and all(_significantly_better(c) for c in mine):
            best = min(baselines, key=rank)
            comparison = _find(comparisons, tune.name, best.name)
            return _decision("ship_finetune", tune.name,
                             f"Ship the fine-tune: {_comparison_text(comparison)} (no gates were declared).",
                             [_comparison_text(c) for c in mine])
    pool = baselines or finetunes
    if not pool:
        return _decision("nothing_meets", None, "No candidate ran.", [])
    chosen = min(pool, key=rank)
    verdict = "use_rag" if chosen.kind == "rag" else "use_prompting" if chosen in baselines else "ship_finetune"
    reasons = [_comparison_text(c) for c in comparisons]
    if finetunes and baselines:
        reasons.insert(0, f"no fine-tune beats every baseline on {primary} with 95% confidence")
    return _decision(verdict, chosen.name, f"Use {chosen.name}: best on {primary} (no gates were declared).",
                     reasons)


def _significantly_better(comparison: Comparison) -> bool:
    c = comparison
    return BootstrapResult(c.diff, c.low, c.high, c.samples).a_is_better(c.higher_is_better)


def ranker(primary: str, higher_is_better: bool) -> Ranker:
    """Sort key: the best candidate on the primary metric first, one without the metric last."""
    def key(candidate: CandidateResult) -> float:
        value = candidate.metrics.get(primary)
        if value is None:
            return float("inf")
        return -value if higher_is_better else value

    return key


def _find(comparisons: list[Comparison], a: str, b: str) -> Comparison | None:
    return next((c for c in comparisons if c.a == a and c.b == b), None)


def _comparison_text(c: Comparison | None) -> str:
    if c is None:
        return ""
    return f"{c.a} vs {c.b} on {c.metric}: {c.diff:+.3f} (95% CI {c.low:+.3f}..{c.high:+.3f})"


def _gate_summary(candidate: CandidateResult) -> str:
    return ", ".join(f"{r.gate.text} ({_fmt(r.value)})" for r in candidate.gate_results)


def _failed_gates(candidate: CandidateResult) -> str:
    failed = [r for r in candidate.gate_results if not r.passed]
    return ", ".join(f"{r.gate.text} (got {_fmt(r.value)}, gap {_fmt(r.gap)})" for r in failed) or "nothing"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _decision(verdict: Verdict, candidate: str | None, headline: str, reasons: list[str],
              gaps: dict[str, dict[str, float | None]] | None = None) -> Decision:
    return Decision(verdict=verdict, candidate=candidate, headline=headline, reasons=[r for r in reasons if r],
                    gaps=gaps or {})
