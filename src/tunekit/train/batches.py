"""Training data as token tensors, batched by length so that little of each batch is padding.

Batches never mix tokens of different examples in one row (no packing across boundaries), so no
example can attend to another; grouping by length gets most of packing's gain without that risk.
The batch order is a pure function of (seed, epoch), so a resumed run sees exactly the batches the
uninterrupted run would have seen.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from tunekit.data.records import Example
from tunekit.data.tokenize import IGNORE_INDEX, Truncation, encode

# How many batches are sorted together: larger means less padding, smaller means more randomness.
MEGABATCH = 32
# Pad rows to a multiple of this: matmul kernels are faster on aligned shapes.
PAD_MULTIPLE = 8


@dataclass
class Features:
    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def supervised(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels[1:])


def encode_all(
    examples: list[Example], tokenizer: Any, *, max_seq_len: int, loss_on: str, truncation: Truncation
) -> list[Features]:
    features = []
    for example in examples:
        encoded = encode(example, tokenizer, max_seq_len=max_seq_len, loss_on=loss_on, truncation=truncation)
        if encoded is not None:
            features.append(Features(encoded.input_ids, encoded.labels))
    return features


def batch_order(lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool) -> list[list[int]]:
    """Indices of each batch of one epoch, deterministic in (seed, epoch)."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        span = batch_size * MEGABATCH
        order = [
            i for start in range(0, len(order), span)
            for i in sorted(order[start : start + span], key=lambda j: -lengths[j])
        ]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        rng.shuffle(batches)  # otherwise every megabatch would run long-to-short
    return batches


def collate(features: list[Features], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row (rounded up to PAD_MULTIPLE); padding is masked and unsupervised."""
    longest = max(len(f) for f in features)
    width = -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    for row, feature in enumerate(features):
        n = len(feature)
        ids[row, :n] = torch.tensor(feature.input_ids)
        labels[row, :n] = torch.tensor(feature.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
