"""The typed eval result: eval.json and predictions files round-trip exactly, and a file that is not one is a
UserError that names it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from result_helpers import FIXTURE, fixture_dict, sample_result
from tunekit.errors import UserError
from tunekit.results import (
    CandidateResult,
    EvalResult,
    PredictionRow,
    RowOutputs,
    read_predictions,
    write_predictions,
)
from tunekit.runfolder import EvalFolder, RunFolder


def ran_with_rows() -> CandidateResult:
    fixture = sample_result().candidates[-1]
    rows = RowOutputs(
        prompts=[[{"role": "user", "content": "a?"}], [{"role": "user", "content": "b?"}]],
        raw=['{"label": "x", "sources": [1]}', "y"], scored=['{"label": "x"}', "y"], scores=[1.0, 0.0],
        latency_ms={1: 12.5}, retrieved=[["doc#1"], ["doc#2"]],
    )
    return fixture.model_copy(update={"rows": rows})


def test_an_eval_json_round_trips_exactly(tmp_path: Path) -> None:
    result = EvalResult.read(FIXTURE)
    result.write(tmp_path / "eval.json")
    assert (tmp_path / "eval.json").read_bytes() == FIXTURE.read_bytes()
    assert EvalResult.read(tmp_path / "eval.json") == result
    gate = result.gates[0]
    assert (gate.metric, gate.op, gate.threshold) == ("accuracy", ">=", 0.85)  # written as text, read parsed


def test_an_eval_json_from_before_rounds_still_reads(tmp_path: Path) -> None:
    older = json.loads(FIXTURE.read_text())
    del older["rounds"]  # written before `tunekit iterate` existed
    (tmp_path / "eval.json").write_text(json.dumps(older))
    assert EvalResult.read(tmp_path / "eval.json").rounds == []


def test_an_eval_json_from_before_constrained_decoding_still_reads(tmp_path: Path) -> None:
    older = json.loads(FIXTURE.read_text())
    del older["constraint"]  # written before eval.constrained existed: no constraint, no rates, no ECE
    for candidate in older["candidates"]:
        del candidate["structured"], candidate["calibration"]
        candidate["metrics"].pop("ece", None)
    (tmp_path / "eval.json").write_text(json.dumps(older))
    result = EvalResult.read(tmp_path / "eval.json")
    assert result.constraint is None
    assert all(c.structured is None and c.calibration is None for c in result.candidates)


def test_fields_a_reader_does_not_know_are_ignored_so_older_readers_read_newer_files(tmp_path: Path) -> None:
    # How an older tunekit reads this one's eval.json (constraint, structured, calibration): the records ignore
    # unknown keys, as they did before those fields existed.
    newer = fixture_dict()
    newer["written_by_a_later_version"] = {"x": 1}
    newer["candidates"][0]["another_new_record"] = [1, 2]
    (tmp_path / "eval.json").write_text(json.dumps(newer))
    assert EvalResult.read(tmp_path / "eval.json") == sample_result()


def test_per_row_outputs_go_to_predictions_not_eval_json(tmp_path: Path) -> None:
    candidate = ran_with_rows()
    result = sample_result().model_copy(update={"candidates": [candidate]})
    folder = EvalFolder(tmp_path)
    result.write(folder.result_path)
    assert "doc#1" not in folder.result_path.read_text(encoding="utf-8")
    assert folder.result() == result.model_copy(update={"candidates": [candidate.model_copy(update={"rows": None})]})

    rows = candidate.prediction_rows(["x", "z"], [{"lang": "en"}, {}])
    write_predictions(folder.predictions_path(candidate.name), rows)
    assert folder.predictions(candidate.name) == rows
    assert folder.predictions(candidate.name, limit=1) == rows[:1]
    assert folder.predictions("nobody") == []
    first, second = rows
    assert (first.prediction, first.scored_answer, first.correct, first.latency_ms) == (
        '{"label": "x", "sources": [1]}', '{"label": "x"}', True, None)
    assert (second.scored_answer, second.correct, second.score, second.latency_ms) == (None, False, 0.0, 12.5)
    assert first.meta == {"lang": "en"} and second.retrieved == ["doc#2"]


def test_passed_all_is_read_from_the_gate_outcomes_not_trusted(tmp_path: Path) -> None:
    raw = fixture_dict()
    few_shot = raw["candidates"][1]
    assert few_shot["passed_all"] is False
    few_shot["passed_all"] = True  # a hand edit cannot make a failing candidate pass
    (tmp_path / "eval.json").write_text(json.dumps(raw), encoding="utf-8")
    assert EvalResult.read(tmp_path / "eval.json").candidates[1].passed_all is False


def test_a_run_folder_reads_its_eval_result(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    assert run.eval_result() is None
    sample_result().write(run.eval.result_path)
    assert run.eval_result() == sample_result()


@pytest.mark.parametrize(("content", "message"), [
    ("[]", "must be a JSON object, not list"),
    ("{not json", "not JSON"),
    (json.dumps({**fixture_dict(), "candidates": "zero_shot"}), "candidates"),
    (json.dumps({**fixture_dict(), "gates": ["accuracy is high"]}), "gates.0"),
    (json.dumps({k: v for k, v in fixture_dict().items() if k != "decision"}), "decision"),
])
def test_a_file_that_is_not_an_eval_result_is_a_user_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "eval.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message) as raised:
        EvalResult.read(path)
    assert raised.value.where == str(path) and "tunekit eval" in (raised.value.fix or "")


def test_a_bad_predictions_line_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    good = PredictionRow(index=0, messages=[], reference="a", prediction="a")
    path.write_text(good.model_dump_json() + "\n" + '{"index": "first"}\n', encoding="utf-8")
    assert read_predictions(path, limit=1) == [good]
    with pytest.raises(UserError, match="index") as raised:
        read_predictions(path)
    assert raised.value.where == f"{path}:2"
