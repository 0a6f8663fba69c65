"""Helpers for training tests: a tiny project on disk, prepared, ready to train in seconds."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

TUNEKIT = str(Path(sys.executable).with_name("tunekit"))
COLORS = ["red", "green", "blue", "yellow"]


def color_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        color = rng.choice(COLORS)
        words = ["please", "now", "thanks", "quickly", "kindly"]
        filler = " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
        rows.append({"messages": [
            {"role": "user", "content": f"request {i}: paint item {i * 13 % 97} {color} {filler}"},
            {"role": "assistant", "content": color},
        ]})
    return rows


def make_project(root: Path, model_dir: Path, n: int = 160, extra: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in color_rows(n)), encoding="utf-8")
    config = root / "tunekit.yaml"
    config.write_text(
        f"run_dir: {root / 'run'}\nmodel:\n  name: {model_dir}\n  max_seq_len: 128\n"
        "data:\n  files: [data.jsonl]\n  dedupe:\n    near: false\n"
        # compile: false because compiling takes longer than these 8 steps; test_compile.py covers it.
        "training:\n  max_steps: 8\n  batch_size: 4\n  learning_rate: 0.003\n  compile: false\n" + extra,
        encoding="utf-8",
    )
    return config


def tunekit(*args: str, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("env", os.environ.copy())
    return subprocess.run([TUNEKIT, *args], capture_output=True, text=True, **kwargs)


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def run_in_process(config: Path, *overrides: str) -> tuple:
    """`tunekit train` in this process (monkeypatches apply): the config and train()'s result."""
    from tunekit.config import load_config
    from tunekit.train.trainer import train

    cfg = load_config(config, list(overrides))
    return cfg, train(cfg, say=lambda *_: None)
