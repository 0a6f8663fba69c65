"""`tunekit data check`: validate and report, changing nothing. Every problem, each with file:line."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunekit.config import DataConfig
from tunekit.data.clean import pii_kinds_in
from tunekit.data.dedupe import exact_key, find_duplicates
from tunekit.data.load import load_examples
from tunekit.data.problems import Problems
from tunekit.data.records import Example
from tunekit.data.stats import label_stats, length_stats
from tunekit.data.tokenize import pad_token_warning, token_lengths

# A label with fewer examples than this cannot appear in train, validation and test alike.
MIN_PER_LABEL = 3


@dataclass
class CheckReport:
    files: dict[str, str]  # path -> sha256
    rows_read: int
    examples: list[Example]
    problems: Problems
    formats: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    pii: dict[str, dict[str, Any]] = field(default_factory=dict)
    labels: dict[str, Any] = field(default_factory=dict)
    lengths: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "rows_read": self.rows_read,
            "examples": len(self.examples),
            "errors": len(self.problems.errors),
            "warnings": len(self.problems.warnings),
            "exit_code": self.problems.exit_code(),
            "problem_counts": self.problems.counts(),
            "formats": self.formats,
            "duplicates": self.duplicates,
            "pii": self.pii,
            "labels": self.labels,
            "token_lengths": self.lengths,
            "problems": self.problems.to_json(),
        }


def check_files(
    paths: Sequence[Path], data: DataConfig, *, tokenizer: Any = None, max_seq_len: int = 512
) -> CheckReport:
    loaded = load_examples(paths, data)
    examples, problems = loaded.examples, loaded.problems
    report = CheckReport(loaded.file_hashes, loaded.rows_read, examples, problems)
    for example in examples:
        report.formats[example.meta["format"]] = report.formats.get(example.meta["format"], 0) + 1
    report.duplicates = _check_duplicates(examples, data, problems)
    _check_conflicts(examples, problems)
    report.pii = _check_pii(examples, data.pii_kinds, problems)
    report.labels = label_stats(examples, data.label_set_max)
    _check_label_balance(report.labels, paths, problems)
    if tokenizer is not None and examples:
        if warning := pad_token_warning(tokenizer):
            problems.warn("tokenizer", 0, "pad_is_eos", warning, "set a distinct pad token")
        lengths = token_lengths(examples, tokenizer)
        report.lengths = length_stats(lengths, max_seq_len)
        for example, length in zip(examples, lengths):
            if length > max_seq_len:
                problems.warn(
                    example.source, example.line, "too_long",
                    f"{length} tokens, longer than max_seq_len {max_seq_len}",
                    "raise model.max_seq_len, shorten it, or set data.too_long",
                )
    return report


def _check_duplicates(examples: list[Example], data: DataConfig, problems: Problems) -> dict[str, int]:
    dupes = find_duplicates(
        [e.full_text for e in examples], near=data.dedupe.near,
        threshold=data.dedupe.near_threshold, num_perm=data.dedupe.num_perm,
    )
    for i, first in sorted(dupes.exact.items()):
        problems.warn(
            examples[i].source, examples[i].line, "duplicate", f"exact duplicate of {examples[first].where}",
            "`tunekit data prepare` keeps the first and drops the rest",
        )
    for i, (first, similarity) in sorted(dupes.near.items()):
        problems.warn(
            examples[i].source, examples[i].line, "near_duplicate",
            f"near-duplicate of {examples[first].where} (similarity {similarity:.2f})",
            "`tunekit data prepare` keeps the first; tune data.dedupe.near_threshold",
        )
    return {"exact": len(dupes.exact), "near": len(dupes.near)}


def _check_conflicts(examples: list[Example], problems: Problems) -> None:
    """The same prompt with different answers teaches the model nothing but noise."""
    first_answer: dict[str, Example] = {}
    for example in examples:
        key = exact_key(example.prompt_text)
        seen = first_answer.setdefault(key, example)
        if seen is not example and exact_key(seen.text_of("assistant")) != exact_key(example.text_of("assistant")):
            problems.warn(
                example.source, example.line, "conflicting_answer",
                f"same prompt as {seen.where} but a different answer", "keep one answer per prompt",
            )


def _check_pii(examples: list[Example], kinds: list[str] | None, problems: Problems) -> dict[str, dict[str, Any]]:
    found: dict[str, list[str]] = defaultdict(list)
    for example in examples:
        kinds_here = pii_kinds_in(example, kinds)
        for kind in kinds_here:
            found[kind].append(example.where)
        if kinds_here:
            problems.warn(
                example.source, example.line, "pii", f"contains {', '.join(kinds_here)}",
                "`tunekit data prepare` redacts it (data.pii: redact, drop or keep)",
            )
    return {kind: {"count": len(where), "where": where[:1000]} for kind, where in sorted(found.items())}


def _check_label_balance(labels: dict[str, Any], paths: Sequence[Path], problems: Problems) -> None:
    if labels.get("kind") != "labels":
        return
    source = str(paths[0]) if len(paths) == 1 else "data"
    counts = labels["labels"]["counts"]
    rare = [label for label, n in counts.items() if n < MIN_PER_LABEL]
    if rare:
        problems.warn(
            source, 0, "rare_label", f"{len(rare)} label(s) with fewer than {MIN_PER_LABEL} examples: {rare[:10]}",
            "add examples or merge labels; a split cannot hold them everywhere",
        )
    if labels["labels"]["imbalance"] > 10:
        problems.warn(
            source, 0, "label_imbalance", f"most common label is {labels['labels']['imbalance']}x the rarest",
            "collect more of the rare labels or weigh them",
        )
