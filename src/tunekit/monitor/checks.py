"""What `tunekit monitor` measures: live requests against the training split, each check with its threshold.

Input lengths are counted in words, not tokens, on both sides: the reference split has no token counts,
and words need no tokenizer load (the monitor runs where no model is installed).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tunekit.config_stages import MonitorConfig
from tunekit.data.dedupe import normalize_for_match
from tunekit.errors import UserError
from tunekit.monitor import drift
from tunekit.monitor.logdb import RequestRecord

# Embedding is the slow part (~100-300 texts/s on a laptop CPU): a seeded sample of this many per side
# keeps a report to a minute while a centroid over 2,000 inputs is already stable.
MAX_EMBEDDED = 2000
# A live input is "unusual" when its nearest training input is further than this share of training
# inputs' own nearest neighbours are (the 5th percentile of leave-one-out similarity).
UNUSUAL_PERCENTILE = 5.0


@dataclass
class Reference:
    """The training inputs (user turns) and, for classification data, their labels."""

    path: Path
    texts: list[str]
    labels: list[str]

    @property
    def vocabulary(self) -> set[str]:
        return {w for text in self.texts for w in drift.words(text)}


@dataclass
class Check:
    name: str
    title: str
    value: float | None  # None: not measured (see detail)
    threshold: float
    alert_when: str  # "above" or "below" the threshold
    detail: str = ""

    @property
    def alert(self) -> bool:
        if self.value is None:
            return False
        return self.value > self.threshold if self.alert_when == "above" else self.value < self.threshold

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "title": self.title, "value": self.value, "threshold": self.threshold,
            "alert_when": self.alert_when, "alert": self.alert, "measured": self.value is not None,
            "detail": self.detail,
        }


@dataclass
class Similarity:
    """Embedding closeness of live inputs to the training inputs."""

    live_max: np.ndarray  # per live input: cosine similarity to its nearest training input
    reference_loo: np.ndarray  # per training input: similarity to its nearest other training input
    unusual_below: float
    p_value: float
    centroid_distance: float


@dataclass
class MonitorResult:
    log_path: Path
    reference: Reference
    records: list[RequestRecord]
    checks: list[Check]
    similarity: Similarity | None = None
    series: dict[str, Any] = field(default_factory=dict)  # raw values behind the plots

    @property
    def alerts(self) -> list[Check]:
        return [c for c in self.checks if c.alert]

    def to_json(self) -> dict[str, Any]:
        stamps = [r.ts for r in self.records]
        return {
            "log": str(self.log_path), "reference": str(self.reference.path),
            "requests": len(self.records), "reference_rows": len(self.reference.texts),
            "period": {"first": min(stamps), "last": max(stamps)},
            "status_counts": status_counts(self.records),
            "alerts": [c.name for c in self.alerts],
            "checks": [c.to_json() for c in self.checks],
        }


def load_reference(path: Path, label_field: str | None = None) -> Reference:
    """Read a training split (`RUN/data/train.jsonl`, or any file `tunekit data check` reads)."""
    from tunekit.config import DataConfig
    from tunekit.data.answers import label_of_answer
    from tunekit.data.load import load_examples
    from tunekit.data.stats import answers_are_labels, label_of

    if not path.is_file():
        raise UserError("reference split does not exist", where=str(path),
                        fix="pass the train split `tunekit data prepare` wrote: RUN/data/train.jsonl")
    loaded = load_examples([path], DataConfig())
    if loaded.problems.errors:
        first = loaded.problems.errors[0]
        raise UserError(f"reference split is not training data: {first.render()}")
    examples = loaded.examples
    texts = [e.prompt_text for e in examples]
    if label_field:
        labels = [label_of_answer(e.text_of("assistant"), label_field) for e in examples]
    elif answers_are_labels(examples, DataConfig().label_set_max):
        labels = [label_of_answer(label_of(e, True) or "", None) for e in examples]
    else:
        labels = []
    return Reference(path=path, texts=texts, labels=[x for x in labels if x])


def status_counts(records: list[RequestRecord]) -> dict[str, int]:
    return dict(sorted(Counter(f"{r.status // 100}xx" for r in records).items()))


def run_checks(
    records: list[RequestRecord], reference: Reference, cfg: MonitorConfig, *, embeddings: bool = True,
    log_path: Path = Path("-"),
) -> MonitorResult:
    live_texts = [t for t in (r.user_text() for r in records) if t.strip()]
    result = MonitorResult(log_path=log_path, reference=reference, records=records, checks=[])
    result.checks.append(_length_check(reference, live_texts, cfg, result.series))
    result.checks.append(_embedding_check(reference, live_texts, cfg, result, embeddings))
    result.checks.append(_vocabulary_check(reference, live_texts, cfg))
    result.checks.append(_label_check(reference, records, cfg, result.series))
    result.checks += _rate_checks(records, cfg)
    result.checks.append(_latency_check(records, cfg, result.series))
    return result


def _length_check(reference: Reference, live: list[str], cfg: MonitorConfig, series: dict[str, Any]) -> Check:
    ref_lengths = [len(drift.words(t)) for t in reference.texts]
    live_lengths = [len(drift.words(t)) for t in live]
    series["lengths"] = {"reference": ref_lengths, "live": live_lengths}
    check = Check("input_length_psi", "Input length shift (PSI of words per input)", None, cfg.psi_threshold, "above")
    if not live_lengths or not ref_lengths:
        check.detail = "no inputs with text in the log"
        return check
    check.value = drift.numeric_psi(ref_lengths, live_lengths)
    check.detail = (f"median words: training {np.median(ref_lengths):g}, live {np.median(live_lengths):g}; "
                    f"{len(live_lengths)} live inputs")
    return check


def _embedding_check(
    reference: Reference, live: list[str], cfg: MonitorConfig, result: MonitorResult, enabled: bool
) -> Check:
    check = Check("embedding_drift", "Input meaning shift (embedding centroids, permutation test p-value)",
                  None, cfg.embedding_p_value, "below")
    if not enabled:
        check.detail = "not measured: --no-embeddings"
        return check
    if len(live) < 2 or len(reference.texts) < 2:
        check.detail = "not measured: needs at least 2 inputs on each side"
        return check
    try:
        similarity = measure_similarity(reference.texts, live)
    except UserError as exc:  # the optional embedding model is not installed: say so, do not fail the report
        check.detail = f"not measured: {exc.render()}"
        return check
    result.similarity = similarity
    unusual = float(np.mean(similarity.live_max < similarity.unusual_below))
    check.value = similarity.p_value
    check.detail = (f"centroid cosine distance {similarity.centroid_distance:.4f}; {unusual:.1%} of live inputs "
                    f"are further from the training inputs than 95% of training inputs are from each other")
    return check


def measure_similarity(reference_texts: list[str], live_texts: list[str], *, sample_live: bool = True,
                       seed: int = 0) -> Similarity:
    """Embed (a sample of) both sides and compare. With `sample_live=False` every live text is embedded and
    gets its nearest-training similarity (export needs one per request; the report needs only a sample)."""
    from tunekit.rag.embed import embed_texts

    rng = np.random.default_rng(seed)
    ref = embed_texts(_sample(reference_texts, rng))
    live = embed_texts(_sample(live_texts, rng) if sample_live else live_texts)
    live_sample = live[rng.permutation(len(live))[:MAX_EMBEDDED]]
    loo = drift.leave_one_out_similarity(ref)
    return Similarity(
        live_max=drift.max_similarity(live, ref),
        reference_loo=loo,
        unusual_below=float(np.percentile(loo, UNUSUAL_PERCENTILE)),
        p_value=drift.permutation_p_value(ref, live_sample, seed=seed),
        centroid_distance=drift.centroid_distance(ref, live_sample),
    )


def _sample(texts: list[str], rng: np.random.Generator) -> list[str]:
    if len(texts) <= MAX_EMBEDDED:
        return texts
    return [texts[i] for i in sorted(rng.choice(len(texts), MAX_EMBEDDED, replace=False))]


def _vocabulary_check(reference: Reference, live: list[str], cfg: MonitorConfig) -> Check:
    check = Check("new_vocabulary", "New vocabulary (share of live words never seen in training)",
                  None, cfg.new_vocab_threshold, "above")
    if not live:
        check.detail = "no inputs with text in the log"
        return check
    vocabulary = reference.vocabulary
    check.value = drift.new_word_share(live, vocabulary)
    new = Counter(w for t in live for w in drift.words(t) if w not in vocabulary)
    top = ", ".join(f"{w} ({n})" for w, n in new.most_common(10)) or "none"
    check.detail = f"training vocabulary {len(vocabulary)} words; most frequent new words: {top}"
    return check


def _label_check(reference: Reference, records: list[RequestRecord], cfg: MonitorConfig,
                 series: dict[str, Any]) -> Check:
    check = Check("label_shift", "Predicted label shift (PSI vs training labels)", None, cfg.label_psi_threshold,
                  "above")
    live = [normalize_for_match(r.predicted_label) for r in records if r.predicted_label]
    live = [x for x in live if x]
    if not reference.labels:
        check.detail = "not measured: the training answers are not labels"
        return check
    if not live:
        check.detail = "not measured: no request in the log has a predicted label"
        return check
    series["labels"] = {"reference": Counter(reference.labels), "live": Counter(live)}
    check.value = drift.categorical_psi(reference.labels, live)
    unseen = sorted(set(live) - set(reference.labels))
    check.detail = f"{len(live)} predictions; labels never seen in training: {', '.join(unseen[:10]) or 'none'}"
    return check


def _rate_checks(records: list[RequestRecord], cfg: MonitorConfig) -> list[Check]:
    n = len(records)
    blocked = [r for r in records if r.guard_blocked]
    policies = Counter(e.get("policy", "?") for r in blocked for e in r.guard_events if e.get("action") == "block")
    by_policy = ", ".join(f"{p} {c}" for p, c in policies.most_common()) or "none"
    failed = sum(r.schema_failed for r in records)
    return [
        Check("guard_block_rate", "Guardrail block rate", len(blocked) / n, cfg.block_rate_threshold, "above",
              f"{len(blocked)} of {n} requests blocked; by policy: {by_policy}"),
        Check("schema_failure_rate", "Schema failure rate", failed / n, cfg.schema_failure_threshold, "above",
              f"{failed} of {n} responses failed the JSON schema after retries"),
    ]


def _latency_check(records: list[RequestRecord], cfg: MonitorConfig, series: dict[str, Any]) -> Check:
    # Rejected requests (auth, rate limit, blocked input) return in microseconds and would flatter the p95.
    served = [r.latency_ms for r in records if r.status < 400] or [r.latency_ms for r in records]
    series["latency_ms"] = served
    p95 = drift.p95(served)
    return Check("latency_p95", "Latency p95 (ms) against the SLO", p95, cfg.latency_slo_ms, "above",
                 f"p50 {np.percentile(served, 50):.0f} ms, p95 {p95:.0f} ms, max {max(served):.0f} ms "
                 f"over {len(served)} requests")
