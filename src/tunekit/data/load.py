"""Read input files into Examples with every problem collected: the shared first step of check and prepare."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tunekit.config import DataConfig
from tunekit.data.formats import TaskWrap, to_examples
from tunekit.data.problems import Problems
from tunekit.data.readers import RawRow, check_input_path, read_rows
from tunekit.data.records import Example
from tunekit.io import sha256_file


@dataclass
class Loaded:
    examples: list[Example]
    problems: Problems
    rows_read: int = 0
    file_hashes: dict[str, str] = field(default_factory=dict)


def load_examples(paths: Sequence[Path], data: DataConfig) -> Loaded:
    for path in paths:  # refuse unreadable paths before doing any work
        check_input_path(path)
    problems = Problems()
    loaded = Loaded(examples=[], problems=problems)
    wrap = TaskWrap(system_prompt=data.system_prompt, user_template=data.user_template,
                    convert_types=data.convert_types)
    for path in paths:
        start = len(problems.items)
        rows = read_rows(path, problems)
        loaded.rows_read += len(rows)
        loaded.file_hashes[str(path)] = sha256_file(path)
        rows = refuse_unlabelled(rows, problems)
        examples = to_examples(rows, problems, fmt=data.format, columns=data.columns, wrap=wrap)
        if not rows and not problems.errors:
            problems.error(str(path), 0, "no_examples", "no examples found", "one JSON object per line")
        # Reading and converting report separately; show this file's problems in line order.
        problems.items[start:] = sorted(problems.items[start:], key=lambda p: p.line)
        loaded.examples.extend(examples)
    return loaded


def refuse_unlabelled(rows: list[RawRow], problems: Problems) -> list[RawRow]:
    """Rows that `tunekit monitor export` wrote carry the model's own answer as a draft and `needs_label:
    true` until a person fixes the answer: training on them would teach the model its own mistakes."""
    kept = []
    for row in rows:
        if row.data.get("needs_label") is True:
            problems.error(row.source, row.line, "needs_label",
                           "row is marked needs_label: its answer is a draft from `tunekit monitor export`",
                           'write the right answer, then delete "needs_label" from the row')
        else:
            kept.append(row)
    return kept
