"""The one fixed test set, and everything about it that must be right before any model loads.

The test split is the one `tunekit data prepare` wrote (seeded, leakage-checked); its SHA-256 goes into
every report so that two reports can be compared only when they scored the same rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunekit.config import ProjectConfig
from tunekit.data.answers import label_of_answer
from tunekit.data.dedupe import normalize_for_match
from tunekit.data.records import Example, read_split
from tunekit.errors import ConfigError, UserError
from tunekit.io import sha256_file
from tunekit.runfolder import RunFolder


@dataclass
class TestSet:
    path: Path
    sha256: str
    rows: int  # rows in the split; `examples` may be the first eval.max_samples of them
    examples: list[Example]

    @property
    def prompts(self) -> list[list[dict[str, str]]]:
        return [e.messages[:-1] for e in self.examples]

    @property
    def references(self) -> list[str]:
        return [e.messages[-1]["content"] for e in self.examples]


def load_test_set(cfg: ProjectConfig) -> TestSet:
    path = RunFolder(cfg.run_path()).split_path("test")
    if not path.is_file():
        raise UserError("no test split", where=str(path), fix="run `tunekit data prepare CONFIG` first")
    examples = read_split(path)
    if not examples:
        raise UserError("the test split is empty", where=str(path),
                        fix="raise data.split.test or add data; a decision needs test rows")
    for number, example in enumerate(examples, start=1):
        if example.messages[-1]["role"] != "assistant" or len(example.messages) < 2:
            raise UserError("test row has no final assistant answer to score against", where=f"{path}:{number}")
    evaluated = examples[: cfg.eval.max_samples] if cfg.eval.max_samples else examples
    return TestSet(path=path, sha256=sha256_file(path), rows=len(examples), examples=evaluated)


def load_train_examples(cfg: ProjectConfig) -> list[Example]:
    path = RunFolder(cfg.run_path()).split_path("train")
    return read_split(path) if path.is_file() else []


def resolve_labels(cfg: ProjectConfig, test: TestSet, train: list[Example]) -> list[str]:
    """The label set: eval.labels when given (and then the test answers must fit it), else every label
    the train and test answers use. Test labels are names, not inputs, so taking them is no leakage."""
    field = cfg.eval.label_field
    test_labels = [label_of_answer(r, field) for r in test.references]
    if None in test_labels:
        row = test_labels.index(None) + 1
        what = f"no '{field}' field in a JSON object" if field else "an empty answer"
        raise ConfigError(f"test answer has {what}, so it has no label", where=f"{test.path}:{row}",
                          fix="set eval.label_field to the JSON field holding the label, or drop label metrics")
    if cfg.eval.labels:
        allowed = {normalize_for_match(label) for label in cfg.eval.labels}
        unknown = sorted({label for label in test_labels if label not in allowed})
        if unknown:
            raise ConfigError(f"the test split uses label(s) not in eval.labels: {unknown[:10]}",
                              where="eval.labels", fix="add them to eval.labels or remove the key to derive it")
        return [normalize_for_match(label) for label in cfg.eval.labels]
    train_labels = {label_of_answer(e.messages[-1]["content"], field) for e in train if e.messages}
    return sorted((train_labels | set(test_labels)) - {None})


def load_json_schema(cfg: ProjectConfig) -> dict[str, Any] | None:
    if cfg.eval.json_schema is None:
        return None
    return read_schema_file((cfg.base_dir / cfg.eval.json_schema).resolve(), "eval.json_schema")


def read_schema_file(path: Path, key: str) -> dict[str, Any]:
    """The JSON schema in `path`, named by config `key`; a ConfigError when it is missing or not a schema."""
    if not path.is_file():
        raise ConfigError("JSON schema file does not exist", where=f"{key} ({path})")
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"JSON schema is not valid JSON: {exc.msg}", where=f"{path}:{exc.lineno}") from None
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise ConfigError(f"not a valid JSON schema: {exc.message}", where=str(path)) from None
    return schema
