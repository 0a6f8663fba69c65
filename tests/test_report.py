"""The evaluation report: report.md, a self-contained report.html and plots/, from a typed eval result."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

import tunekit.report.writer
from result_helpers import fixture_dict, sample_result
from tunekit.eval.decision import gate_outcomes
from tunekit.gates import parse_gate
from tunekit.report import write_report
from tunekit.results import EvalResult
from tunekit.runfolder import EvalFolder

SCRIPT = '<script>alert("pwned")</script>'
CHANGED_SPLIT = "the test split differs from the one the previous report used (000000000000... -> b48c278bec2b...)"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The fixture result with hostile user text and a changed test split, written once for the module."""
    raw = fixture_dict()
    raw["disagreements"]["rows"][0]["input"] += f" {SCRIPT} & <b>bold</b>"
    raw["previous_test_sha256"] = "0" * 64
    raw["warnings"].append(CHANGED_SPLIT)
    result = EvalResult.model_validate(raw)
    out = tmp_path_factory.mktemp("report")
    paths = write_report(result, EvalFolder(out))
    return {
        "result": raw,
        "out": out,
        "paths": paths,
        "md": (out / "report.md").read_text(encoding="utf-8"),
        "html": (out / "report.html").read_text(encoding="utf-8"),
    }


class TableCells(HTMLParser):
    """Rows of every <table>: lists of (css class, text) per cell."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[tuple[str, str]]] = []
        self._cell: list[str] | None = None
        self._class = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell, self._class = [], dict(attrs).get("class") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append((self._class, " ".join("".join(self._cell).split())))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def html_row(page: str, first_cell: str) -> dict[str, tuple[str, str]]:
    """The candidates-table row whose first cell starts with `first_cell`, keyed by column header."""
    parser = TableCells()
    parser.feed(page)
    header = next(r for r in parser.rows if r and r[0][1] == "candidate")
    row = next(r for r in parser.rows if r and r[0][1].startswith(first_cell) and len(r) == len(header))
    return {h[1]: cell for h, cell in zip(header, row)}


def md_row(md: str, name: str) -> dict[str, str]:
    """The markdown candidates-table row for `name`, keyed by column header."""
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| candidate |"))
    row = next(line for line in lines if re.match(rf"\| (\*\*)?{re.escape(name)}\b", line))
    return dict(zip(_md_cells(header), _md_cells(row)))


def _md_cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip("|").split(" | ")]


def test_writes_every_file_and_returns_their_paths(report: dict[str, Any]) -> None:
    out, paths = report["out"], report["paths"]
    assert {"report.md", "report.html"} <= set(paths)
    assert all(path.is_file() and path.stat().st_size > 0 for path in paths.values())
    pngs = sorted(p.name for p in (out / "plots").iterdir())
    assert sorted(k.removeprefix("plots/") for k in paths if k.startswith("plots/")) == pngs
    # One bar chart per quality or gated metric, the latency and confidence histograms, both confusion matrices.
    assert pngs == sorted(
        [f"metric_{m}.png" for m in ("accuracy", "macro_f1", "exact_match", "latency_p95_ms")]
        + ["latency.png", "confidence.png", "confusion_finetuned.png", "confusion_few_shot.png"]
    )
    assert not (out / "eval.json").exists()  # eval writes the result; the report only renders it


def test_markdown_opens_with_the_decision_then_warnings_then_the_table(report: dict[str, Any]) -> None:
    md, decision = report["md"], report["result"]["decision"]
    assert md.startswith(f"# {decision['headline']}\n")
    for reason in decision["reasons"]:
        assert f"- {reason}" in md
    assert "`few_shot` short by 538" in md
    order = [
        "**Decision: Ship the fine-tune**",
        "## Warnings",
        "## Candidates",
        "## Paired comparisons",
        "## Charts",
        "## Where they disagree",
        "## Provenance",
    ]
    positions = [md.index(heading) for heading in order]
    assert positions == sorted(positions)
    assert f"- ⚠ {CHANGED_SPLIT}" in md
    assert "- `rag` (skipped): retrieval index not configured" in md
    assert "| finetuned − few_shot | accuracy | +0.420 | +0.345 … +0.495 | 95% | 1,000 | yes |" in md
    split = report["result"]["test_split"]
    tail = md[md.index("## Provenance") :]
    assert split["sha256"] in tail and report["result"]["chat_template_sha256"] in tail


def test_markdown_marks_gated_cells(report: dict[str, Any]) -> None:
    finetuned, few_shot, zero_shot = (md_row(report["md"], n) for n in ("finetuned", "few_shot", "zero_shot"))
    assert finetuned["candidate"] == "**finetuned** (chosen)"
    assert finetuned["accuracy"] == "0.880 ✓" and finetuned["latency p95 (ms)"] == "699 ✓"
    assert few_shot["accuracy"] == "0.460 ✗" and few_shot["latency p95 (ms)"] == "2,038 ✗"
    assert zero_shot["accuracy"] == "0.315 ✗" and zero_shot["latency p95 (ms)"] == "1,221 ✓"
    assert finetuned["macro_f1"] == "0.881"  # no gate, no mark
    assert (finetuned["all gates"], few_shot["all gates"]) == ("✓", "✗")
    headers = list(finetuned)
    # Primary metric first, then the other quality metrics, then serving figures.
    assert headers[:4] == ["candidate", "accuracy", "macro_f1", "exact_match"]
    assert headers.index("latency p50 (ms)") > headers.index("exact_match")


def test_structured_outputs_and_calibration_sit_beside_the_candidates(report: dict[str, Any]) -> None:
    md, page = report["md"], report["html"]
    order = ["## Candidates", "## Structured outputs", "## Calibration", "## Paired comparisons"]
    assert [md.index(h) for h in order] == sorted(md.index(h) for h in order)
    assert "decoded under one json schema, inferred from 1,480 train answers" in md
    assert "the same rate without it, on the same 64 test rows" in md
    assert "| candidate | decoded under | json_valid with the constraint | json_valid without it | rows |" in md
    assert "| zero_shot | json schema | 1.000 | 0.406 | 64 | 21.4 |" in md
    assert "| finetuned | 0.041 | 0.921 | 0.880 | 200 | 0 |" in md  # ECE, mean confidence, accuracy, answers
    assert md_row(md, "finetuned")["ece"] == "0.041"
    assert "<h2>Structured outputs</h2>" in page and "<h2>Calibration</h2>" in page
    assert "<td>few_shot</td><td>json schema</td><td>1.000</td><td>0.672</td>" in page


def test_an_unconstrained_rag_says_why(tmp_path: Path) -> None:
    raw = fixture_dict()
    rag = raw["candidates"][2] = {**raw["candidates"][0], "name": "rag", "kind": "rag"}
    rag["structured"] = {"constraint": None, "note": "unconstrained: rag.citations is inline", "metric": None}
    md = write_report(EvalResult.model_validate(raw), EvalFolder(tmp_path))["report.md"].read_text(encoding="utf-8")
    assert "| rag | none | – | – | 0 | – |" in md
    assert "- `rag`: unconstrained: rag.citations is inline" in md


def test_html_colours_gated_cells(report: dict[str, Any]) -> None:
    finetuned, few_shot = html_row(report["html"], "finetuned"), html_row(report["html"], "few_shot")
    assert finetuned["accuracy"] == ("pass", "0.880 ✓")
    assert finetuned["latency p95 (ms)"] == ("pass", "699 ✓")
    assert few_shot["accuracy"] == ("fail", "0.460 ✗")
    assert few_shot["latency p95 (ms)"] == ("fail", "2,038 ✗")
    assert finetuned["macro_f1"] == ("", "0.881")


def test_html_is_self_contained(report: dict[str, Any]) -> None:
    page = report["html"]
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.IGNORECASE)
    assert "<link" not in page and "@import" not in page
    sources = re.findall(r'<img src="([^"]+)"', page)
    pngs = sorted((report["out"] / "plots").glob("*.png"))
    assert len(sources) == len(pngs) and all(s.startswith("data:image/png;base64,") for s in sources)
    embedded = {base64.b64decode(s.split(",", 1)[1]) for s in sources}
    assert embedded == {p.read_bytes() for p in pngs}


def test_html_escapes_user_text(report: dict[str, Any]) -> None:
    page = report["html"]
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in page
    # The markdown keeps user text inside code blocks, where it is shown literally.
    md = report["md"]
    block = md[md.index("### Test row 4") :]
    assert f"```text\n{report['result']['disagreements']['rows'][0]['input']}\n```" in block


def test_plots_are_valid_png_images(report: dict[str, Any]) -> None:
    from PIL import Image

    for path in (report["out"] / "plots").glob("*.png"):
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.width >= 300 and image.height >= 200
            image.load()  # decodes every pixel; a truncated file raises here


def test_disagreements_show_the_finetune_and_best_baseline_first(report: dict[str, Any]) -> None:
    md = report["md"]
    row = md[md.index("### Test row 17") : md.index("### Test row 33")]
    assert row.index("`finetuned`:") < row.index("`few_shot`:") < row.index("`zero_shot`:")
    assert "Test rows where `finetuned` and `few_shot` answer differently." in md


def test_a_result_where_no_candidate_ran_still_renders(tmp_path: Path) -> None:
    skipped = {"name": "rag", "kind": "rag", "model": "m", "status": "skipped", "skip_reason": "no index"}
    result = sample_result(
        gates=[], candidates=[skipped], comparisons=[], disagreements={}, warnings=[],
        decision={"verdict": "nothing_meets", "candidate": None, "headline": "No candidate ran.", "reasons": []},
    )
    paths = write_report(result, EvalFolder(tmp_path))
    md = paths["report.md"].read_text(encoding="utf-8")
    assert md.startswith("# No candidate ran.")
    assert "No candidate was evaluated." in md and "- `rag` (skipped): no index" in md
    assert "<h2>Candidates</h2>" in paths["report.html"].read_text(encoding="utf-8")
    assert not [k for k in paths if k.startswith("plots/")]
    assert (tmp_path / "plots").is_dir()


def test_sparse_candidates_render_without_gates_confusion_or_latencies(tmp_path: Path) -> None:
    def ran(name: str, kind: str, metrics: dict) -> dict:
        return {"name": name, "kind": kind, "model": "m", "status": "ok", "metrics": metrics}

    result = sample_result(
        gates=[], metrics=["exact_match"], primary_metric="exact_match", disagreements={},
        decision={"verdict": "use_prompting", "candidate": "zero_shot", "headline": "Use zero_shot.", "reasons": []},
        candidates=[
            ran("zero_shot", "zero_shot", {"exact_match": 0.1}),
            ran("finetuned", "finetuned", {"exact_match": 0.4, "accuracy": None}),
            {"name": "rag", "kind": "rag", "model": "m", "status": "skipped"},
            {"name": "api", "kind": "compare", "model": "m", "status": "skipped", "skip_reason": "connection refused"},
        ],
        comparisons=[{"a": "finetuned", "b": "zero_shot", "metric": "exact_match", "diff": 0.3, "low": -0.05,
                      "high": 0.6, "confidence": 0.9, "samples": 200, "higher_is_better": True}],
    )
    paths = write_report(result, EvalFolder(tmp_path))
    assert sorted(k for k in paths if k.startswith("plots/")) == ["plots/metric_exact_match.png"]
    md = paths["report.md"].read_text(encoding="utf-8")
    assert md_row(md, "finetuned")["exact_match"] == "0.400"
    assert md_row(md, "finetuned")["accuracy"] == "–"
    assert "- `rag` (skipped): no reason given" in md and "- `api` (skipped): connection refused" in md
    assert "| finetuned − zero_shot | exact_match | +0.300 | -0.050 … +0.600 | 90% | 200 | no |" in md
    assert "✓" not in md and "✗" not in md


def test_gate_marks_are_the_outcomes_eval_recorded(tmp_path: Path) -> None:
    gates = [parse_gate("accuracy >= 0.5")]

    def ran(name: str, metrics: dict) -> dict:
        outcomes = [o.model_dump(mode="json") for o in gate_outcomes(gates, metrics)]
        return {"name": name, "kind": "compare", "model": "m", "status": "ok", "metrics": metrics,
                "gate_results": outcomes}

    result = sample_result(gates=["accuracy >= 0.5"], disagreements={},
                           candidates=[ran("a", {"accuracy": 0.6}), ran("b", {"accuracy": 0.4}), ran("c", {})])
    md = write_report(result, EvalFolder(tmp_path))["report.md"].read_text(encoding="utf-8")
    assert md_row(md, "a")["accuracy"] == "0.600 ✓" and md_row(md, "a")["all gates"] == "✓"
    assert md_row(md, "b")["accuracy"] == "0.400 ✗"
    assert md_row(md, "c")["accuracy"] == "– ✗"  # a missing value cannot meet a gate


def test_backticks_in_user_text_cannot_close_the_markdown_code_block(tmp_path: Path) -> None:
    text = "run this:\n```\nrm -rf /\n```\n## Not a heading"
    rows = [{"index": 3, "input": text, "reference": "x", "predictions": {"a": "y"}}]
    result = sample_result(disagreements={"finetune": "a", "baseline": None, "rows": rows})
    md = write_report(result, EvalFolder(tmp_path))["report.md"].read_text(encoding="utf-8")
    assert f"````text\n{text}\n````" in md


def test_rewriting_replaces_old_plots_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    folder = EvalFolder(tmp_path)
    write_report(sample_result(), folder)
    assert (tmp_path / "plots" / "confusion_finetuned.png").exists()
    slim = fixture_dict()
    for candidate in slim["candidates"]:
        candidate["details"] = {}
    paths = write_report(EvalResult.model_validate(slim), folder)
    assert not (tmp_path / "plots" / "confusion_finetuned.png").exists()
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(
        k.removeprefix("plots/") for k in paths if k.startswith("plots/")
    )
    leftovers = [p for p in tmp_path.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert leftovers == []


def test_a_failed_render_keeps_the_previous_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = EvalFolder(tmp_path)
    write_report(sample_result(), folder)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    def broken(*args: Any, **kwargs: Any) -> str:
        raise RuntimeError("renderer failed")

    # Fault injection: the HTML renderer fails after the new charts were drawn into the staging folder.
    monkeypatch.setattr(tunekit.report.writer, "render_html", broken)
    changed = fixture_dict()
    changed["decision"]["headline"] = "A different decision."
    with pytest.raises(RuntimeError, match="renderer failed"):
        write_report(EvalResult.model_validate(changed), folder)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before
