"""Typed stage results: what `tunekit eval` measured and decided, as eval.json is written and read back.

Eval builds these objects; the report, the model card and serve's preflight read them. What eval decided
is recorded here (each metric's direction, each gate's outcome per candidate, the pair of candidates the
disagreements compare), so no reader works it out again and no two readers can disagree.

A candidate's per-row outputs (prompts, raw and scored answers, per-row scores and latencies) stay on the
object in memory and go to predictions/<candidate>.jsonl, never into eval.json, which stays small enough
for a person to read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, ValidationError, computed_field

from tunekit.errors import UserError
from tunekit.gates import Gate, parse_gate
from tunekit.io import write_json_atomic, write_jsonl_atomic

Kind = Literal["zero_shot", "few_shot", "rag", "finetuned", "compare"]
BASELINE_KINDS = ("zero_shot", "few_shot", "rag")  # cheapest first: the order a tie is broken in
FINETUNED = "finetuned"  # the run being judged (its candidate name and its kind); `compare` is any other model
Verdict = Literal["ship_finetune", "use_prompting", "use_rag", "nothing_meets"]
Status = Literal["ok", "skipped"]
Messages = list[dict[str, Any]]

_REWRITE = "run `tunekit eval CONFIG` again to write it with this tunekit"


def _gate_from_text(value: Any) -> Any:
    return parse_gate(value) if isinstance(value, str) else value


# A gate is written as the text it was declared with (`accuracy >= 0.85`) and read back parsed.
GateText = Annotated[Gate, BeforeValidator(_gate_from_text), PlainSerializer(lambda gate: gate.text, return_type=str)]


class Record(BaseModel):
    # Frozen: a stage's result is made once; a later stage reads it and never edits it in place.
    model_config = ConfigDict(frozen=True)


class GateOutcome(Record):
    gate: GateText
    value: float | None  # None: the candidate has no such metric, and so fails the gate
    passed: bool
    gap: float | None  # how far from passing (0 when it passes)


class LatencySample(Record):
    rows: list[int]  # the test rows sent one request at a time, the same for every candidate
    concurrency: int


@dataclass(frozen=True)
class RowOutputs:
    """One candidate's answers, row by row, in memory: what predictions/<candidate>.jsonl is written from."""

    prompts: list[Messages]  # what the candidate was asked (shots and sources included)
    raw: list[str]  # the model's text
    scored: list[str]  # what the quality metrics scored (a grounded answer without its citations)
    scores: list[float] | None  # the primary metric per row; None when it does not decompose into rows
    latency_ms: dict[int, float]  # the rows the latency probe sent
    retrieved: list[list[str]] | None  # rag: the chunk ids each row was given
    confidence: list[float | None] | None = None  # label metrics: the probability of each row's label
    unconstrained: dict[int, str] | None = None  # the rows decoded again without the constraint: that text


class PredictionRow(Record):
    """One line of predictions/<candidate>.jsonl."""

    index: int
    messages: Messages
    reference: str
    prediction: str  # the model's raw text
    scored_answer: str | None = None  # what was scored, when it differs from `prediction`
    correct: bool | None = None  # the row's primary score is full marks (None: no per-row score)
    score: float | None = None
    latency_ms: float | None = None  # None for rows the latency probe did not send
    meta: dict[str, Any] = {}
    retrieved: list[str] | None = None
    confidence: float | None = None  # the probability the model gave the label it wrote (label metrics)
    unconstrained_prediction: str | None = None  # the raw text without the constraint (rows of that pass only)


class StructuredOutput(Record):
    """A candidate's outputs with and without the constraint it was decoded under (eval/structured.py)."""

    constraint: str | None  # what it was decoded under (Constraint.describe()); None: unconstrained
    note: str | None = None  # why it differs from the other candidates' constraint (rag's citations)
    metric: str | None = None  # json_valid or label_valid: the rate compared
    constrained: float | None = None  # the rate under the constraint, on the rows below
    unconstrained: float | None = None  # the rate without it, on the same rows
    rows: int = 0  # test rows decoded both ways (eval.unconstrained_samples)
    seconds: float | None = None  # what the pass without the constraint took


class Calibration(Record):
    """How the probability of each answer's label matches how often it is right (eval/calibration.py)."""

    ece: float  # expected calibration error over `bins` equal-width confidence bins
    bins: int
    rows: int  # answers with a label probability
    missing: int  # answers that state no label (or carry no log-probabilities), left out
    confidence_mean: float
    accuracy: float  # of the same rows
    correct: list[int]  # per bin, lowest confidence first: right answers
    wrong: list[int]  # and wrong ones


