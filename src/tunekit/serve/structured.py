"""Structured outputs: OpenAI's `response_format` and vLLM's `structured_outputs` as a decoding Constraint.

    {"response_format": {"type": "json_object"}}                                   -> any JSON object
    {"response_format": {"type": "json_schema", "json_schema": {"name": "t", "schema": {...}}}}
    {"structured_outputs": {"json": {...}}}    {"structured_outputs": {"regex": "[A-Z]{3}-[0-9]+"}}
    {"structured_outputs": {"choice": ["billing", "bug"]}}  {"structured_outputs": {"json_object": true}}

The engine enforces the constraint token by token (tunekit.generate), so every answer matches it unless cut by
max_tokens. What a client sends is checked here before any compiling: the schema's size and nesting while the
body is parsed; then that it is a valid JSON schema, with numbers the compiler reads and every `$ref` inside it
(the compiler must never be asked to fetch a URL). A feature the compiler cannot enforce is its own 400,
raised when the request is submitted (or, for a stream, before it starts).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

from tunekit.errors import MissingDependency, UserError
from tunekit.serve.errors import ApiError

MAX_SCHEMA_CHARS = 32_000  # serialized; the engine compiles it on the request's thread
MAX_SCHEMA_DEPTH = 32  # nested objects and arrays
MAX_PATTERN_CHARS = 1_000  # a regex constraint is compiled by the engine (llguidance: linear-time matching)
MAX_CHOICES = 256
MAX_CHOICE_CHARS = 256
UNSUPPORTED = "unsupported_constraint"  # the error code of a constraint the engine cannot enforce


def bounded_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` if it is shallow and small enough (a ValueError saying which it is not): pydantic calls it while
    parsing the request, before anything walks the schema recursively."""
    _check_depth(schema)  # first: serializing a deeper schema could exhaust the stack
    chars = len(json.dumps(schema))
    if chars > MAX_SCHEMA_CHARS:
        raise ValueError(f"the schema is {chars} characters (as JSON), above this server's limit of "
                         f"{MAX_SCHEMA_CHARS}")
    return schema


def check_schema(schema: dict[str, Any], param: str) -> None:
    """A 400 naming `param` unless `schema` is a valid, self-contained JSON schema the compiler can read.

    Checked once the request's model is known, like every check the OpenAPI document cannot express: the
    document can say "an object", not "a valid JSON schema"."""
    try:
        _check_values(schema)
    except ValueError as exc:
        raise ApiError(400, f"{param}: {exc}", param=param) from None
    from jsonschema.exceptions import best_match
    from jsonschema.validators import validator_for

    # Against the meta-schema without format assertions: a `pattern` is the compiler's regex dialect (Rust's,
    # with \p{L} and friends), not Python's, and the compiler names what it cannot read.
    meta = validator_for(schema)
    error = best_match(meta(meta.META_SCHEMA).iter_errors(schema))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "<root>"
        raise ApiError(400, f"{param}: not a valid JSON schema at {where}: {_short(error.message)}", param=param)


def _nodes(schema: dict[str, Any]) -> Iterator[tuple[Any, int]]:
    """Every value in `schema` with its depth, walked without recursion: a deep schema must not exhaust the
    stack here."""
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        yield node, depth
        if isinstance(node, dict):
            stack.extend((value, depth + 1) for value in node.values())
        elif isinstance(node, list):
            stack.extend((value, depth + 1) for value in node)


def _check_depth(schema: dict[str, Any]) -> None:
    if any(depth > MAX_SCHEMA_DEPTH for _, depth in _nodes(schema)):
        raise ValueError(f"the schema nests deeper than this server's limit of {MAX_SCHEMA_DEPTH} levels")


def _check_values(schema: dict[str, Any]) -> None:
    """Numbers the compiler can read (Python's JSON parser takes integers of any size, and NaN), and only local
    `$ref`s: the compiler must never be asked to fetch a URL."""
    for node, _ in _nodes(schema):
        if isinstance(node, int) and not isinstance(node, bool) and not -(2**63) <= node < 2**64:
            raise ValueError(f"the schema holds the integer {_short(str(node), 40)}, which does not fit in 64 bits")
        if isinstance(node, float) and not math.isfinite(node):
            raise ValueError(f"the schema holds {node}, which is not a JSON number")
        ref = node.get("$ref") if isinstance(node, dict) else None
        if isinstance(ref, str) and not ref.startswith("#"):
            raise ValueError(f"$ref {_short(ref)!r} points outside the schema: only local references "
                             "(#/$defs/...) are allowed")


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def requested_constraint(body: Any) -> tuple[Any, str | None]:
    """The Constraint a chat or completion request asks for (None: free text), and the field that asked."""
    from tunekit.generate.types import Constraint

    fmt, outputs = body.response_format, body.structured_outputs
    if outputs is not None:
        if fmt is not None:
            raise ApiError(400, "Send response_format or structured_outputs, not both.", param="structured_outputs")
        if outputs.json_ is not None:
            check_schema(outputs.json_, "structured_outputs.json")
            return Constraint.json_schema(outputs.json_), "structured_outputs"
        if outputs.regex is not None:
            return Constraint.regex(outputs.regex), "structured_outputs"
        if outputs.choice is not None:
            return Constraint.choice(outputs.choice), "structured_outputs"
        return Constraint.json_object(), "structured_outputs"
    if fmt is None or fmt.type == "text":
        return None, None
    if fmt.type == "json_schema" and fmt.json_schema.schema_ is not None:
        check_schema(fmt.json_schema.schema_, "response_format.json_schema.schema")
        return Constraint.json_schema(fmt.json_schema.schema_), "response_format"
    return Constraint.json_object(), "response_format"  # json_object, or a json_schema without a schema


def guard_constraint(guard: Any) -> Any:
    """The constraint the operator's guard.json_schema implies, or None: answers are then decoded under that
    schema, and the guardrail's validation (and its retries) stays as the check."""
    if guard is None or "json_schema" not in guard.output_policies or guard.output_rules.validator is None:
        return None
    schema = guard.output_rules.validator.schema
    if not isinstance(schema, dict):  # a boolean schema: true allows anything, false nothing
        return None
    from tunekit.generate.types import Constraint

    return Constraint.json_schema(schema)


def unsupported(exc: UserError, param: str | None) -> ApiError:
    """The 400 for a constraint the engine cannot enforce; its message names the feature (the engine's words)."""
    text = exc.message + (f" ({exc.fix})" if exc.fix else "")
    if isinstance(exc, MissingDependency):  # the server lacks llguidance: no constraint can be enforced
        text = f"this server cannot enforce output formats: {text}"
    return ApiError(400, text[:1].upper() + text[1:], param=param or "response_format", code=UNSUPPORTED)
