"""Citations in answers: find the [n] markers, check them against the sources given, map them to places."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tunekit.rag.retrieve import Retrieved

# `[1]`, `[2, 3]`; not `x[0]` (an index in code), hence the look-behind for a word character.
_CITATION = re.compile(r"(?<!\w)\[\s*(\d+(?:\s*,\s*\d+)*)\s*\]")


@dataclass(frozen=True)
class CitationCheck:
    cited: list[int]  # every [n] in the answer, in order of first appearance
    valid: list[int]  # those that name a source that was given
    invalid: list[int]  # those that do not
    missing: bool  # the answer cites nothing
    ok: bool  # no invalid citation, and at least one when citations are required


def parse_citations(text: str) -> list[int]:
    """Source numbers cited in `text`, each once, in order of first appearance."""
    seen: dict[int, None] = {}
    for match in _CITATION.finditer(text):
        for number in match.group(1).split(","):
            seen.setdefault(int(number), None)
    return list(seen)


def check_citations(text: str, retrieved: Sequence[Retrieved | str], *, required: bool) -> CitationCheck:
    """Check the answer's citations against the sources it was given ([1] is the first)."""
    cited = parse_citations(text)
    valid = [n for n in cited if 1 <= n <= len(retrieved)]
    invalid = [n for n in cited if not 1 <= n <= len(retrieved)]
    missing = not cited
    return CitationCheck(cited, valid, invalid, missing, ok=not invalid and not (required and missing))


def citation_sources(text: str, retrieved: Sequence[Retrieved]) -> list[dict[str, Any]]:
    """Where each valid [n] in the answer points: the chunk id, file and line (or page) range."""
    return [
        {
            "citation": n,
            "chunk_id": item.chunk_id,
            "path": item.path,
            "line_start": item.line_start,
            "line_end": item.line_end,
            "unit": item.unit,
        }
        for n in parse_citations(text)
        if 1 <= n <= len(retrieved)
        for item in (retrieved[n - 1],)
    ]
