"""Duplicates, near-duplicates and leakage-free splits on real-sized synthetic data."""

import random

import pytest

from tunekit.config import DedupeConfig, SplitConfig
from tunekit.data.dedupe import find_duplicates
from tunekit.data.records import Example
from tunekit.data.split import find_leaks, refuse_leaks, split_examples
from tunekit.errors import UserError

WORDS = "card account transfer payment refund balance limit fee pin app login statement cash".split()  # noqa: SIM905


def sentence(rng: random.Random, n: int = 14) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def example(prompt: str, answer: str, line: int, label: str | None = None) -> Example:
    msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return Example(msgs, "mem.jsonl", line, label)


def test_exact_ignores_case_and_spacing_and_near_finds_one_word_edits():
    base = "My card payment was declined twice at the shop today, what should I do next?"
    texts = [base, "my  card payment WAS declined twice at the shop today what should i do next",
             base.replace("shop", "store"), "Completely different question about my pension plan."]
    dupes = find_duplicates(texts, threshold=0.7)
    assert dupes.exact == {1: 0}
    assert set(dupes.near) == {2} and dupes.near[2][0] == 0 and dupes.near[2][1] >= 0.7
    assert 3 not in dupes.redundant()


def test_duplicates_are_reproducible_across_runs():
    rng = random.Random(3)
    texts = [sentence(rng) for _ in range(300)]
    texts += [t.replace(t.split()[0], "zzz", 1) for t in texts[:30]]
    first = find_duplicates(texts, threshold=0.8)
    second = find_duplicates(texts, threshold=0.8)
    assert first == second and len(first.near) >= 25


def test_split_is_stratified_seeded_and_groups_near_duplicate_prompts():
    rng = random.Random(0)
    examples = []
    for i in range(600):
        label = ["a", "b", "c"][i % 3]
        examples.append(example(sentence(rng), label, i + 1, label))
    # Near-duplicate prompts (one word changed) with the same answer must stay on one side.
    for i in range(40):
        twin = examples[i].messages[0]["content"].split()
        twin[-1] = "zebra"
        examples.append(example(" ".join(twin), examples[i].label, 700 + i, examples[i].label))
    strata = [e.label for e in examples]
    split = SplitConfig(train=0.8, validation=0.1, test=0.1, seed=7)
    parts = split_examples(examples, split, DedupeConfig(near_threshold=0.7), strata)
    again = split_examples(examples, split, DedupeConfig(near_threshold=0.7), strata)
    assert [e.line for e in parts["test"]] == [e.line for e in again["test"]]
    assert sum(len(v) for v in parts.values()) == len(examples)
    for label in "abc":
        n_test = sum(e.label == label for e in parts["test"])
        assert 15 <= n_test <= 25, (label, n_test)
    assert find_leaks(parts["train"], parts["test"], DedupeConfig(near_threshold=0.7)) == []
    other = split_examples(examples, SplitConfig(seed=8), DedupeConfig(near_threshold=0.7), strata)
    assert [e.line for e in other["test"]] != [e.line for e in parts["test"]]


def test_leaks_are_found_and_refused():
    rng = random.Random(1)
    train = [example(sentence(rng), "x", i) for i in range(50)]
    copy = train[3].messages[0]["content"]
    near = copy.split()
    near[0] = "yacht"
    test = [example(copy, "x", 100), example(" ".join(near), "x", 101), example(sentence(rng), "x", 102)]
    leaks = find_leaks(train, test, DedupeConfig(near_threshold=0.7))
    assert [(k.test.line, k.train.line) for k in leaks] == [(100, 3), (101, 3)]
    with pytest.raises(UserError, match="refusing to write a test split that shares 2"):
        refuse_leaks(leaks)
