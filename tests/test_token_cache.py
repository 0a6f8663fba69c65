"""The encoded splits: written once per encoding, read back row by row as exactly what encoding gives."""

import json
from pathlib import Path

from train_helpers import color_rows
from tunekit.data.records import read_split
from tunekit.runfolder import DataFolder
from tunekit.train.batches import encode_all
from tunekit.train.token_cache import EncodedSplit, ensure_encoded, row_lengths

OPTIONS = {"max_seq_len": 48, "loss_on": "assistant", "truncation": "truncate_left"}


def write_split(folder: Path, rows: list[dict]) -> DataFolder:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return DataFolder(folder)


def test_rows_read_back_are_the_encoded_rows_and_only_those_asked_for_are_read(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    data = write_split(tmp_path / "data", color_rows(40))
    said: list[str] = []
    folder = ensure_encoded(data, "train", tokenizer, OPTIONS, say=said.append)
    assert ensure_encoded(data, "train", tokenizer, OPTIONS, say=said.append) == folder and len(said) == 1
    expected = encode_all(read_split(data.split_path("train")), tokenizer, **OPTIONS)
    split = EncodedSplit(folder)
    assert len(split) == len(expected) and row_lengths(split) == [len(f) for f in expected]
    assert split.rows_read == 0  # lengths come from the offsets alone
    for i in (0, 7, 39, 7):
        assert split[i] == expected[i]
    assert split.rows_read == 3

    longer = ensure_encoded(data, "train", tokenizer, {**OPTIONS, "max_seq_len": 64}, say=said.append)
    assert longer != folder and len(said) == 2  # another encoding, another folder
    write_split(tmp_path / "data", color_rows(41))
    assert ensure_encoded(data, "train", tokenizer, OPTIONS, say=said.append) not in (folder, longer)
