"""`tunekit data prepare`: clean, dedupe, split and report, written atomically into the run folder.

Order matters: normalise first (so duplicates that differ only in spacing are caught), then PII,
then length, then duplicates, then the split, and the leakage check last, on what would be written.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunekit.config import ProjectConfig, dump_config
from tunekit.data.clean import normalize_example, pii_kinds_in, redact_example
from tunekit.data.dedupe import find_duplicates
from tunekit.data.load import load_examples
from tunekit.data.problems import Problems
from tunekit.data.records import Example
from tunekit.data.split import SPLITS, find_leaks, refuse_leaks, split_examples
from tunekit.data.stats import label_stats, length_stats, stratum_keys
from tunekit.data.tokenize import token_lengths
from tunekit.errors import UserError
from tunekit.io import atomic_dir, sha256_file, write_jsonl_atomic
from tunekit.runfolder import DataFolder, RunFolder


class DataErrors(UserError):
    """The input has errors; prepare writes nothing and lists them all."""

    def __init__(self, problems: Problems):
        self.problems = problems
        super().__init__(
            f"{len(problems.errors)} error(s) in the input data; nothing was written",
            fix="fix them (`tunekit data check` lists every one) and run again",
        )


@dataclass
class Prepared:
    splits: dict[str, list[Example]]
    lengths: dict[str, list[int]]
    dropped: Counter[str] = field(default_factory=Counter)
    redacted: int = 0
    pii_found: Counter[str] = field(default_factory=Counter)
    rows_read: int = 0
    warnings: int = 0
    file_hashes: dict[str, str] = field(default_factory=dict)


def prepare(cfg: ProjectConfig, tokenizer: Any) -> tuple[Path, Prepared]:
    if not cfg.data.files:
        raise UserError("no input files", where="data.files", fix="list your data files in the config")
    loaded = load_examples(cfg.data_paths(), cfg.data)
    if loaded.problems.errors:
        raise DataErrors(loaded.problems)
    if not loaded.examples:
        raise UserError("the input holds no examples", where="data.files")
    result = Prepared(splits={}, lengths={}, rows_read=loaded.rows_read, file_hashes=loaded.file_hashes)
    result.warnings = len(loaded.problems.warnings)
    examples = _clean(loaded.examples, cfg, result)
    examples = _drop_too_long(examples, cfg, tokenizer, result)
    examples = _dedupe(examples, cfg, result)
    if len(examples) < 3:
        raise UserError(f"only {len(examples)} example(s) left after cleaning; a split needs at least 3")
    stratify = cfg.data.split.stratify != "none"
    strata = stratum_keys(examples, cfg.data.label_set_max) if stratify else [None] * len(examples)
    result.splits = split_examples(examples, cfg.data.split, cfg.data.dedupe, strata)
    refuse_leaks(find_leaks(result.splits["train"], result.splits["test"], cfg.data.dedupe))
    result.lengths = {name: token_lengths(rows, tokenizer) for name, rows in result.splits.items()}
    return _write(cfg, result), result


def _clean(examples: list[Example], cfg: ProjectConfig, result: Prepared) -> list[Example]:
    kept = []
    for example in examples:
        if cfg.data.normalize:
            normalize_example(example)
        kinds = pii_kinds_in(example, cfg.data.pii_kinds)
        result.pii_found.update(kinds)
        if kinds and cfg.data.pii == "drop":
            result.dropped["pii"] += 1
            continue
        if kinds and cfg.data.pii == "redact":
            result.redacted += redact_example(example, cfg.data.pii_kinds)
        if any(not m["content"] for m in example.messages):
            result.dropped["empty_after_cleaning"] += 1
            continue
        kept.append(example)
    return kept


def _drop_too_long(examples: list[Example], cfg: ProjectConfig, tokenizer: Any, result: Prepared) -> list[Example]:
    if cfg.data.too_long != "drop":
        return examples  # truncation happens at tokenisation time, per data.too_long
    lengths = token_lengths(examples, tokenizer)
    kept = [e for e, n in zip(examples, lengths) if n <= cfg.model.max_seq_len]
    result.dropped["too_long"] += len(examples) - len(kept)
    return kept


def _dedupe(examples: list[Example], cfg: ProjectConfig, result: Prepared) -> list[Example]:
    dedupe = cfg.data.dedupe
    if not dedupe.exact and not dedupe.near:
        return examples
    dupes = find_duplicates(
        [e.full_text for e in examples], near=dedupe.near, threshold=dedupe.near_threshold,
        num_perm=dedupe.num_perm,
    )
    exact = set(dupes.exact) if dedupe.exact else set()
    result.dropped["exact_duplicate"] += len(exact)
    result.dropped["near_duplicate"] += len(dupes.near)
    drop = exact | set(dupes.near)
    return [e for i, e in enumerate(examples) if i not in drop]


def _write(cfg: ProjectConfig, result: Prepared) -> Path:
    from tunekit.data.report import write_data_report

    target = RunFolder(cfg.run_path()).data_dir
    with atomic_dir(target, replace=True) as tmp:
        staged = DataFolder(tmp)  # RUN/data's layout, in the folder that replaces it when complete
        manifest: dict[str, Any] = {
            "inputs": [{"path": p, "sha256": h} for p, h in result.file_hashes.items()],
            "seed": cfg.data.split.seed,
            "splits": {},
        }
        for name in SPLITS:
            path = staged.split_path(name)
            write_jsonl_atomic(path, [_row(e) for e in result.splits[name]])
            manifest["splits"][name] = {
                "file": path.name, "rows": len(result.splits[name]), "sha256": sha256_file(path),
            }
        staged.splits_manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        staged.config_path.write_text(dump_config(cfg), encoding="utf-8")
        summary = summarize(cfg, result, manifest)
        write_data_report(staged, summary, result.lengths, cfg.model.max_seq_len)
    return target


def _row(example: Example) -> dict[str, Any]:
    row = example.to_json()
    row.setdefault("meta", {})["source"] = example.where
    return row


def summarize(cfg: ProjectConfig, result: Prepared, manifest: dict[str, Any]) -> dict[str, Any]:
    all_rows = [e for rows in result.splits.values() for e in rows]
    return {
        "inputs": manifest["inputs"],
        "rows_read": result.rows_read,
        "warnings_in_input": result.warnings,
        "kept": len(all_rows),
        "dropped": dict(result.dropped),
        "pii": {"found": dict(result.pii_found), "action": cfg.data.pii, "redacted_examples": result.redacted},
        "splits": manifest["splits"],
        "seed": manifest["seed"],
        "token_lengths": {n: length_stats(v, cfg.model.max_seq_len) for n, v in result.lengths.items()},
        "labels": {n: label_stats(rows, cfg.data.label_set_max) for n, rows in result.splits.items()},
        "leakage": {"test_vs_train": 0},
    }
