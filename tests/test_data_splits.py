"""`data.splits`: a team's own train/validation/test files instead of fractions of `data.files`. The test
rows are exactly the given ones, validation is carved from train when not given, and a test prompt that is
also a train prompt is refused with both file:lines (or its train rows dropped, when asked)."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest

from train_helpers import tunekit
from tunekit.runfolder import EvalFolder, RunFolder

WORDS = [
    "card", "payment", "refund", "transfer", "account", "balance", "pin", "limit", "fee", "cash", "atm", "exchange",
    "rate", "verify", "identity", "top", "up", "declined", "pending", "charge", "statement", "freeze", "unlock",
    "travel", "abroad", "currency", "virtual", "physical", "delivery", "address", "phone", "email", "password",
    "app", "login", "blocked", "stolen", "lost", "contactless", "wallet",
]
LABELS = ("card_arrival", "lost_or_stolen_card", "exchange_rate")


def _rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"text": " ".join(rng.sample(WORDS, 9)) + "?", "label": LABELS[i % len(LABELS)]} for i in range(n)]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _project(root: Path, model_dir: Path, splits: str, extra: str = "") -> Path:
    config = root / "tunekit.yaml"
    config.write_text(f"run_dir: {root / 'run'}\nmodel:\n  name: {model_dir}\n  max_seq_len: 128\n"
                      f"data:\n  splits: {splits}\n{extra}", encoding="utf-8")
    return config


def _split(root: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in RunFolder(root / "run").split_path(name).read_text().splitlines()]


def _user_text(row: dict) -> str:
    return next(m["content"] for m in row["messages"] if m["role"] == "user")


def test_given_files_are_the_splits_and_eval_scores_exactly_the_given_test_rows(tmp_path: Path,
                                                                                 tiny_model_dir: Path) -> None:
    train, test = _rows(60, seed=1), _rows(12, seed=2)
    _write(tmp_path / "train.jsonl", train)
    _write(tmp_path / "test.jsonl", test)
    config = _project(tmp_path, tiny_model_dir, "{train: [train.jsonl], test: [test.jsonl]}",
                      "eval:\n  candidates: [zero_shot]\n  metrics: [accuracy]\n  max_new_tokens: 4\n"
                      "  latency: {samples: 2}\n")
    proc = tunekit("data", "prepare", str(config))
    assert proc.returncode == 0, proc.stderr
    assert [_user_text(r) for r in _split(tmp_path, "test")] == [r["text"] for r in test]  # same rows, same order
    kept, validation = _split(tmp_path, "train"), _split(tmp_path, "validation")
    assert len(validation) == 6 and len(kept) == 54  # data.split.validation (0.1) of train, carved by its seed
    assert sorted(map(_user_text, kept + validation)) == sorted(r["text"] for r in train)

    proc = tunekit("eval", str(config))
    assert proc.returncode in (0, 1), proc.stderr
    run = RunFolder(tmp_path / "run")
    result = json.loads(EvalFolder(run.root / "eval").result_path.read_text())
    manifest = json.loads(run.splits_manifest_path.read_text())
    test_file = run.split_path("test")
    assert result["test_split"]["rows"] == 12
    assert result["test_split"]["sha256"] == hashlib.sha256(test_file.read_bytes()).hexdigest()
    assert manifest["splits"]["test"]["sha256"] == result["test_split"]["sha256"]


def _prepare(config: Path, *overrides: str):
    """`data prepare` in this process (the CLI's own behaviour is checked through `tunekit` elsewhere here)."""
    from tunekit.config import load_config
    from tunekit.data.prepare import prepare
    from tunekit.models.load import load_tokenizer
    from tunekit.models.resolve import resolve_model

    cfg = load_config(config, list(overrides))
    return prepare(cfg, load_tokenizer(resolve_model(cfg.model.name)))[1]


def test_given_validation_files_are_used_as_they_are(tmp_path: Path, tiny_model_dir: Path) -> None:
    _write(tmp_path / "train.jsonl", _rows(30, seed=1))
    _write(tmp_path / "dev.jsonl", _rows(5, seed=3))
    _write(tmp_path / "test.jsonl", _rows(6, seed=2))
    config = _project(tmp_path, tiny_model_dir, "{train: [train.jsonl], validation: [dev.jsonl], test: [test.jsonl]}")
    _prepare(config)
    assert [len(_split(tmp_path, n)) for n in ("train", "validation", "test")] == [30, 5, 6]


def test_a_test_prompt_also_in_train_is_refused_with_both_lines_or_dropped_from_train(tmp_path: Path,
                                                                                       tiny_model_dir: Path) -> None:
    train, test = _rows(40, seed=1), _rows(8, seed=2)
    test[2] = dict(train[9])  # test line 3 is train line 10
    _write(tmp_path / "train.jsonl", train)
    _write(tmp_path / "test.jsonl", test)
    config = _project(tmp_path, tiny_model_dir, "{train: [train.jsonl], test: [test.jsonl]}")
    proc = tunekit("data", "prepare", str(config))
    assert proc.returncode == 2
    assert "test.jsonl:3" in proc.stderr and "train.jsonl:10" in proc.stderr, proc.stderr
    assert "data.leakage: drop_from_train" in proc.stderr and "Traceback" not in proc.stderr
    assert not RunFolder(tmp_path / "run").data_dir.exists()  # nothing half-written

    assert _prepare(config, "data.leakage=drop_from_train").dropped["leaked_into_test"] == 1
    kept = [_user_text(r) for r in _split(tmp_path, "train") + _split(tmp_path, "validation")]
    assert len(kept) == 39 and train[9]["text"] not in kept
    assert train[9]["text"] in [_user_text(r) for r in _split(tmp_path, "test")]


def test_files_and_splits_together_are_a_config_error(tmp_path: Path, tiny_model_dir: Path) -> None:
    _write(tmp_path / "train.jsonl", _rows(10, seed=1))
    from tunekit.config import load_config
    from tunekit.errors import ConfigError

    both = "{train: [train.jsonl], test: [train.jsonl]}"
    with pytest.raises(ConfigError, match=r"data\.files and data\.splits"):
        load_config(_project(tmp_path, tiny_model_dir, both, "  files: [train.jsonl]\n"))
    with pytest.raises(ConfigError, match=r"data\.splits\.test"):
        load_config(_project(tmp_path, tiny_model_dir, "{train: [train.jsonl]}"))


def test_other_test_files_need_new_test_and_the_next_eval_says_so(tmp_path: Path, tiny_model_dir: Path) -> None:
    train, test = _rows(40, seed=1), _rows(8, seed=2)
    _write(tmp_path / "train.jsonl", train)
    _write(tmp_path / "test.jsonl", test)
    config = _project(tmp_path, tiny_model_dir, "{train: [train.jsonl], test: [test.jsonl]}",
                      "eval:\n  candidates: [zero_shot]\n  metrics: [accuracy]\n  max_new_tokens: 2\n"
                      "  latency: {samples: 1}\n")
    assert _prepare(config).test_data is None  # the first run pins its test split
    assert _prepare(config).test_data is not None  # the same files: kept as pinned

    _write(tmp_path / "test.jsonl", test[:6] + _rows(2, seed=5))
    proc = tunekit("data", "prepare", str(config))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "2 row(s) removed, 2 added" in proc.stderr and "--new-test" in proc.stderr, proc.stderr

    proc = tunekit("data", "prepare", str(config), "--new-test")
    assert proc.returncode == 0, proc.stderr
    assert "test set pinned" in proc.stdout and "replaces sha256" in proc.stdout and "not comparable" in proc.stdout
    proc = tunekit("eval", str(config))
    assert proc.returncode in (0, 1), proc.stderr
    result = json.loads(EvalFolder(tmp_path / "run" / "eval").result_path.read_text())
    assert any("reports made before that are not comparable" in w for w in result["warnings"]), result["warnings"]


def test_a_saved_hugging_face_dataset_dict_brings_its_own_splits(tmp_path: Path, tiny_model_dir: Path) -> None:
    from datasets import Dataset, DatasetDict

    train, dev, test = _rows(30, seed=1), _rows(4, seed=3), _rows(6, seed=2)
    DatasetDict({"train": Dataset.from_list(train), "dev": Dataset.from_list(dev),
                 "test": Dataset.from_list(test)}).save_to_disk(str(tmp_path / "banking"))
    config = tmp_path / "tunekit.yaml"
    config.write_text(f"run_dir: {tmp_path / 'run'}\nmodel:\n  name: {tiny_model_dir}\n  max_seq_len: 128\n"
                      "data:\n  files: [banking]\n", encoding="utf-8")
    proc = tunekit("data", "prepare", str(config))
    assert proc.returncode == 0, proc.stderr
    assert [_user_text(r) for r in _split(tmp_path, "test")] == [r["text"] for r in test]
    assert [len(_split(tmp_path, n)) for n in ("train", "validation")] == [30, 4]
    assert _split(tmp_path, "test")[0]["meta"]["source"] == "banking/test:1"  # row numbers stand in for lines


def test_a_hub_dataset_id_fails_at_once_saying_nothing_is_downloaded(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = tmp_path / "tunekit.yaml"
    config.write_text(f"run_dir: {tmp_path / 'run'}\nmodel:\n  name: {tiny_model_dir}\n"
                      "data:\n  files: [PolyAI/banking77]\n", encoding="utf-8")
    proc = tunekit("data", "prepare", str(config))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "Hugging Face Hub dataset id" in proc.stderr and "offline" in proc.stderr and "save_to_disk" in proc.stderr


def test_a_number_where_text_belongs_is_an_error_unless_conversion_is_asked(tmp_path: Path,
                                                                           tiny_model_dir: Path) -> None:
    rows = _rows(30, seed=1)
    rows[4] = {"text": rows[4]["text"], "label": 7}
    _write(tmp_path / "train.jsonl", rows)
    _write(tmp_path / "test.jsonl", _rows(6, seed=2))
    config = _project(tmp_path, tiny_model_dir, "{train: [train.jsonl], test: [test.jsonl]}")
    from tunekit.data.prepare import DataErrors

    with pytest.raises(DataErrors) as refused:
        _prepare(config)
    [problem] = refused.value.problems.errors
    assert problem.render().startswith(f"{tmp_path / 'train.jsonl'}:5: error:")
    assert "'label' is a number (7) where text belongs" in problem.message
    assert _prepare(config, "data.convert_types=true").warnings == 1
