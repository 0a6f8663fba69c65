"""`tunekit iterate`: labelled rows from monitoring join the training data, the next round trains and is
scored on the same pinned test set as round 1, with a rounds table; bad labelled rows are refused first."""

from __future__ import annotations

import json
import random
from pathlib import Path

from train_helpers import COLORS, make_project, tunekit
from tunekit.runfolder import EvalFolder, ProjectFolder, RunFolder

EVAL = ("eval:\n  candidates: [zero_shot, finetuned]\n  metrics: [exact_match]\n  max_new_tokens: 4\n"
        "  bootstrap_samples: 200\n  latency: {samples: 1}\n")


def _labelled(n: int) -> list[dict]:
    """Rows as `tunekit monitor export` writes them, after a person fixed the answers."""
    rng = random.Random(11)
    rows = []
    for i in range(n):
        color = rng.choice(COLORS)
        rows.append({"messages": [{"role": "user", "content": f"customer {i} wants shade {color} on part {i * 7}"},
                                  {"role": "assistant", "content": color}],
                     "meta": {"request_id": f"req-{i}", "reasons": "guard_blocked"}})
    return rows


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_iterate_adds_labelled_rows_and_scores_round_2_on_the_pinned_test_set(tmp_path: Path,
                                                                             tiny_model_dir: Path) -> None:
    config = make_project(tmp_path, tiny_model_dir, extra=EVAL)
    assert tunekit("train", str(config)).returncode == 0
    round_1 = RunFolder(tmp_path / "run")
    test_sha = json.loads(round_1.splits_manifest_path.read_text())["splits"]["test"]["sha256"]

    # Refused before any training: a draft still marked needs_label, and a pinned test prompt.
    rows = _labelled(50)
    draft = _write(tmp_path / "draft.jsonl", [*rows[:3], {**rows[3], "needs_label": True}])
    proc = tunekit("iterate", str(config), "--labelled", str(draft))
    assert proc.returncode == 2 and "draft.jsonl:4" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    pinned_row = json.loads(round_1.split_path("test").read_text().splitlines()[1])
    leak = _write(tmp_path / "leak.jsonl", [*rows[:3], {"messages": pinned_row["messages"]}])
    proc = tunekit("iterate", str(config), "--labelled", str(leak))
    assert proc.returncode == 2 and "leak.jsonl:4" in proc.stderr and "test.jsonl:2" in proc.stderr, proc.stderr
    assert not ProjectFolder(tmp_path / "tunekit-pinned" / "tunekit-project").rounds_path.exists()

    relabel = _write(tmp_path / "relabel.jsonl", rows)
    proc = tunekit("iterate", str(config), "--labelled", str(relabel))
    assert proc.returncode in (0, 1), proc.stderr
    assert "rounds on the pinned test set" in proc.stdout

    round_2 = RunFolder(tmp_path / "tunekit-project" / "round-2")
    result = json.loads(EvalFolder(round_2.root / "eval").result_path.read_text())
    assert result["test_split"]["sha256"] == test_sha  # round 2 is scored on round 1's test rows
    assert round_2.split_path("test").read_bytes() == round_1.split_path("test").read_bytes()
    assert [r["round"] for r in result["rounds"]] == [1, 2]
    assert all(r["test_sha256"] == test_sha for r in result["rounds"])
    assert "round-1" in [c["name"] for c in result["candidates"]]  # the previous round is a candidate
    assert "## Rounds" in (round_2.root / "eval" / "report.md").read_text()

    trained = round_2.split_path("train").read_text() + round_2.split_path("validation").read_text()
    assert all(r["messages"][0]["content"] in trained for r in rows)
    project = ProjectFolder(tmp_path / "tunekit-pinned" / "tunekit-project")
    saved = [json.loads(line) for line in project.labelled_path(2).read_text().splitlines()]
    assert len(saved) == 50 and saved[0]["meta"]["request_id"] == "req-0" and saved[0]["meta"]["round"] == 2
    assert saved[0]["meta"]["labelled_from"].endswith("relabel.jsonl:1")
    record = json.loads(project.rounds_path.read_text())["rounds"]
    assert [(r["round"], r["rows_added"]) for r in record] == [(1, 0), (2, 50)]
    assert record[0]["metrics"] and record[1]["metrics"]  # round 1 as this eval measured it
