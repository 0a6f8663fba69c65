"""Preflight at start: every served run answers its first evaluated prompts exactly as `tunekit eval` recorded.

Greedy decoding is deterministic, so the same weights, template and dtype must give the same text; a
difference means the server is not serving what was evaluated (another adapter, a changed template, a
different dtype or library). Mismatches are printed loudly and reported by /health, never served silently.
Without an eval the check falls back to "answers N validation prompts without error", and says so.

One difference is not a mismatch: a rounding tie. Eval decodes its rows in batches, the server here decodes
a few; in bf16 the matmul kernels for other batch shapes round differently, so where two tokens' logits lie
within a rounding step of each other the greedy pick can flip (seen on the demo: "medium" and "high" 0.125
nats apart, one bf16 step at logits of 16-32). Every differing answer is replayed up to its first differing
token; if the two tokens there are within TIE_NATS of each other, that answer counts as a tie, reported as
one, and the run still matches. Anything wider is a mismatch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunekit.errors import UserError
from tunekit.generate.types import TopLogprob
from tunekit.results import FINETUNED
from tunekit.runfolder import RunFolder

# Two tokens' log-probabilities closer than this are a rounding tie in the served dtype: bf16 keeps 8
# significant bits, so logits of 16-32 round to steps of 0.125 and two roundings can part by 0.25.
TIE_NATS = {"bf16": 0.25, "fp16": 0.03, "fp32": 1e-4}


@dataclass
class PreflightResult:
    name: str
    status: str  # "match" | "mismatch" | "answered" | "failed" | "skipped"
    checked: int = 0
    note: str = ""
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    ties: list[dict[str, Any]] = field(default_factory=list)  # differing answers that part at a rounding tie

    @property
    def ok(self) -> bool:
        return self.status in ("match", "answered", "skipped")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def eval_settings(run_dir: Path, cfg: Any) -> dict[str, Any]:
    """The dtype, max_new_tokens and output constraint the run's eval generated the fine-tune's answers with (its
    eval result, else the run's config and no constraint)."""
    try:
        recorded = RunFolder(run_dir).eval_result()
    except UserError:  # a result this tunekit cannot read records nothing: the config is what is left
        recorded = None
    if recorded is None:
        return {"dtype": None, "max_new_tokens": cfg.eval.max_new_tokens, "constraint": None}
    return {"dtype": recorded.dtype, "max_new_tokens": recorded.max_new_tokens, "constraint": _constraint(recorded)}


def _constraint(recorded: Any) -> Any:
    """The Constraint the fine-tune was decoded under in eval (eval.constrained), or None: without it, a greedy
    answer may leave the schema where eval's did not, and preflight would report a mismatch that is not one."""
    from tunekit.generate import Constraint

    settings = recorded.constraint
    finetuned = next((c for c in recorded.candidates if c.name == FINETUNED), None)
    if settings is None or settings.kind is None or finetuned is None or finetuned.structured is None:
        return None
    if finetuned.structured.constraint is None:
        return None
    return Constraint(settings.kind, tuple(settings.value) if settings.kind == "choice" else settings.value)


def run_preflight(backend: Any, runs: dict[str, tuple[Path, Any]], n: int, *, dtype_note: str = "",
                  say: Any = print) -> dict[str, PreflightResult]:
    """`runs`: served name -> (run folder, its config). Never raises: a failure is a result."""
    results = {}
    for name, (run_dir, cfg) in runs.items():
        if n <= 0:
            results[name] = PreflightResult(name, "skipped", note="serve.preflight_prompts is 0")
            continue
        try:
            results[name] = _check_run(backend, name, run_dir, cfg, n, dtype_note)
        except Exception as exc:  # a broken adapter must be reported, not crash the report of the others
            results[name] = PreflightResult(name, "failed", note=f"{type(exc).__name__}: {exc}")
        _say(results[name], say)
    return results


def _check_run(backend: Any, name: str, run_dir: Path, cfg: Any, n: int, dtype_note: str) -> PreflightResult:
    from tunekit.generate import GenerationParams

    settings = eval_settings(run_dir, cfg)
    # Greedy, as eval generates, and under the constraint eval decoded the fine-tune with.
    params = GenerationParams(max_new_tokens=settings["max_new_tokens"], constraint=settings["constraint"])
    rows = RunFolder(run_dir).eval.predictions(FINETUNED, limit=n)
    if not rows:
        return _answers_validation(backend, name, run_dir, n, params)
    answers = backend.generate_batch([backend.render(row.messages) for row in rows], params, name)
    mismatches, ties = [], []
    for row, answer in zip(rows, answers):
        if answer.text == row.prediction:
            continue
        differing = {"index": row.index, "expected": row.prediction, "got": answer.text}
        gap = _tie_gap(backend, backend.render(row.messages), row.prediction, answer.text, name)
        if gap is not None and gap <= TIE_NATS.get(backend.dtype_name, 0.0):
            ties.append({**differing, "nats_apart": round(gap, 4)})
        else:
            mismatches.append(differing)
    status = "mismatch" if mismatches else "match"
    note = f"{len(rows)} recorded eval answer(s) compared greedy" + (f"; {dtype_note}" if dtype_note else "")
    return PreflightResult(name, status, len(rows), note, mismatches, ties)


def _tie_gap(backend: Any, prompt: str, expected: str, got: str, adapter: str) -> float | None:
    """How far apart (in nats) the two answers' tokens are where they first part, or None when that cannot be
    told (the tokens there are not among the top alternatives)."""
    from tunekit.generate import GenerationParams

    common = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
    step = backend.generate(prompt + expected[:common], GenerationParams(max_new_tokens=1, logprobs=20), adapter)
    if not step.logprobs:
        return None
    return tie_gap(step.logprobs[0].top, expected[common:], got[common:])


def tie_gap(top: tuple[TopLogprob, ...], expected_rest: str, got_rest: str) -> float | None:
    """The log-probability gap between the top alternatives that begin each answer's remaining text (None if
    either answer's next token is not among them)."""
    def best(rest: str) -> TopLogprob | None:
        fitting = [t for t in top if t.token and rest.startswith(t.token)]
        return max(fitting, key=lambda t: len(t.token), default=None)

    first, second = best(expected_rest), best(got_rest)
    if first is None or second is None or first.token_id == second.token_id:
        return None
    return abs(first.logprob - second.logprob)


def _answers_validation(backend: Any, name: str, run_dir: Path, n: int, params: Any) -> PreflightResult:
    from tunekit.models.runs import validation_prompts

    prompts = validation_prompts(run_dir, n)
    if prompts:
        backend.generate_batch([backend.render(messages) for messages in prompts], params, name)
    recorded = RunFolder(run_dir).eval.predictions_path(FINETUNED)
    return PreflightResult(name, "answered", len(prompts),
                           f"no eval predictions in {recorded}: only checked that {len(prompts)} validation "
                           "prompt(s) are answered without error (run `tunekit eval` for the exact check)")


def _say(result: PreflightResult, say: Any) -> None:
    if result.status == "mismatch":
        say(f"PREFLIGHT MISMATCH for '{result.name}': {len(result.mismatches)} of {result.checked} answers differ "
            f"from what `tunekit eval` recorded ({result.note}). This server is NOT serving what was evaluated.")
        for m in result.mismatches[:3]:
            say(f"  example {m['index']}: eval said {m['expected']!r}, now {m['got']!r}")
    elif result.status == "failed":
        say(f"PREFLIGHT FAILED for '{result.name}': {result.note}")
    else:
        say(f"preflight {result.status} for '{result.name}': {result.note or result.checked}")
    for tie in result.ties[:3]:
        say(f"  example {tie['index']} differs only at a rounding tie ({tie['nats_apart']} nats apart): eval said "
            f"{tie['expected']!r}, now {tie['got']!r}")
