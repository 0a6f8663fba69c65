"""Integration: a real fine-tune of the 135M model on a few hundred banking77 rows beats zero-shot
prompting on accuracy, with a paired-bootstrap 95% interval above zero. Skipped when ../shared is absent."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

import pytest

from train_helpers import tunekit

BANKING77 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "banking77"
LABELS = 8  # a slice of the 77 intents keeps the test a few minutes long and the label list short
ROWS_PER_LABEL = 36  # 288 rows: 230 to train on, 43 to test (15%)


def _rows() -> tuple[list[dict], list[str]]:
    by_label: dict[str, list[dict]] = defaultdict(list)
    for line in (BANKING77 / "train.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        by_label[row["label"]].append(row)
    labels = sorted(by_label)[:: len(by_label) // LABELS][:LABELS]
    rng = random.Random(0)
    rows = [r for label in labels for r in rng.sample(by_label[label], ROWS_PER_LABEL)]
    rng.shuffle(rows)
    return rows, labels


@pytest.mark.slow
@pytest.mark.skipif(not (BANKING77 / "train.jsonl").is_file(), reason="../shared/datasets/banking77 is absent")
def test_finetune_beats_zero_shot_on_banking77(tmp_path: Path, smollm2_dir: Path) -> None:
    rows, labels = _rows()
    (tmp_path / "banking.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    system = f"Classify the online-banking query. Answer with exactly one intent label from: {', '.join(labels)}."
    config = tmp_path / "tunekit.yaml"
    config.write_text(
        f"run_dir: {tmp_path / 'run'}\nmodel:\n  name: {smollm2_dir}\n  max_seq_len: 256\n"
        f"data:\n  files: [banking.jsonl]\n  system_prompt: {json.dumps(system)}\n"
        "  split: {train: 0.8, validation: 0.05, test: 0.15, seed: 7}\n"
        # 14 steps: compiling the layers would cost more than it saves
        # (validation once, at the end: by default it would run every step of so short a run)
        "training:\n  max_steps: 14\n  eval_every: 14\n  batch_size: 8\n  learning_rate: 1.0e-3\n  compile: false\n"
        "eval:\n  candidates: [zero_shot, finetuned]\n  metrics: [accuracy, macro_f1]\n  max_new_tokens: 12\n"
        "  latency: {samples: 2}\n"  # latency is not what this test checks; 16 probes cost ~25 s
        "  unconstrained_samples: 0\n"  # nor the labels' validity without the constraint (a second pass)
        '  gates: ["accuracy >= 0.5"]\n',
        encoding="utf-8",
    )
    train = tunekit("train", str(config))
    assert train.returncode == 0, train.stderr
    proc = tunekit("eval", str(config))
    assert proc.returncode in (0, 1), proc.stderr
    result = json.loads((tmp_path / "run" / "eval" / "eval.json").read_text())
    accuracy = {c["name"]: c["metrics"]["accuracy"] for c in result["candidates"]}
    comparison = result["comparisons"][0]
    assert (comparison["a"], comparison["b"]) == ("finetuned", "zero_shot")
    assert accuracy["finetuned"] > accuracy["zero_shot"], accuracy
    assert comparison["low"] > 0, comparison
    confusion = result["candidates"][1]["details"]["accuracy"]["confusion"]
    assert len(confusion["labels"]) == LABELS
