"""Train/validation/test splits with a fixed seed, stratified by label, with no leakage.

Examples whose prompts are the same or nearly the same form one group, and a group never crosses
splits: otherwise a test question the model saw in training (give or take a typo) inflates every
score that the evaluation stage later reports.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

from tunekit.config import DedupeConfig, SplitConfig
from tunekit.data.dedupe import NearDuplicateIndex, exact_key
from tunekit.data.records import Example
from tunekit.errors import UserError

SPLITS = ("train", "validation", "test")


@dataclass
class Leak:
    test: Example
    train: Example
    similarity: float


def prompt_groups(examples: list[Example], dedupe: DedupeConfig) -> list[int]:
    """Group id per example: union of exact and near-duplicate prompts."""
    parent = list(range(len(examples)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_seen: dict[str, int] = {}
    index = NearDuplicateIndex(dedupe.near_threshold, dedupe.num_perm) if dedupe.near else None
    for i, example in enumerate(examples):
        key = exact_key(example.prompt_text)
        if key in first_seen:
            parent[find(i)] = find(first_seen[key])
            continue
        first_seen[key] = i
        for j, _ in index.add(i, example.prompt_text) if index else []:
            parent[find(i)] = find(j)
    return [find(i) for i in range(len(examples))]


def split_examples(
    examples: list[Example], split: SplitConfig, dedupe: DedupeConfig, strata: list[str | None]
) -> dict[str, list[Example]]:
    groups = prompt_groups(examples, dedupe)
    members: dict[int, list[int]] = defaultdict(list)
    for i, group in enumerate(groups):
        members[group].append(i)
    by_stratum: dict[str, list[int]] = defaultdict(list)
    for group in sorted(members):
        by_stratum[str(strata[group])].append(group)
    rng = random.Random(split.seed)
    assigned: dict[str, list[int]] = {name: [] for name in SPLITS}
    for stratum in sorted(by_stratum):
        group_ids = by_stratum[stratum]
        rng.shuffle(group_ids)
        for position, group in enumerate(group_ids):
            # The group's place in its shuffled stratum picks the split, so every stratum is cut
            # in the same proportions and a stratum of one lands in train.
            fraction = (position + 0.5) / len(group_ids)
            name = _split_for(fraction, split)
            assigned[name].extend(members[group])
    return {name: [examples[i] for i in sorted(idx)] for name, idx in assigned.items()}


def _split_for(fraction: float, split: SplitConfig) -> str:
    if fraction < split.test:
        return "test"
    if fraction < split.test + split.validation:
        return "validation"
    return "train"


def find_leaks(train: list[Example], test: list[Example], dedupe: DedupeConfig) -> list[Leak]:
    """Test examples whose prompt is in train, exactly or nearly."""
    by_key = {exact_key(e.prompt_text): e for e in train}
    index = NearDuplicateIndex(dedupe.near_threshold, dedupe.num_perm)
    for i, example in enumerate(train):
        index.add(i, example.prompt_text)
    leaks = []
    for example in test:
        if (twin := by_key.get(exact_key(example.prompt_text))) is not None:
            leaks.append(Leak(example, twin, 1.0))
        elif matches := index.query(example.prompt_text):
            leaks.append(Leak(example, train[matches[0][0]], matches[0][1]))
    return leaks


def refuse_leaks(leaks: list[Leak], fix: str = "turn data.dedupe back on or remove the duplicates") -> None:
    if not leaks:
        return
    shown = "\n".join(f"  {k.test.where} ~ {k.train.where} (similarity {k.similarity:.2f})" for k in leaks[:20])
    raise UserError(
        f"refusing to write a test split that shares {len(leaks)} example(s) with train:\n{shown}",
        fix=fix,
    )
