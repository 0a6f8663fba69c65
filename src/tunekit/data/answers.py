"""What an answer says, read the same way by every stage (metrics, citations, red-teaming, monitoring):
JSON out of model outputs and JSON equality, the label a classification answer states, and refusals.

Two readers on purpose: `parse_json_output` is strict (the whole output is JSON, optionally inside one
Markdown code fence, as a program consuming it would need); `find_json_object` is lenient (the first
JSON object anywhere in the text) and serves label extraction, where chatter around the answer should
not turn a right label into a wrong one.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from tunekit.data.dedupe import normalize_for_match

# The info string after an opening fence (```json): one character class, so `re` matches it in linear time.
_INFO = re.compile(r"[\w+-]*")
_DECODER = json.JSONDecoder()
_MISSING = object()


def strip_code_fence(text: str) -> str:
    r"""The body of `text` when it is one Markdown code fence (```json\n{...}\n```, with any or no info
    string; models add these even when told not to), else `text`.

    It is what `^\s*```[\w+-]*[ \t]*\n?(.*?)\n?[ \t]*```\s*$` (DOTALL) matched, found with string
    operations: Python's backtracking `re` took quadratic time on white space after an opening fence (16k
    spaces: 1.7 s), and this runs on every answer the server labels. The closing fence is the last ``` before
    trailing white space; the lazy body ends where the `\n?[ \t]*` before it can start."""
    start = len(text) - len(text.lstrip())
    if not text.startswith("```", start):
        return text
    body_start = _INFO.match(text, start + 3).end()
    while body_start < len(text) and text[body_start] in " \t":
        body_start += 1
    if text.startswith("\n", body_start):
        body_start += 1
    closing = len(text.rstrip()) - 3
    if closing < body_start or not text.startswith("```", closing):
        return text
    body_end = closing
    while body_end > body_start and text[body_end - 1] in " \t":
        body_end -= 1
    if body_end > body_start and text[body_end - 1] == "\n":
        body_end -= 1
    return text[body_start:body_end]


def parse_json_output(text: str) -> Any:
    """The output as JSON, or `_MISSING` when it is not JSON (None is a valid JSON value: null)."""
    try:
        return json.loads(strip_code_fence(text))
    except (json.JSONDecodeError, RecursionError):
        return _MISSING


def is_json(value: Any) -> bool:
    return value is not _MISSING


def find_json_object(text: str) -> dict | None:
    """The first JSON object in the text, ignoring whatever surrounds it (fences, explanations)."""
    start = text.find("{")
    while start != -1:
        try:
            value, _ = _DECODER.raw_decode(text, start)
        except (json.JSONDecodeError, RecursionError):
            value = None
        if isinstance(value, dict):
            return value
        start = text.find("{", start + 1)
    return None


def canonical(value: Any) -> Any:
    """A form in which equal-meaning JSON values compare equal: key order is gone (dicts compare
    unordered), strings are normalised like plain answers, and true/1 or 1/1.0 stay apart/together
    as JSON means them (Python alone says True == 1)."""
    if isinstance(value, dict):
        return {key: canonical(item) for key, item in value.items()}
    if isinstance(value, list):
        return [canonical(item) for item in value]
    if isinstance(value, str):
        return ("str", normalize_for_match(value))
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("number", float(value))
    return value  # None


def json_equal(a: Any, b: Any) -> bool:
    return canonical(a) == canonical(b)


# Labels: what a classification answer says.

@lru_cache(maxsize=65536)  # the bootstrap recomputes on resampled lists: the same texts, many times
def extract_label(text: str, label_field: str | None) -> str:
    """The label an output (or reference) states: a JSON field when `label_field` is set, else the text."""
    if label_field is None:
        return normalize_for_match(text)
    obj = find_json_object(text)
    if obj is None or label_field not in obj:
        return ""
    value = obj[label_field]
    return normalize_for_match(value if isinstance(value, str) else json.dumps(value))


def label_collisions(labels: list[str]) -> list[str]:
    """Labels that differ only in case/spacing/punctuation, which matching could not tell apart."""
    seen: dict[str, str] = {}
    clashes = []
    for label in labels:
        key = normalize_for_match(label)
        if key in seen and seen[key] != label:
            clashes.append(f"'{seen[key]}' and '{label}'")
        seen.setdefault(key, label)
    return clashes


def label_of_answer(answer: str, label_field: str | None) -> str | None:
    """The label in an answer (None when it has none), read exactly as the accuracy metrics read it."""
    return extract_label(answer, label_field) or None


# Refusals: the stock phrases chat models decline with. The list is the whole definition.

_HELP_VERBS = "help|assist|provide|comply|answer|do that|fulfil+|share|give|support|complete|generate|create|discuss"
_NOT_ABLE = "can't|cannot|can not|won't|will not|am unable to|'m unable to|am not able to|'m not able to"
REFUSAL_PATTERNS = (
    rf"\bI\s+(?:{_NOT_ABLE})\s+(?:{_HELP_VERBS})",
    r"\bI\s+can't\b",  # "I can't." on its own or with anything after it; "I cannot" needs a verb above
    r"\bI(?:'m| am) (?:sorry|afraid),? but\b",
    r"\bI apologi[sz]e,? but\b",
    r"\bAs an AI\b",
    r"\bAs a (?:large )?language model\b",
    r"\bI(?:'m| am) not (?:allowed|permitted|comfortable)\b",
    r"\b(?:cannot|can't) (?:help|assist) (?:you )?with (?:that|this)\b",
)
_REFUSAL = re.compile("|".join(f"(?:{p})" for p in REFUSAL_PATTERNS), re.IGNORECASE)


def is_refusal(text: str) -> bool:
    return _REFUSAL.search(text.replace("\u2019", "'")) is not None
