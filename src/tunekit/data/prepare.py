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

from tunekit.config import ProjectConfig, SplitConfig, dump_config
from tunekit.data.clean import normalize_example, pii_kinds_in, redact_example
from tunekit.data.dedupe import find_duplicates
from tunekit.data.hf_datasets import dict_splits, refuse_hub_id
from tunekit.data.load import load_examples
from tunekit.data.pinned import PinnedTest, content_change, read_pin, write_pin
from tunekit.data.problems import Problems
from tunekit.data.records import Example
from tunekit.data.split import SPLITS, find_leaks, refuse_leaks, split_examples
from tunekit.data.stats import label_stats, length_stats, stratum_keys
from tunekit.data.tokenize import token_lengths
from tunekit.errors import UserError
from tunekit.io import atomic_dir, jsonl_bytes, sha256_file
from tunekit.runfolder import DataFolder, ProjectFolder, RunFolder


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
    test_data: bytes | None = None  # the pinned test.jsonl, written as is
    pin: dict[str, Any] | None = None  # the pinned test set's record (data/pinned.py)


def prepare(cfg: ProjectConfig, tokenizer: Any, *, new_test: bool = False) -> tuple[Path, Prepared]:
    """Clean and split the data (data.files cut by data.split, or the given data.splits) into RUN/data.

    With data.pin_test, the project's pinned test set (data/pinned.py) is kept byte for byte and the input
    goes to train and validation only; the first prepare pins its test split, and `new_test` replaces it."""
    project = ProjectFolder.of(cfg)
    pin = read_pin(project) if cfg.data.pin_test else None
    keep = None if new_test else pin
    if not cfg.data.files and cfg.data.splits is None:
        raise UserError("no input files", where="data.files",
                        fix="list your data files in the config (or data.splits: {train: [...], test: [...]})")
    _refuse_hub_ids(cfg)
    given = cfg.split_paths() or dict_splits(cfg.data_paths())  # a lone DatasetDict brings its own splits
    sources = {name: paths for name, paths in given.items() if paths} if given else {"all": cfg.data_paths()}
    loaded = {name: load_examples(paths, cfg.data) for name, paths in sources.items()}
    problems = Problems()
    for part in loaded.values():
        problems.extend(part.problems)
    if problems.errors:
        raise DataErrors(problems)
    result = Prepared(splits={}, lengths={}, rows_read=sum(p.rows_read for p in loaded.values()),
                      file_hashes={k: v for p in loaded.values() for k, v in p.file_hashes.items()},
                      warnings=len(problems.warnings))
    cleaned = {name: _cleaned(part.examples, cfg, tokenizer, result, name) for name, part in loaded.items()}
    if given:
        result.splits = _given_splits(cleaned, cfg, result)
        if keep is not None:
            _refuse_other_test(result.splits["test"], keep, cfg.base_dir)
    else:
        result.splits = _cut_splits(cleaned["all"], cfg, result, keep.examples() if keep else None)
    result.test_data = keep.data if keep is not None else None
    result.lengths = {name: token_lengths(rows, tokenizer) for name, rows in result.splits.items()}
    folder = _write(cfg, result)
    if cfg.data.pin_test and keep is None:
        result.pin = write_pin(project, DataFolder(folder).split_path("test").read_bytes(), previous=pin)
    else:
        result.pin = keep.record if keep is not None else None
    return folder, result


def _refuse_hub_ids(cfg: ProjectConfig) -> None:
    entries = cfg.data.files or [f for name in SPLITS for f in getattr(cfg.data.splits, name)]
    for entry in entries:
        path = (cfg.base_dir / entry).resolve()
        if not path.exists():
            refuse_hub_id(path, entry)


def _cleaned(examples: list[Example], cfg: ProjectConfig, tokenizer: Any, result: Prepared,
             part: str) -> list[Example]:
    if not examples:
        raise UserError("the input holds no examples", where="data.files" if part == "all" else f"data.splits.{part}")
    return _dedupe(_drop_too_long(_clean(examples, cfg, result), cfg, tokenizer, result), cfg, result)


