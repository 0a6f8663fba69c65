"""`tunekit monitor export`: failed and drifted requests as training rows, ready to be labelled.

Each row is in the messages format `tunekit data check` and `tunekit data prepare` read:
`{"messages": [...the request's turns..., {"role": "assistant", "content": DRAFT}], "needs_label": true,
"meta": {...}}`. DRAFT is the model's own answer (or a placeholder when it gave none): a labeller replaces it
with the right answer and deletes `needs_label`. Until then `data check` and `data prepare` refuse the row
(error `needs_label`, naming file:line), so a draft never becomes a training answer by accident.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunekit.config_stages import MonitorConfig
from tunekit.data.dedupe import normalize_for_match
from tunekit.data.formats import CONVERTERS, RowError, TaskWrap
from tunekit.errors import UserError
from tunekit.io import write_jsonl_atomic
from tunekit.monitor import drift
from tunekit.monitor.checks import Reference, measure_similarity
from tunekit.monitor.logdb import RequestRecord, content_text

NO_DRAFT = "[NEEDS LABEL: the model gave no answer]"
# OpenAI's newer name for the system turn; tunekit's training format knows only system/user/assistant.
_ROLE_ALIASES = {"developer": "system"}


@dataclass
class ExportSummary:
    path: Path
    rows: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0  # requests with an input already exported
    unusable: int = 0  # requests whose turns cannot form a training example (e.g. no user turn)
    drift_note: str = ""


def export_for_labelling(
    records: list[RequestRecord], out: Path, reference: Reference | None, cfg: MonitorConfig, *,
    embeddings: bool = True,
) -> ExportSummary:
    """Write every failed or drifted request once (first occurrence) to `out` as JSONL; return counts."""
    summary = ExportSummary(path=out)
    drifted = _drift_reasons(records, reference, cfg, embeddings, summary)
    rows: list[dict[str, Any]] = []
    seen: dict[str, dict[str, Any]] = {}
    for i, record in enumerate(records):
        reasons = failure_reasons(record) + drifted.get(i, [])
        if not reasons:
            continue
        key = normalize_for_match(record.user_text())
        if key in seen:  # the same input failing again: count it, label it once
            seen[key]["meta"]["occurrences"] += 1
            summary.duplicates += 1
            continue
        row = training_row(record, reasons)
        if row is None:
            summary.unusable += 1
            continue
        seen[key] = row
        rows.append(row)
        summary.reasons.update(reasons)
    if rows:  # an empty file would fail `tunekit data check` ("no examples"): write none instead
        write_jsonl_atomic(out, rows)
    summary.rows = len(rows)
    return summary


def failure_reasons(record: RequestRecord) -> list[str]:
    reasons = []
    if record.status >= 400:
        reasons.append(f"http_{record.status}")
    if record.guard_blocked:
        reasons.append("guard_blocked")
    if record.schema_failed:
        reasons.append("schema_failed")
    return reasons


def training_row(record: RequestRecord, reasons: list[str]) -> dict[str, Any] | None:
    """The request as a training example with the answer left to label; None when its turns cannot be one."""
    turns = [
        {"role": _ROLE_ALIASES.get(str(m.get("role")), m.get("role")), "content": content_text(m.get("content"))}
        for m in record.messages
    ]
    draft = record.response if record.response and record.response.strip() else NO_DRAFT
    messages = [*turns, {"role": "assistant", "content": draft}]
    try:  # the reader's own validation: a row that passes here passes `tunekit data check`
        CONVERTERS["messages"]({"messages": messages}, TaskWrap())
    except RowError:
        return None
    meta = {
        "reasons": reasons, "ts": record.ts, "model": record.model, "status": record.status,
        "draft": "model" if draft != NO_DRAFT else "none", "occurrences": 1,
    }
    if record.predicted_label:
        meta["predicted_label"] = record.predicted_label
    return {"messages": messages, "needs_label": True, "meta": meta}


def _drift_reasons(
    records: list[RequestRecord], reference: Reference | None, cfg: MonitorConfig, embeddings: bool,
    summary: ExportSummary,
) -> dict[int, list[str]]:
    """Record index -> drift reasons: "new_vocabulary" (words never seen in training above the monitor
    threshold) and "unusual_input" (further from every training input than 95% of training inputs are)."""
    if reference is None:
        summary.drift_note = "only failed requests: pass --reference to also export drifted ones"
        return {}
    texts = {i: r.user_text() for i, r in enumerate(records) if r.user_text().strip()}
    vocabulary = reference.vocabulary
    reasons: dict[int, list[str]] = {}
    for i, text in texts.items():
        if drift.new_word_share([text], vocabulary) > cfg.new_vocab_threshold:
            reasons.setdefault(i, []).append("new_vocabulary")
    if not embeddings:
        summary.drift_note = "drift by vocabulary only (--no-embeddings)"
        return reasons
    if len(reference.texts) < 2 or not texts:
        summary.drift_note = "drift by vocabulary only (too few inputs to compare embeddings)"
        return reasons
    try:
        similarity = measure_similarity(reference.texts, list(texts.values()), sample_live=False)
    except UserError as exc:  # the optional embedding model is missing: vocabulary still works
        summary.drift_note = f"drift by vocabulary only: {exc.render()}"
        return reasons
    for i, closeness in zip(texts, similarity.live_max):
        if closeness < similarity.unusual_below:
            reasons.setdefault(i, []).append("unusual_input")
    summary.drift_note = f"unusual below cosine similarity {similarity.unusual_below:.3f} to the nearest training input"
    return reasons
