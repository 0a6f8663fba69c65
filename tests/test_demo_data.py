"""The committed demo data in examples/support_tickets/ equals what scripts/make_demo_data.py writes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "make_demo_data.py"
COMMITTED = ROOT / "examples" / "support_tickets"

CATEGORIES = {"billing", "refund", "bug", "account_access", "outage", "feature_request", "how_to"}
PRIORITIES = {"low", "medium", "high", "urgent"}
PRODUCTS = {"ledgerly", "thermapilot", "trackwise", "shieldline", "snapvault"}


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_demo_data", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    out = tmp_path_factory.mktemp("demo_data")
    return out, _load_script().generate(out)


def test_generated_files_match_committed(generated: tuple[Path, list[Path]]) -> None:
    out, paths = generated
    rels = sorted(p.relative_to(out).as_posix() for p in paths)
    committed_docs = sorted(f"docs/{p.name}" for p in (COMMITTED / "docs").glob("*.md"))
    assert rels == sorted(["tickets.jsonl", *committed_docs])
    for rel in rels:
        assert (out / rel).read_bytes() == (COMMITTED / rel).read_bytes(), f"{rel} is stale; rerun the script"


def test_tickets_schema(generated: tuple[Path, list[Path]]) -> None:
    out, _ = generated
    raw = (out / "tickets.jsonl").read_bytes()
    assert b"\r" not in raw
    lines = raw.decode("utf-8").splitlines()
    assert len(lines) == 2000
    for line in lines:
        row = json.loads(line)
        assert set(row) == {"input", "output"}
        assert isinstance(row["input"], str) and row["input"].strip()
        label = json.loads(row["output"])
        assert list(label) == ["category", "priority", "product"]
        assert label["category"] in CATEGORIES
        assert label["priority"] in PRIORITIES
        assert label["product"] in PRODUCTS


def test_docs(generated: tuple[Path, list[Path]]) -> None:
    out, _ = generated
    docs = sorted((out / "docs").glob("*.md"))
    assert len(docs) == 12
    for doc in docs:
        lines = doc.read_text("utf-8").splitlines()
        assert 25 <= len(lines) <= 80, doc.name
        assert lines[0].startswith("# ")
        assert any(line.startswith("## ") for line in lines)


def test_check_flags_stale_copy(tmp_path: Path) -> None:
    module = _load_script()
    module.generate(tmp_path)
    assert module.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "docs" / "sla-and-priorities.md").write_text("stale\n", encoding="utf-8")
    assert module.check(tmp_path) == ["docs/sla-and-priorities.md"]
    assert module.main(["--check", "--out", str(tmp_path)]) == 1