def _cut_splits(examples: list[Example], cfg: ProjectConfig, result: Prepared,
                pinned: list[Example] | None) -> dict[str, list[Example]]:
    """data.files: the test split (data.split's share of the groups of (near-)equal prompts, or the pinned
    one), then validation carved from the rest. Rows that (nearly) equal a test prompt never reach train."""
    if len(examples) < 3:
        raise UserError(f"only {len(examples)} example(s) left after cleaning; a split needs at least 3")
    test = pinned if pinned is not None else split_examples(examples, cfg.data.split, cfg.data.dedupe,
                                                            _strata(examples, cfg))["test"]
    in_test = {id(leak.test) for leak in find_leaks(test, examples, cfg.data.dedupe)}
    rest = [e for e in examples if id(e) not in in_test]
    near_test = len(in_test) - (0 if pinned is not None else len(test))
    if near_test:
        result.dropped["leaked_into_test"] += near_test
    split = cfg.data.split
    return {**_carve_validation(rest, cfg, split.validation / (split.train + split.validation)), "test": test}


def _carve_validation(train: list[Example], cfg: ProjectConfig, fraction: float) -> dict[str, list[Example]]:
    """`fraction` of the train groups, by data.split's seed and strata, as validation."""
    carve = SplitConfig.model_construct(train=1 - fraction, validation=fraction, test=0.0, seed=cfg.data.split.seed,
                                        stratify=cfg.data.split.stratify)  # test 0: the test split is set apart
    carved = split_examples(train, carve, cfg.data.dedupe, _strata(train, cfg))
    return {"train": carved["train"], "validation": carved["validation"]}


def _refuse_other_test(test: list[Example], pin: PinnedTest, base_dir: Path) -> None:
    change = content_change(pin.data, jsonl_bytes([_row(e, base_dir) for e in test]))
    if change.removed or change.added:
        raise UserError(f"the test files differ from the project's pinned test set ({change}; pinned "
                        f"{pin.record.get('pinned_at', '?')}, sha256 {pin.sha256[:12]}...)", where="data.splits.test",
                        fix="`tunekit data prepare --new-test` makes them the pinned test set (the next eval "
                            "report then says earlier reports are not comparable); or give the pinned files back")


def _given_splits(cleaned: dict[str, list[Example]], cfg: ProjectConfig, result: Prepared) -> dict[str, list[Example]]:
    """data.splits: the given files, with validation carved out of train when none is given. A test prompt that
    is also (nearly) a train prompt is refused, or with data.leakage=drop_from_train, its train rows dropped."""
    train, test = cleaned["train"], cleaned["test"]
    leaks = find_leaks(train, test, cfg.data.dedupe)
    if leaks and cfg.data.leakage == "error":
        refuse_leaks(leaks, fix="remove them from one of the files, or set data.leakage: drop_from_train")
    if leaks:  # every train row that (nearly) repeats a test prompt, not only the first one found per test row
        leaked = {id(leak.test) for leak in find_leaks(test, train, cfg.data.dedupe)}
        train = [e for e in train if id(e) not in leaked]
        result.dropped["leaked_into_test"] += len(leaked)
    if "validation" in cleaned:
        return {"train": train, "validation": cleaned["validation"], "test": test}
    if not train:
        raise UserError("no train rows left", where="data.splits.train")
    return {**_carve_validation(train, cfg, cfg.data.split.validation), "test": test}


def _strata(examples: list[Example], cfg: ProjectConfig) -> list[str | None]:
    if cfg.data.split.stratify == "none":
        return [None] * len(examples)
    return stratum_keys(examples, cfg.data.label_set_max)


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
            if name == "test" and result.test_data is not None:
                path.write_bytes(result.test_data)
            else:
                path.write_bytes(jsonl_bytes([_row(e, cfg.base_dir) for e in result.splits[name]]))
            manifest["splits"][name] = {
                "file": path.name, "rows": len(result.splits[name]), "sha256": sha256_file(path),
            }
        staged.splits_manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        staged.config_path.write_text(dump_config(cfg), encoding="utf-8")
        summary = summarize(cfg, result, manifest)
        write_data_report(staged, summary, result.lengths, cfg.model.max_seq_len)
    return target


def _row(example: Example, base_dir: Path) -> dict[str, Any]:
    """The example as a split row; its source relative to the config's folder when inside it, so the same
    project gives the same bytes wherever it lives (a pinned test set is compared across machines)."""
    row = example.to_json()
    source = Path(example.source)
    if source.is_absolute() and source.is_relative_to(base_dir.resolve()):
        source = source.relative_to(base_dir.resolve())
    row.setdefault("meta", {})["source"] = f"{source.as_posix()}:{example.line}"
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
