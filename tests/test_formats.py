"""Every input format, and every kind of bad row, through the same reader the CLI uses."""

import json
from pathlib import Path

import pytest

from tunekit.config import DataConfig
from tunekit.data.load import load_examples
from tunekit.errors import UserError


def jsonl(tmp_path: Path, rows: list, name: str = "d.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def load(path: Path, **data):
    loaded = load_examples([path], DataConfig(**data))
    return loaded.examples, loaded.problems


def test_each_format_becomes_a_conversation(tmp_path):
    rows = [
        {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "u"},
                      {"role": "assistant", "content": "a"}, {"role": "user", "content": "u2"},
                      {"role": "assistant", "content": "a2"}]},
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}], "system": "S"},
        {"instruction": "Translate", "input": "chat", "output": "cat"},
        {"instruction": "Say hi", "input": "", "output": "hi"},
        {"prompt": "2+2=", "completion": "4"},
        {"input": "ticket text", "output": {"category": "bug"}},
        {"text": "my card", "label": "card_arrival"},
        {"text": "raw pretraining text"},
    ]
    examples, problems = load(jsonl(tmp_path, rows), system_prompt="Triage.", user_template="Ticket: {input}",
                              convert_types=True)
    assert [(p.code, p.line) for p in problems.items] == [("converted_type", 6)]  # the object answer, as JSON
    formats = [e.meta["format"] for e in examples]
    assert formats == ["messages", "sharegpt", "alpaca", "alpaca", "prompt_completion", "task", "label", "text"]
    assert [m["role"] for m in examples[0].messages] == ["system", "user", "assistant", "user", "assistant"]
    assert examples[1].messages[0] == {"role": "system", "content": "S"}
    assert examples[2].messages[-2]["content"] == "Translate\n\nchat"
    assert examples[3].messages[-2]["content"] == "Say hi"
    assert examples[5].messages == [
        {"role": "system", "content": "Triage."},
        {"role": "user", "content": "Ticket: ticket text"},
        {"role": "assistant", "content": '{"category": "bug"}'},
    ]
    assert examples[6].label == "card_arrival"
    assert examples[7].meta["raw_text"] is True
    assert [e.line for e in examples] == list(range(1, 9))


@pytest.mark.parametrize(
    ("row", "code"),
    [
        ('{"messages": [', "malformed_json"),
        ("[1, 2]", "not_object"),
        ({"messages": "hi"}, "wrong_type"),
        ({"messages": [{"role": "user"}]}, "missing_field"),
        ({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "a"}]}, "empty_field"),
        ({"messages": [{"role": "human", "content": "x"}, {"role": "assistant", "content": "a"}]}, "unknown_role"),
        ({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "x"}]}, "role_order"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "s"}]}, "role_order"),
        ({"messages": [{"role": "system", "content": "s"}]}, "no_assistant"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "a"},
                       {"role": "user", "content": "y"}]}, "ends_with_user"),
        ({"instruction": ["a"], "output": "x"}, "wrong_type"),
        ({"input": "ticket", "output": {"category": "bug"}}, "wrong_type"),  # unless data.convert_types
        ({"text": "my card", "label": 7}, "wrong_type"),
        ({"prompt": "p", "completion": True}, "wrong_type"),
        ({"prompt": "p", "completion": None}, "missing_field"),
        ({"question": "q", "answer": "a"}, "unknown_format"),
        ({"conversations": [{"from": "alien", "value": "x"}]}, "unknown_role"),
    ],
)
def test_bad_rows_are_reported_with_line_and_fix(tmp_path, row, code):
    good = {"prompt": "p", "completion": "c"}
    examples, problems = load(jsonl(tmp_path, [good, row, good]))
    assert len(examples) == 2
    [problem] = problems.errors
    assert problem.code == code and problem.line == 2
    if code == "wrong_type":
        assert "where text belongs" in problem.message or "must be" in problem.message
    assert problem.render().startswith(f"{tmp_path / 'd.jsonl'}:2: error:")
    assert problem.fix


def test_all_problems_are_collected_not_just_the_first(tmp_path):
    rows = ["{bad", {"prompt": "p"}, {"prompt": "p", "completion": "c"}, "also bad", {"messages": []}]
    _, problems = load(jsonl(tmp_path, rows))
    assert [p.line for p in problems.errors] == [1, 2, 4, 5]


def test_encoding_bom_and_crlf(tmp_path):
    path = tmp_path / "d.jsonl"
    good = json.dumps({"prompt": "p", "completion": "c"}).encode()
    path.write_bytes(b"\xef\xbb\xbf" + good + b"\r\n" + b'{"prompt": "\xff\xfe", "completion": "c"}\r\n' + good)
    examples, problems = load(path)
    assert len(examples) == 2
    codes = {(p.code, p.severity, p.line) for p in problems.items}
    assert ("bom", "warning", 1) in codes
    assert ("crlf", "warning", 1) in codes
    assert ("not_utf8", "error", 2) in codes


def test_csv_with_column_map_and_tsv(tmp_path):
    csv_path = tmp_path / "d.csv"
    csv_path.write_text('question,answer\n"Hi, there",hello\nBye,"see, you"\n', encoding="utf-8")
    examples, problems = load(csv_path, columns={"prompt": "question", "completion": "answer"})
    assert not problems.items
    assert examples[0].messages[0]["content"] == "Hi, there" and examples[1].line == 3
    tsv = tmp_path / "d.tsv"
    tsv.write_text("text\tlabel\nmy card\tcard_arrival\n", encoding="utf-8")
    examples, _ = load(tsv)
    assert examples[0].label == "card_arrival"


def test_row_metadata_is_kept_for_slicing(tmp_path):
    """Short scalar columns and a row's own `meta` survive loading (governance.slices groups by them);
    content fields, long text and nested values do not become metadata."""
    csv_path = tmp_path / "d.csv"
    notes = "x" * 300
    csv_path.write_text(f"question,answer,region,notes\nHi,hello,emea,{notes}\n", encoding="utf-8")
    (example,), _ = load(csv_path, columns={"prompt": "question", "completion": "answer"})
    assert example.meta == {"region": "emea", "format": "prompt_completion"}
    path = jsonl(tmp_path, [{"text": "my card", "label": "card_arrival", "tier": 2,
                             "meta": {"channel": "chat", "trace": {"id": 1}, "format": "spoofed"}}])
    (example,), _ = load(path)
    assert example.meta == {"tier": 2, "channel": "chat", "format": "label"}


def test_json_array_keeps_line_numbers(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"prompt": "a", "completion": "b"},\n\n  {"prompt": "c"}\n]\n', encoding="utf-8")
    examples, problems = load(path)
    assert examples[0].line == 2
    assert problems.errors[0].line == 4 and problems.errors[0].code == "missing_field"


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "label": ["x", "y"]}), path)
    examples, problems = load(path)
    assert [e.label for e in examples] == ["x", "y"] and not problems.items


def test_explicit_format_is_enforced(tmp_path):
    _, problems = load(jsonl(tmp_path, [{"prompt": "p", "completion": "c"}]), format="messages")
    assert problems.errors[0].code == "missing_field"


def test_unreadable_paths_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match="is a folder"):
        load(tmp_path)
    (tmp_path / "d.xml").write_text("<a/>")
    with pytest.raises(UserError, match="unknown file type"):
        load(tmp_path / "d.xml")


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    _, problems = load(path)
    assert problems.errors[0].code == "empty_file"
