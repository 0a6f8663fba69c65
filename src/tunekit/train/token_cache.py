"""The train and validation splits as token arrays on disk: encoded once per run, memory-mapped by every
training process, and read row by row, so that each process reads only the rows of its own micro-batches.

Why not a list of Python ints per process, as before: those cost ~36 bytes a token in every process (a
million 500-token rows: 18 GB each), and every process tokenized every row. The arrays here cost 5 bytes a
token on disk, shared through the page cache; each process touches only its rows' pages. Every process still
knows every row's length (the offsets), which the length-grouped batch order needs to be the same everywhere.

A folder per split and encoding (`data/encoded/<split>-<key>/`): the key hashes the split file, the
tokenizer, the chat template and the encoding options, so any change encodes again. Written to a temp folder
and renamed, so processes that race to write it (several machines on a shared filesystem) each see a whole one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tunekit.data.records import read_split
from tunekit.data.tokenize import IGNORE_INDEX
from tunekit.io import atomic_dir
from tunekit.runfolder import DataFolder, chat_template_hash
from tunekit.train.batches import Features, encode_all

FORMAT = 1  # bump when the arrays' layout or meaning changes


class EncodedSplit(Sequence[Features]):
    """Rows of token ids and trained-token flags, read on demand; `rows_read` counts the distinct rows this
    process read (the shard it trained on)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.ids = np.load(folder / "ids.npy", mmap_mode="r")
        self.trained = np.load(folder / "trained.npy", mmap_mode="r")
        self.offsets = np.load(folder / "offsets.npy")
        self.lengths: list[int] = np.diff(self.offsets).tolist()
        self._read: set[int] = set()

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        self._read.add(int(index) % len(self))
        ids = self.ids[start:end].tolist()
        labels = np.where(self.trained[start:end], self.ids[start:end], IGNORE_INDEX).tolist()
        return Features(ids, labels)

    @property
    def rows_read(self) -> int:
        return len(self._read)


def row_lengths(features: Sequence[Features]) -> list[int]:
    """Every row's length, without reading the rows of an EncodedSplit."""
    return list(features.lengths) if isinstance(features, EncodedSplit) else [len(f) for f in features]


def encoding_key(split: Path, tokenizer: Any, options: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    with open(split, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    identity = {"format": FORMAT, "tokenizer": str(getattr(tokenizer, "name_or_path", "")),
                "vocab": len(tokenizer), "template": chat_template_hash(tokenizer), **options}
    digest.update(json.dumps(identity, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def ensure_encoded(data: DataFolder, split: str, tokenizer: Any, options: dict[str, Any], say: Any = print) -> Path:
    """The encoded folder of `split`, written first if it is not there yet."""
    source = data.split_path(split)
    folder = data.root / "encoded" / f"{split}-{encoding_key(source, tokenizer, options)}"
    if folder.is_dir():
        return folder
    features = encode_all(read_split(source), tokenizer, **options)
    lengths = [len(f) for f in features]
    offsets = np.zeros(len(features) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.fromiter((t for f in features for t in f.input_ids), dtype=np.int32, count=int(offsets[-1]))
    trained = np.fromiter((label != IGNORE_INDEX for f in features for label in f.labels), dtype=np.bool_,
                          count=int(offsets[-1]))
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(folder, replace=True) as tmp:
        np.save(tmp / "ids.npy", ids)
        np.save(tmp / "trained.npy", trained)
        np.save(tmp / "offsets.npy", offsets)
    say(f"encoded {split}: {len(features)} rows, {int(offsets[-1])} tokens -> {folder}")
    return folder


def encoded_splits(data: DataFolder, tokenizer: Any, options: dict[str, Any], say: Any = print) -> dict[str, Any]:
    """The train and validation splits, encoded (once) and opened."""
    return {split: EncodedSplit(ensure_encoded(data, split, tokenizer, options, say))
            for split in ("train", "validation")}
