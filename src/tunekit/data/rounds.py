"""Rounds of the loop: rows that monitoring exported and a person labelled join the training data, and each
round is a new run scored on the project's pinned test set (`tunekit iterate`).

The record (`ProjectFolder.rounds_path`) lists every round: its run folder, the labelled file it added and
where those rows came from, and its metrics on the pinned test set, so a report can show every round on one
test hash. Round 1 is the run the project had before its first `iterate`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunekit.config import ProjectConfig
from tunekit.data.dedupe import NearDuplicateIndex, exact_key
from tunekit.data.load import load_examples
from tunekit.data.problems import Problems
from tunekit.data.records import Example, read_split
from tunekit.data.split import find_leaks, refuse_leaks
from tunekit.errors import UserError
from tunekit.io import write_json_atomic, write_jsonl_atomic
from tunekit.runfolder import ProjectFolder, RunFolder


@dataclass
class Labelled:
    """The labelled rows a round adds, after checks."""

    kept: list[Example]
    duplicates: list[Example] = field(default_factory=list)  # already in the training data
    leaked: list[Example] = field(default_factory=list)  # (nearly) a pinned test prompt: dropped by data.leakage
    problems: Problems = field(default_factory=Problems)


def read_rounds(folder: ProjectFolder) -> list[dict[str, Any]]:
    if not folder.rounds_path.is_file():
        return []
    return json.loads(folder.rounds_path.read_text(encoding="utf-8"))["rounds"]


def write_rounds(folder: ProjectFolder, rounds: list[dict[str, Any]]) -> None:
    write_json_atomic(folder.rounds_path, {"rounds": rounds})


def new_round(number: int, run: Path, test_sha256: str, labelled: Path | None = None, source: str | None = None,
              added: int = 0) -> dict[str, Any]:
    return {"round": number, "run": str(run), "test_sha256": test_sha256, "created": _now(),
            "labelled": str(labelled) if labelled else None, "source": source, "rows_added": added, "metrics": {}}


def check_labelled(path: Path, cfg: ProjectConfig, existing: list[Example], pinned_test: list[Example]) -> Labelled:
    """`path`'s rows checked as `data check` does (a draft still marked needs_label is an error), minus the
    ones already in the training data; a row that (nearly) repeats a pinned test prompt is refused with both
    file:lines, or dropped with data.leakage=drop_from_train."""
    loaded = load_examples([path], cfg.data)
    labelled = Labelled(kept=[], problems=loaded.problems)
    if loaded.problems.errors:
        return labelled
    if not loaded.examples:
        raise UserError("no labelled rows in the file", where=str(path))
    seen = {exact_key(e.full_text) for e in existing}
    index = NearDuplicateIndex(cfg.data.dedupe.near_threshold, cfg.data.dedupe.num_perm)
    for i, example in enumerate(existing):
        index.add(i, example.full_text)
    fresh = []
    for example in loaded.examples:
        key = exact_key(example.full_text)
        if key in seen or (cfg.data.dedupe.near and index.query(example.full_text)):
            labelled.duplicates.append(example)
        else:
            seen.add(key)
            fresh.append(example)
    leaks = find_leaks(fresh, pinned_test, cfg.data.dedupe)  # Leak.train is the labelled row here
    if leaks and cfg.data.leakage == "error":
        refuse_leaks(leaks, fix="fix or remove those labelled rows, or set data.leakage: drop_from_train")
    leaked = {id(leak.train) for leak in leaks}
    labelled.leaked = [e for e in fresh if id(e) in leaked]
    labelled.kept = [e for e in fresh if id(e) not in leaked]
    return labelled


def save_labelled(folder: ProjectFolder, number: int, labelled: Labelled) -> Path:
    """The kept rows, as read plus where they came from (file:line, round, the request ids export wrote)."""
    path = folder.labelled_path(number)
    rows = []
    for example in labelled.kept:
        row = example.to_json()
        row["meta"] = {**example.meta, "labelled_from": example.where, "round": number}
        rows.append(row)
    write_jsonl_atomic(path, rows)
    return path


def training_examples(run: Path) -> list[Example]:
    """What a round trained and validated on: its prepared train and validation splits."""
    folder = RunFolder(run)
    return [e for name in ("train", "validation") for e in read_split(folder.split_path(name))]


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
