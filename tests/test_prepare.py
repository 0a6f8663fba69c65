"""`tunekit data prepare`: clean, dedupe, split and report, atomically, with recorded hashes."""

import json
import random
from pathlib import Path

import pytest

from tunekit.config import load_config
from tunekit.data.prepare import DataErrors, prepare
from tunekit.io import sha256_file
from tunekit.models.load import load_tokenizer
from tunekit.models.resolve import resolve_model

PRODUCTS = ["app", "card", "account", "router", "printer", "laptop", "watch", "speaker"]
ISSUES = ["crashes on start", "will not charge", "shows an error", "is very slow", "lost my data", "cannot log in"]


def ticket_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        product, issue = rng.choice(PRODUCTS), rng.choice(ISSUES)
        words = " ".join(rng.choice(["please", "help", "today", "urgent", "again", "still", "now"]) for _ in range(6))
        rows.append({"text": f"ticket {i}: my {product} {issue} {words}", "label": product})
    rows.append(dict(rows[0]))  # an exact duplicate
    near = dict(rows[1])
    near["text"] = near["text"] + " thanks"
    rows.append(near)  # a near duplicate
    rows.append({"text": "contact me at someone@example.com about my card please", "label": "card"})
    return rows


@pytest.fixture
def project(tmp_path, tiny_model_dir):
    data = tmp_path / "tickets.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ticket_rows(300)), encoding="utf-8")
    config = tmp_path / "tunekit.yaml"
    config.write_text(
        f"run_dir: {tmp_path / 'run'}\nmodel:\n  name: {tiny_model_dir}\n  max_seq_len: 128\n"
        "data:\n  files: [tickets.jsonl]\n  system_prompt: Which product is this ticket about?\n"
        "  dedupe:\n    near_threshold: 0.8\n",
        encoding="utf-8",
    )
    return config


def run_prepare(config: Path, *overrides: str, new_test: bool = False):
    cfg = load_config(config, list(overrides))
    tokenizer = load_tokenizer(resolve_model(cfg.model.name))
    return cfg, *prepare(cfg, tokenizer, new_test=new_test)


def test_prepare_writes_splits_reports_and_hashes(project):
    _, folder, _ = run_prepare(project)
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl", "splits.json", "data_report.md",
                 "data_report.json", "token_lengths.png", "config.yaml"):
        assert (folder / name).is_file(), name
    manifest = json.loads((folder / "splits.json").read_text())
    assert manifest["inputs"][0]["sha256"] == sha256_file(project.parent / "tickets.jsonl")
    assert manifest["splits"]["test"]["sha256"] == sha256_file(folder / "test.jsonl")
    report = json.loads((folder / "data_report.json").read_text())
    assert report["dropped"]["exact_duplicate"] == 1 and report["dropped"]["near_duplicate"] >= 1
    assert report["pii"]["found"] == {"email": 1} and report["pii"]["redacted_examples"] == 1
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    rows += [json.loads(line) for line in (folder / "test.jsonl").read_text().splitlines()]
    assert not any("someone@example.com" in json.dumps(r) for r in rows)
    assert all(r["messages"][0] == {"role": "system", "content": "Which product is this ticket about?"} for r in rows)
    # stratified: every product appears in test in roughly its share
    test_labels = {r["label"] for r in rows[-manifest["splits"]["test"]["rows"]:]}
    assert test_labels == set(PRODUCTS)
    assert "## Label balance" in (folder / "data_report.md").read_text()


def test_prepare_is_deterministic_and_seed_dependent(project):
    _, folder, _ = run_prepare(project)
    first = {n: (folder / f"{n}.jsonl").read_bytes() for n in ("train", "validation", "test")}
    _, folder, _ = run_prepare(project)  # the second run keeps the pinned test set and cuts the rest alike
    assert {n: (folder / f"{n}.jsonl").read_bytes() for n in first} == first
    _, folder, _ = run_prepare(project, "data.split.seed=99", "data.pin_test=false")
    assert (folder / "test.jsonl").read_bytes() != first["test"]


def test_the_first_test_split_stays_pinned_while_the_data_grows(project):
    from tunekit.runfolder import ProjectFolder

    cfg, folder, result = run_prepare(project)
    pinned = ProjectFolder.of(cfg)
    test = (folder / "test.jsonl").read_bytes()
    assert pinned.pinned_test_path.read_bytes() == test
    record = json.loads(pinned.pinned_record_path.read_text())
    assert record["sha256"] == sha256_file(folder / "test.jsonl") and record["rows"] == len(result.splits["test"])
    assert str(project.parent) not in test.decode()  # sources relative to the config: the same bytes anywhere

    more = [{"text": f"new ticket {i}: my printer {word} again", "label": "printer"}
            for i, word in enumerate(["beeps", "jams", "smokes", "rattles", "blinks", "hums", "squeaks", "stalls"])]
    with (project.parent / "tickets.jsonl").open("a") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in more))
    _, folder, grown = run_prepare(project, "data.split.seed=7")  # new rows and another seed: same test set
    assert (folder / "test.jsonl").read_bytes() == test
    trained = (folder / "train.jsonl").read_text() + (folder / "validation.jsonl").read_text()
    assert all(r["text"] in trained for r in more)
    assert grown.pin == record

    _, folder, renewed = run_prepare(project, "data.split.seed=7", new_test=True)
    assert (folder / "test.jsonl").read_bytes() != test
    assert pinned.pinned_test_path.read_bytes() == (folder / "test.jsonl").read_bytes()
    assert renewed.pin["replaced"]["sha256"] == record["sha256"] and renewed.pin["replaced"]["removed"] > 0


def test_an_edited_pinned_test_set_is_refused(project):
    from tunekit.errors import UserError
    from tunekit.runfolder import ProjectFolder

    cfg, _, _ = run_prepare(project)
    path = ProjectFolder.of(cfg).pinned_test_path
    path.write_text(path.read_text()[:-100] + "\n")
    with pytest.raises(UserError, match="does not match its recorded SHA-256"):
        run_prepare(project)


def test_bad_input_writes_nothing(project):
    with (project.parent / "tickets.jsonl").open("a") as fh:
        fh.write("{broken\n")
    with pytest.raises(DataErrors) as err:
        run_prepare(project)
    assert err.value.problems.errors[0].code == "malformed_json"
    assert not (project.parent / "run").exists()


def test_failure_midway_leaves_previous_output_intact(project, monkeypatch):
    _, folder, _ = run_prepare(project)
    before = (folder / "train.jsonl").read_bytes()
    import tunekit.data.report as report

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report, "plot_lengths", explode)
    with pytest.raises(RuntimeError):
        run_prepare(project, "data.split.seed=5")
    assert (folder / "train.jsonl").read_bytes() == before
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".data.")]


def test_too_long_examples_are_dropped(project):
    _, _, result = run_prepare(project)
    lengths = sorted(n for v in result.lengths.values() for n in v)
    median = lengths[len(lengths) // 2]
    _, _, result = run_prepare(project, f"model.max_seq_len={median}", "data.pin_test=false")  # the pin stays as is
    assert result.dropped["too_long"] > 0
    assert max(max(v) for v in result.lengths.values() if v) <= median