class CandidateResult(Record):
    name: str
    kind: Kind
    model: str  # the model name, or the run or model folder
    status: Status
    skip_reason: str | None = None
    dtype: str | None = None  # what `eval.dtype: auto` resolved to
    metrics: dict[str, float | None] = {}
    details: dict[str, dict[str, Any]] = {}  # per metric: a confusion matrix, per-field accuracies, ...
    gate_results: list[GateOutcome] = []
    latencies_ms: list[float] = []
    latency_probe: LatencySample | None = None
    structured: StructuredOutput | None = None  # None: eval.constrained decided no constraint (or an older file)
    calibration: Calibration | None = None  # None: no label metric, or no log-probabilities
    rows: RowOutputs | None = Field(None, exclude=True, repr=False)

    @computed_field  # written for people reading eval.json; read back from gate_results
    @property
    def passed_all(self) -> bool:
        return self.ran and all(outcome.passed for outcome in self.gate_results)

    @property
    def ran(self) -> bool:
        return self.status == "ok"

    @property
    def is_baseline(self) -> bool:
        return self.kind in BASELINE_KINDS

    def passes_gates_on(self, metric: str) -> bool | None:
        """Whether every gate on `metric` passed (None when no gate is on it)."""
        outcomes = [o.passed for o in self.gate_results if o.gate.metric == metric]
        return all(outcomes) if outcomes else None

    def prediction_rows(self, references: list[str], metas: list[dict[str, Any]]) -> list[PredictionRow]:
        """The predictions file's lines, from the rows kept in memory (none for a candidate that did not run)."""
        if self.rows is None:
            return []
        rows = self.rows
        out = []
        for i, reference in enumerate(references):
            score = rows.scores[i] if rows.scores else None
            out.append(PredictionRow(
                index=i, messages=rows.prompts[i], reference=reference, prediction=rows.raw[i],
                scored_answer=None if rows.scored[i] == rows.raw[i] else rows.scored[i],
                correct=None if score is None else score >= 1.0, score=score, latency_ms=rows.latency_ms.get(i),
                meta=metas[i], retrieved=rows.retrieved[i] if rows.retrieved else None,
                confidence=rows.confidence[i] if rows.confidence else None,
                unconstrained_prediction=(rows.unconstrained or {}).get(i),
            ))
        return out


class Comparison(Record):
    """Paired bootstrap of `a - b` on `metric` over the same test rows."""

    a: str
    b: str
    metric: str
    diff: float
    low: float  # the interval of the difference at `confidence`
    high: float
    confidence: float
    samples: int
    higher_is_better: bool

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


class Decision(Record):
    verdict: Verdict
    candidate: str | None  # the chosen candidate (None when nothing meets the gates)
    headline: str
    reasons: list[str]
    gaps: dict[str, dict[str, float | None]] = {}  # nothing_meets: gate text -> candidate -> how far short


class Disagreement(Record):
    index: int
    input: str
    reference: str
    predictions: dict[str, str]  # candidate -> its answer


class Disagreements(Record):
    """Test rows where the fine-tune and the best baseline differ, and which two they are."""

    finetune: str | None = None
    baseline: str | None = None
    rows: list[Disagreement] = []


class EvaluatedSplit(Record):
    path: str
    sha256: str
    rows: int  # rows in the split
    evaluated: int  # of them evaluated (eval.max_samples)


class LatencySettings(Record):
    samples: int
    concurrency: int
    how: str


class RoundScore(Record):
    """One round of the loop (`tunekit iterate`) on the project's pinned test set: its run and metrics."""

    round: int
    run: str
    test_sha256: str
    metrics: dict[str, float | None]


class ConstraintSettings(Record):
    """`eval.constrained` and what it decided: the constraint the candidates were decoded under
    (eval/constraint.py), kept whole so that what was evaluated can be served the same way."""

    mode: Literal["auto", "true", "false"]
    kind: str | None  # json_schema or choice; None: no constraint
    description: str | None  # Constraint.describe()
    source: str  # where it came from, or why there is none
    value: Any = None  # the JSON schema or the labels, as the engine was given them
    unconstrained_rows: list[int] = []  # the test rows also decoded without it


class EvalResult(Record):
    project: str
    created: str
    tunekit_version: str
    test_split: EvaluatedSplit
    chat_template_sha256: str | None
    previous_test_sha256: str | None
    primary_metric: str
    metrics: list[str]  # eval.metrics
    higher_is_better: dict[str, bool]  # the direction of every metric measured or gated, as eval ranked them
    gates: list[GateText]
    dtype: str
    max_new_tokens: int
    latency: LatencySettings
    candidates: list[CandidateResult]
    comparisons: list[Comparison]
    decision: Decision
    disagreements: Disagreements
    warnings: list[str]
    rounds: list[RoundScore] = Field(default_factory=list)  # every round scored on this test set (iterate)
    constraint: ConstraintSettings | None = None  # None: written before eval.constrained existed

    @property
    def ran(self) -> list[CandidateResult]:
        return [c for c in self.candidates if c.ran]

    def write(self, path: Path) -> None:
        write_json_atomic(path, self.model_dump(mode="json"))

    @classmethod
    def read(cls, path: Path) -> EvalResult:
        """The result in `path`; a UserError naming the file and the first bad field when it is not one."""
        path = Path(path)
        return _validated(cls, _parsed(_read_text(path), str(path)), "an eval result", str(path))


def write_predictions(path: Path, rows: list[PredictionRow]) -> None:
    write_jsonl_atomic(path, [row.model_dump(mode="json") for row in rows])


def read_predictions(path: Path, limit: int | None = None) -> list[PredictionRow]:
    """The first `limit` (default: all) rows of a predictions file."""
    path = Path(path)
    lines = [line for line in _read_text(path).splitlines() if line.strip()][:limit]
    return [_validated(PredictionRow, _parsed(line, f"{path}:{n}"), "a prediction row", f"{path}:{n}")
            for n, line in enumerate(lines, start=1)]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read it: {exc}", where=str(path), fix=_REWRITE) from None


def _parsed(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"not JSON: {exc.msg} at line {exc.lineno}", where=where, fix=_REWRITE) from None


def _validated(model: type[Record], value: Any, what: str, where: str) -> Any:
    """`value` as `model`; an older or hand-edited file fails with the first field that does not fit."""
    if not isinstance(value, dict):
        raise UserError(f"{what} must be a JSON object, not {type(value).__name__}", where=where, fix=_REWRITE)
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise UserError(f"not {what} this tunekit reads: {field}: {first['msg']} ({exc.error_count()} problem(s))",
                        where=where, fix=_REWRITE) from None
