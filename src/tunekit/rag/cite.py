"""Citations in answers: find them, check them against the sources given, map them to places.

Two places an answer may cite from, read together so every checker agrees: `[n]` markers in prose,
and for structured (JSON) answers a list of source numbers in one field of the JSON object
(`{"category": "billing", "sources": [2]}`), which keeps the answer in the format a program expects.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tunekit.rag.retrieve import Retrieved

# `[1]`, `[2, 3]`; not `x[0]` (an index in code), hence the look-behind for a word character.
_CITATION = re.compile(r"(?<!\w)\[\s*(\d+(?:\s*,\s*\d+)*)\s*\]")
DEFAULT_FIELD = "sources"


@dataclass(frozen=True)
class CitationCheck:
    cited: list[int]  # every source number the answer cites, in order of first appearance
    valid: list[int]  # those that name a source that was given
    invalid: list[int]  # those that do not
    missing: bool  # the answer cites nothing
    ok: bool  # no invalid citation, and at least one when citations are required

    def to_dict(self) -> dict[str, Any]:
        return {"cited": self.cited, "invalid": self.invalid, "missing": self.missing, "ok": self.ok}


def parse_citations(text: str, field: str | None = DEFAULT_FIELD) -> list[int]:
    """Source numbers cited in `text` ([n] markers, then the JSON `field`), each once, in order."""
    seen: dict[int, None] = {}
    for match in _CITATION.finditer(text):
        for number in match.group(1).split(","):
            seen.setdefault(int(number), None)
    for number in _field_numbers(text, field):
        seen.setdefault(number, None)
    return list(seen)


def _field_numbers(text: str, field: str | None) -> list[int]:
    """`"sources": [1, "2", "[3]"]` (or a lone number) in the answer's JSON object."""
    from tunekit.data.answers import find_json_object

    if not field or "{" not in text:
        return []
    value = (find_json_object(text) or {}).get(field)
    items = value if isinstance(value, list) else [value]
    numbers = []
    for item in items:
        if isinstance(item, bool):
            continue
        if isinstance(item, int):
            numbers.append(item)
        elif isinstance(item, str) and (digits := item.strip().strip("[]").strip()).isdigit():
            numbers.append(int(digits))
    return numbers


def without_citation_field(text: str, field: str | None = DEFAULT_FIELD) -> str:
    """The answer with the JSON citation field removed: what quality metrics score, since the
    reference answers (and a program reading them) do not have it. Other text comes back unchanged."""
    from tunekit.data.answers import is_json, parse_json_output

    if not field or "{" not in text:
        return text
    value = parse_json_output(text)
    if not is_json(value) or not isinstance(value, dict) or field not in value:
        return text
    return json.dumps({k: v for k, v in value.items() if k != field}, ensure_ascii=False)


def check_citations(text: str, retrieved: Sequence[Retrieved | str], *, required: bool,
                    field: str | None = DEFAULT_FIELD) -> CitationCheck:
    """Check the answer's citations against the sources it was given ([1] is the first)."""
    cited = parse_citations(text, field)
    valid = [n for n in cited if 1 <= n <= len(retrieved)]
    invalid = [n for n in cited if not 1 <= n <= len(retrieved)]
    missing = not cited
    return CitationCheck(cited, valid, invalid, missing, ok=not invalid and not (required and missing))


def citation_sources(text: str, retrieved: Sequence[Retrieved],
                     field: str | None = DEFAULT_FIELD) -> list[dict[str, Any]]:
    """Where each valid citation in the answer points: the chunk id, file and line (or page) range."""
    return [{"citation": n, **source_place(retrieved[n - 1])}
            for n in parse_citations(text, field) if 1 <= n <= len(retrieved)]


def source_place(item: Retrieved) -> dict[str, Any]:
    return {"chunk_id": item.chunk_id, "path": item.path, "line_start": item.line_start,
            "line_end": item.line_end, "unit": item.unit}


def given_sources(retrieved: Sequence[Retrieved]) -> list[dict[str, Any]]:
    """Every source the model was given, numbered as in its prompt: what a client can show or link even
    when the answer cites none of them (a triage answer in JSON, say)."""
    return [{"source": n, **source_place(item), "heading": item.heading}
            for n, item in enumerate(retrieved, start=1)]
