"""Output policies: each looks at the model's answer and says whether it may be served, and why not.

JSON validation uses the `jsonschema` library (the draft named by the schema's `$schema`, Draft 2020-12
otherwise). A JSON answer wrapped in a Markdown code fence is accepted and served without the fence,
because small models add fences even when told not to and clients want parseable JSON.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tunekit.guard.input import NamedPattern

_INFO = re.compile(r"[A-Za-z0-9_-]*")  # a fence's info string ("json"): one class, linear


def _fenced_body(text: str) -> str | None:
    r"""The body of `text` if it is one Markdown code fence, else None: what the pattern
    `^\s*```[A-Za-z0-9_-]*\s*\n(.*?)\n?\s*```\s*$` (DOTALL) matched, found with string operations because
    Python's `re` took a minute on it for 4,000 newlines after the opening fence. The body starts after the
    last newline of the white space that follows the info string (the greedy `\s*\n`) and ends where the
    white space before the closing fence starts (the lazy body stops at the first place the rest matches);
    str.strip and the `\s` class agree on what white space is."""
    start = len(text) - len(text.lstrip())
    if not text.startswith("```", start):
        return None
    info_end = _INFO.match(text, start + 3).end()
    space_end = len(text) - len(text[info_end:].lstrip())
    newline = text.rfind("\n", info_end, space_end)
    closing = len(text.rstrip()) - 3
    if newline < 0 or closing < newline + 1 or not text.startswith("```", closing):
        return None
    return text[newline + 1 : max(newline + 1, len(text[:closing].rstrip()))]


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str
    text: str  # the text to serve (a fenced JSON answer comes back without its fence)


@dataclass(frozen=True)
class OutputRules:
    validator: Any | None  # a jsonschema validator, or None when no schema is configured
    denied_patterns: tuple[NamedPattern, ...]
    max_output_chars: int


def schema_validator(schema: dict) -> Any:
    """A validator for `schema`; raises jsonschema.SchemaError when the schema itself is invalid."""
    from jsonschema.validators import validator_for

    cls = validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def check_json_schema(text: str, rules: OutputRules, citation_check: Callable[[str], bool] | None) -> Verdict:
    if rules.validator is None:  # validate_guard_config refuses this combination; kept for direct callers
        return Verdict(True, "no schema configured", text)
    fenced = _fenced_body(text)
    body = text if fenced is None else fenced
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        return Verdict(False, f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", text)
    from jsonschema.exceptions import best_match

    error = best_match(rules.validator.iter_errors(value))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "<root>"
        message = error.message if len(error.message) <= 200 else error.message[:197] + "..."
        return Verdict(False, f"schema violation at {where}: {message}", text)
    return Verdict(True, "valid JSON matching the schema", body.strip())


def check_citations(text: str, rules: OutputRules, citation_check: Callable[[str], bool] | None) -> Verdict:
    if citation_check is None:
        return Verdict(True, "grounding off for this request: no citations required", text)
    if citation_check(text):
        return Verdict(True, "cites a retrieved source", text)
    return Verdict(False, "grounded answer cites none of the retrieved sources", text)


def check_denied_patterns(text: str, rules: OutputRules, citation_check: Callable[[str], bool] | None) -> Verdict:
    for pattern in rules.denied_patterns:
        match = pattern.search(text)
        if match:
            return Verdict(False, f"{pattern.key} /{pattern.source}/ matched {match.group()[:60]!r}", text)
    checked = f"{len(rules.denied_patterns)} denied pattern(s)" if rules.denied_patterns else "no denied patterns set"
    return Verdict(True, f"{checked}; none matched", text)


def check_max_length(text: str, rules: OutputRules, citation_check: Callable[[str], bool] | None) -> Verdict:
    n, limit = len(text), rules.max_output_chars
    if n > limit:
        return Verdict(False, f"{n} characters > max_output_chars {limit}", text)
    return Verdict(True, f"{n} characters <= {limit}", text)


OUTPUT_CHECKS: dict[str, Callable[[str, OutputRules, Callable[[str], bool] | None], Verdict]] = {
    "json_schema": check_json_schema,
    "citations": check_citations,
    "denied_patterns": check_denied_patterns,
    "max_length": check_max_length,
}


def retry_feedback(reason: str) -> str:
    """What a constrained retry adds to the prompt: the schema error and what is expected instead."""
    return (
        f"Your previous answer was rejected ({reason}). Reply again with only a JSON value that matches "
        "the required schema: no explanation, no code fence."
    )
