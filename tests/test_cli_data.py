"""`tunekit data ...` as a user runs it: a real process, real files, exit codes and messages."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunekit.config import DataConfig
from tunekit.data.check import check_files

TUNEKIT = str(Path(sys.executable).with_name("tunekit"))
SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def tunekit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([TUNEKIT, *args], capture_output=True, text=True, cwd=cwd, env=os.environ.copy())


def chat(user: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def assert_user_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    for needle in needles:
        assert needle in output, output


def test_unreadable_inputs_exit_2_without_traceback(tmp_path):
    assert_user_error(tunekit("data", "check", str(tmp_path / "missing.jsonl"), "--no-tokens"), "does not exist")
    assert_user_error(tunekit("data", "check", str(tmp_path), "--no-tokens"), "is a folder")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert_user_error(tunekit("data", "check", str(empty), "--no-tokens"), "empty.jsonl", "file is empty")
    noise = tmp_path / "noise.jsonl"
    noise.write_bytes(bytes(range(256)) * 40 + b"\n\x00\xff{]")
    assert_user_error(tunekit("data", "check", str(noise), "--no-tokens"), "noise.jsonl:1")
    huge = tmp_path / "huge.jsonl"
    huge.write_text('{"text": "' + "a" * (50 * 1024 * 1024) + '"}\n' + json.dumps(chat("q", "a")) + "\n")
    assert_user_error(tunekit("data", "check", str(huge), "--no-tokens"), "huge.jsonl:1", "MB")
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("data:\n  dedupe:\n    near_threshold: 3\n")
    assert_user_error(
        tunekit("data", "check", str(huge), "--config", str(bad_config)), "data.dedupe.near_threshold"
    )


def test_every_problem_is_printed_with_file_line_and_fix(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        json.dumps(chat("hello there, my card is blocked", "Call us.")) + "\n"
        + "{not json\n"
        + json.dumps({"messages": [{"role": "robot", "content": "x"}]}) + "\n"
        + json.dumps(chat("hello there, my card is blocked", "Call us.")) + "\n"
        + json.dumps(chat("reach me at jane.doe@example.com", "ok")) + "\n",
        encoding="utf-8",
    )
    result = tunekit("data", "check", str(path), "--no-tokens")
    assert result.returncode == 2
    out = result.stdout
    assert f"{path}:2: error: malformed JSON" in out
    assert f"{path}:3: error: messages[0] has unknown role 'robot'" in out
    assert f"{path}:4: warning: exact duplicate of {path}:1" in out
    assert f"{path}:5: warning: contains email" in out
    assert "(" in out.split("malformed JSON")[1].splitlines()[0]  # the fix is on the same line


def test_exit_codes_and_json_report(tmp_path):
    rows = [chat(f"question number {i} about topic {i * 7}", "a") for i in range(5)]
    clean = write_jsonl(tmp_path / "clean.jsonl", rows)
    result = tunekit("data", "check", str(clean), "--no-tokens", "--json")
    assert result.returncode == 0, result.stdout
    report = json.loads(result.stdout)
    assert report["examples"] == 5 and report["errors"] == 0 and report["exit_code"] == 0
    warn = write_jsonl(tmp_path / "warn.jsonl", [chat("same question", "a"), chat("same question", "a")])
    result = tunekit("data", "check", str(warn), "--no-tokens", "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["problem_counts"]["duplicate"] == 1


def test_token_lengths_with_a_real_tokenizer(tmp_path, tiny_model_dir):
    rows = [chat("short", "a"), chat("long " * 300, "b")]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    result = tunekit("data", "check", str(path), "--model", str(tiny_model_dir), "--set", "model.max_seq_len=200",
                     "--json")
    report = json.loads(result.stdout)
    assert report["token_lengths"]["over_max_seq_len"] == 1
    too_long = [p for p in report["problems"] if p["code"] == "too_long"]
    assert too_long[0]["line"] == 2 and "max_seq_len 200" in too_long[0]["message"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=2000))
def test_any_bytes_never_raise_out_of_check(tmp_path, blob):
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(blob)
    report = check_files([path], DataConfig())
    assert report.problems.exit_code() in (0, 1, 2)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.dictionaries(st.sampled_from(["messages", "text", "label", "prompt", "completion", "input",
                                                 "output", "conversations", "instruction"]),
                                st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                                             lambda c: st.lists(c, max_size=3)
                                             | st.dictionaries(st.text(max_size=8), c, max_size=3),
                                             max_leaves=8)),
                max_size=8))
def test_any_json_rows_never_raise_out_of_check(tmp_path, rows):
    path = tmp_path / "fuzz.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    report = check_files([path], DataConfig())
    assert report.problems.exit_code() in (0, 1, 2)


def test_preview_marks_trained_tokens(tmp_path, tiny_model_dir):
    path = write_jsonl(tmp_path / "d.jsonl", [chat("What is the capital of France?", "Paris")])
    result = tunekit("data", "preview", str(path), "-n", "1", "--model", str(tiny_model_dir))
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout and "trained" in result.stdout
    assert "1 tokens, " not in result.stdout


@pytest.mark.skipif(not (SHARED / "banking77" / "train.jsonl").exists(), reason="shared/datasets not present")
def test_banking77_label_balance_and_duplicates():
    result = tunekit("data", "check", str(SHARED / "banking77" / "train.jsonl"), "--no-tokens", "--json")
    assert result.returncode in (0, 1)
    report = json.loads(result.stdout)
    assert report["labels"]["kind"] == "labels"
    assert report["labels"]["labels"]["distinct"] == 77
    assert report["examples"] == 10003
    assert "exact" in report["duplicates"] and "near" in report["duplicates"]
