"""Gates per candidate, and the decision: ship the fine-tune, keep prompting (or RAG), or nothing meets.

The order of preference is the order of cost: a baseline that already meets every gate wins over a
fine-tune that also does, because it needs no training, no adapter to serve and no retraining when the
data moves. A fine-tune is shipped when it meets the gates and no baseline does.
"""

from __future__ import annotations

from typing import Any

from tunekit.eval.candidates import BASELINE_KINDS
from tunekit.gates import Gate

VERDICTS = ("ship_finetune", "use_prompting", "use_rag", "nothing_meets")


def apply_gates(candidate: dict[str, Any], gates: list[Gate]) -> None:
    results = []
    for gate in gates:
        value = candidate["metrics"].get(gate.metric)
        results.append({"text": gate.text, "value": value, "passed": gate.passes(value), "gap": gate.gap(value)})
    candidate["gate_results"] = results
    candidate["passed_all"] = all(r["passed"] for r in results)


def decide(candidates: list[dict[str, Any]], gates: list[Gate], comparisons: list[dict[str, Any]],
           primary: str, higher_is_better: bool) -> dict[str, Any]:
    ran = [c for c in candidates if c["status"] == "ok"]
    baselines = sorted((c for c in ran if c["kind"] in BASELINE_KINDS), key=lambda c: BASELINE_KINDS.index(c["kind"]))
    finetunes = [c for c in ran if c["kind"] not in BASELINE_KINDS]
    rank = _ranker(primary, higher_is_better)
    if not gates:
        return _decide_without_gates(baselines, finetunes, comparisons, primary, rank)
    if passing := [c for c in baselines if c["passed_all"]]:
        chosen = passing[0]
        verdict = "use_rag" if chosen["kind"] == "rag" else "use_prompting"
        reasons = [f"{chosen['name']} already meets every gate: {_gate_summary(chosen)}."]
        reasons += [_comparison_text(c) for c in comparisons if c["b"] == chosen["name"]]
        return _decision(verdict, chosen["name"], f"Don't fine-tune: {chosen['name']} already meets every gate.",
                         reasons)
    if passing := sorted((c for c in finetunes if c["passed_all"]), key=rank):
        chosen = passing[0]
        best_baseline = min(baselines, key=rank) if baselines else None
        headline = f"Ship the fine-tune: {chosen['name']} meets every gate and no baseline does"
        comparison = _find(comparisons, chosen["name"], best_baseline["name"]) if best_baseline else None
        headline += f"; {_comparison_text(comparison)}" if comparison else "."
        reasons = [f"{chosen['name']}: {_gate_summary(chosen)}."]
        reasons += [f"{b['name']} fails: {_failed_gates(b)}." for b in baselines]
        return _decision("ship_finetune", chosen["name"], headline, reasons)
    best = min(ran, key=rank) if ran else None
    gaps = {g.text: {c["name"]: r["gap"] for c in ran for r in c["gate_results"] if r["text"] == g.text}
            for g in gates}
    reasons = [f"{c['name']} fails: {_failed_gates(c)}." for c in ran]
    decision = _decision("nothing_meets", None, "Nothing meets the gates: neither prompting nor the fine-tune "
                         f"is ready (closest on {primary}: {best['name'] if best else 'none'}).", reasons)
    decision["gaps"] = gaps
    return decision


def _decide_without_gates(baselines: list[dict[str, Any]], finetunes: list[dict[str, Any]],
                          comparisons: list[dict[str, Any]], primary: str, rank: Any) -> dict[str, Any]:
    """No gates declared: ship a fine-tune only when its confidence interval beats every baseline."""
    for tune in sorted(finetunes, key=rank):
        mine = [c for c in comparisons if c["a"] == tune["name"]]
        if baselines and mine and all(_significantly_better(c) for c in mine):
            best = min(baselines, key=rank)
            comparison = _find(comparisons, tune["name"], best["name"])
            return _decision("ship_finetune", tune["name"],
                             f"Ship the fine-tune: {_comparison_text(comparison)} (no gates were declared).",
                             [_comparison_text(c) for c in mine])
    pool = baselines or finetunes
    if not pool:
        return _decision("nothing_meets", None, "No candidate ran.", [])
    chosen = min(pool, key=rank)
    verdict = "use_rag" if chosen["kind"] == "rag" else "use_prompting" if chosen in baselines else "ship_finetune"
    reasons = [_comparison_text(c) for c in comparisons]
    if finetunes and baselines:
        reasons.insert(0, f"no fine-tune beats every baseline on {primary} with 95% confidence")
    return _decision(verdict, chosen["name"], f"Use {chosen['name']}: best on {primary} (no gates were declared).",
                     reasons)


def _significantly_better(comparison: dict[str, Any]) -> bool:
    return comparison["low"] > 0 if comparison["higher_is_better"] else comparison["high"] < 0


def _ranker(primary: str, higher_is_better: bool) -> Any:
    def key(candidate: dict[str, Any]) -> float:
        value = candidate["metrics"].get(primary)
        if value is None:
            return float("inf")
        return -value if higher_is_better else value

    return key


def _find(comparisons: list[dict[str, Any]], a: str, b: str) -> dict[str, Any] | None:
    return next((c for c in comparisons if c["a"] == a and c["b"] == b), None)


def _comparison_text(c: dict[str, Any] | None) -> str:
    if c is None:
        return ""
    return (f"{c['a']} vs {c['b']} on {c['metric']}: {c['diff']:+.3f} "
            f"(95% CI {c['low']:+.3f}..{c['high']:+.3f})")


def _gate_summary(candidate: dict[str, Any]) -> str:
    return ", ".join(f"{r['text']} ({_fmt(r['value'])})" for r in candidate["gate_results"])


def _failed_gates(candidate: dict[str, Any]) -> str:
    failed = [r for r in candidate["gate_results"] if not r["passed"]]
    return ", ".join(f"{r['text']} (got {_fmt(r['value'])}, gap {_fmt(r['gap'])})" for r in failed) or "nothing"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _decision(verdict: str, candidate: str | None, headline: str, reasons: list[str]) -> dict[str, Any]:
    return {"verdict": verdict, "candidate": candidate, "headline": headline,
            "reasons": [r for r in reasons if r], "gaps": {}}
