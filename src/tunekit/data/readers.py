"""Read JSONL, JSON arrays, CSV/TSV and parquet into raw rows with line numbers, collecting problems.

Reading never raises on bad content: a malformed line becomes a Problem naming `file:line`, and
reading goes on, so one pass reports everything that is wrong with a file.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunekit.data.problems import Problems
from tunekit.errors import UserError

BOM = b"\xef\xbb\xbf"
SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
# A line longer than this is almost always a broken export (a whole file on one line, binary data).
MAX_LINE_BYTES = 10 * 1024 * 1024


@dataclass
class RawRow:
    source: str
    line: int
    data: dict[str, Any]


def check_input_path(path: Path) -> None:
    """Refuse what cannot be read at all, before any work: missing, a folder, an unknown suffix."""
    from tunekit.data.hf_datasets import is_dataset_folder

    if not path.exists():
        raise UserError("file does not exist", where=str(path), fix="check the path")
    if is_dataset_folder(path):
        return
    if path.is_dir():
        raise UserError("is a folder, expected a data file or a saved Hugging Face dataset", where=str(path),
                        fix="pass the files inside it, or a folder written by Dataset.save_to_disk")
    if path.suffix.lower() not in SUFFIXES:
        raise UserError(
            f"unknown file type '{path.suffix or '(none)'}'",
            where=str(path),
            fix=f"use one of {', '.join(SUFFIXES)}",
        )


def read_rows(path: Path, problems: Problems) -> list[RawRow]:
    from tunekit.data.hf_datasets import is_dataset_folder, read_dataset_rows

    check_input_path(path)
    if is_dataset_folder(path):  # no lines: the row number (1-based) stands in for one, as for parquet
        return [RawRow(str(path), i + 1, row) for i, row in enumerate(read_dataset_rows(path))]
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(path, problems)
    raw = path.read_bytes()
    if not raw.strip():
        problems.error(str(path), 0, "empty_file", "file is empty", "add examples, one per line")
        return []
    if raw.startswith(BOM):
        problems.warn(str(path), 1, "bom", "file starts with a UTF-8 byte-order mark", "save as UTF-8 without BOM")
        raw = raw[len(BOM) :]
    if b"\r\n" in raw:
        first = raw[: raw.index(b"\r\n")].count(b"\n") + 1
        problems.warn(str(path), first, "crlf", "Windows (CRLF) line endings", "convert to LF line endings")
    if suffix == ".jsonl":
        return list(_read_jsonl(path, raw, problems))
    if suffix == ".json":
        return _read_json_array(path, raw, problems)
    return _read_csv(path, raw, problems, delimiter="\t" if suffix == ".tsv" else ",")


def _decode(source: str, line_no: int, data: bytes, problems: Problems) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.error(
            source, line_no, "not_utf8", f"invalid UTF-8 byte 0x{data[exc.start]:02x} at column {exc.start + 1}",
            "re-save the file as UTF-8",
        )
        return None


def _read_jsonl(path: Path, raw: bytes, problems: Problems) -> Iterator[RawRow]:
    source = str(path)
    for line_no, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        if len(line) > MAX_LINE_BYTES:
            problems.error(
                source, line_no, "line_too_long", f"line is {len(line) / 1e6:.0f} MB",
                "one example per line; lines over 10 MB are refused",
            )
            continue
        text = _decode(source, line_no, line, problems)
        if text is None:
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            problems.error(
                source, line_no, "malformed_json", f"malformed JSON: {exc.msg} at column {exc.colno}",
                "each line must be one complete JSON object",
            )
            continue
        if not isinstance(obj, dict):
            problems.error(
                source, line_no, "not_object", f"expected a JSON object, got {type(obj).__name__}",
                'wrap the example as {"messages": [...]} or another supported format',
            )
            continue
        yield RawRow(source, line_no, obj)


def _read_json_array(path: Path, raw: bytes, problems: Problems) -> list[RawRow]:
    """Parse a JSON array element by element so each example keeps its own line number."""
    source = str(path)
    text = _decode(source, 0, raw, problems)
    if text is None:
        return []
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if pos >= len(text) or text[pos] != "[":
        problems.error(source, 1, "not_array", "a .json file must hold an array of examples", "or use .jsonl")
        return []
    rows: list[RawRow] = []
    pos = _skip_ws(text, pos + 1)
    while pos < len(text) and text[pos] != "]":
        line_no = text.count("\n", 0, pos) + 1
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            problems.error(source, exc.lineno, "malformed_json", f"malformed JSON: {exc.msg}", "fix the syntax")
            return rows
        if isinstance(obj, dict):
            rows.append(RawRow(source, line_no, obj))
        else:
            problems.error(source, line_no, "not_object", f"expected an object, got {type(obj).__name__}")
        pos = _skip_ws(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
    return rows


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _read_csv(path: Path, raw: bytes, problems: Problems, delimiter: str) -> list[RawRow]:
    source = str(path)
    text = _decode(source, 0, raw, problems)
    if text is None:
        return []
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows: list[RawRow] = []
    try:
        for record in reader:
            if None in record:
                problems.error(
                    source, reader.line_num, "csv_columns", "more values than header columns",
                    "quote fields that contain the delimiter",
                )
                continue
            rows.append(RawRow(source, reader.line_num, {k: v for k, v in record.items() if v is not None}))
    except csv.Error as exc:
        problems.error(source, reader.line_num, "csv_error", f"unreadable CSV: {exc}", "check the quoting")
    return rows


def _read_parquet(path: Path, problems: Problems) -> list[RawRow]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        problems.error(str(path), 0, "bad_parquet", f"unreadable parquet: {exc}", "re-export the file")
        return []
    # Parquet has no lines; the row number (1-based) stands in for one.
    return [RawRow(str(path), i + 1, row) for i, row in enumerate(table.to_pylist())]
