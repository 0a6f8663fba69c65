"""Reading JSON out of model outputs, and comparing JSON values the way the metrics do.

Two readers on purpose: `parse_json_output` is strict (the whole output is JSON, optionally inside one
Markdown code fence, as a program consuming it would need); `find_json_object` is lenient (the first
JSON object anywhere in the text) and serves label extraction, where chatter around the answer should
not turn a right label into a wrong one.
"""

from __future__ import annotations

import json
import re
from typing import Any

from tunekit.data.dedupe import normalize_for_match

# ```json\n{...}\n``` with any (or no) info string; models add these even when told not to.
_FENCE = re.compile(r"^\s*```[\w+-]*[ \t]*\n?(.*?)\n?[ \t]*```\s*$", re.DOTALL)
_DECODER = json.JSONDecoder()
_MISSING = object()


def strip_code_fence(text: str) -> str:
    match = _FENCE.match(text)
    return match.group(1) if match else text


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
