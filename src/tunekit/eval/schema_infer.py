"""A JSON schema inferred from the train split's answers, for decoding every candidate under it.

What train shows becomes what is allowed, closed and bounded, so that a model (a random one included) cannot
wander off into text that never ends:
- every key of every answer is a property, in the order first seen (constrained decoding writes properties in
  schema order, so the answers keep their own layout); keys found in every answer are required; no other
  key is allowed;
- the label field (`eval.label_field`) is an enum of the labels seen in train (or `eval.labels`);
- a string field with few values that repeat (label-like, as data/stats.py counts them) is an enum of them;
  any other string is bounded at twice the longest seen;
- numbers are typed (integer when every value was) but not bounded: a range taken from train would forbid a
  right answer outside it, and a number's length is bounded by max_new_tokens anyway;
- lists hold items typed from every element seen, at most twice the longest list; nested objects recurse.
"""

from __future__ import annotations

from typing import Any

from tunekit.data.stats import FIELD_VALUES_MAX

MIN_STRING_CHARS = 32  # a free-text field seen only short still gets room for a few words
MIN_LIST_ITEMS = 4


def infer_object_schema(answers: list[dict[str, Any]], label_field: str | None = None,
                        labels: list[Any] | None = None) -> dict[str, Any]:
    """The closed object schema that every answer in `answers` (JSON objects) conforms to.

    Args:
        answers: the train answers, parsed.
        label_field: the field that holds the label; its values become an enum.
        labels: the label set for that enum (default: the values seen in `answers`).
    """
    schema = _object(answers)
    if label_field and label_field in schema["properties"]:
        seen = [a[label_field] for a in answers if label_field in a]
        schema["properties"][label_field] = {"enum": _distinct(labels if labels else seen)}
    return schema


def json_type(value: Any) -> str:
    """The JSON Schema type name of a parsed JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):  # before int: True is an int to Python, a boolean to JSON
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return {str: "string", list: "array", dict: "object"}[type(value)]


def _value(values: list[Any]) -> dict[str, Any]:
    """The schema of one field from every value it took: one type, or anyOf the types seen."""
    groups: dict[str, list[Any]] = {}
    for value in values:
        groups.setdefault(json_type(value), []).append(value)
    if "integer" in groups and "number" in groups:  # 1 and 1.5 in one field: a number
        groups["number"] = groups.pop("integer") + groups["number"]
    parts = [_typed(kind, group) for kind, group in groups.items()]
    return parts[0] if len(parts) == 1 else {"anyOf": parts}


def _typed(kind: str, values: list[Any]) -> dict[str, Any]:
    if kind == "object":
        return _object(values)
    if kind == "array":
        elements = [item for value in values for item in value]
        schema: dict[str, Any] = {"type": "array", "maxItems": max(MIN_LIST_ITEMS, 2 * max(map(len, values)))}
        if elements:
            schema["items"] = _value(elements)
        return schema
    if kind == "string":
        if _label_like(values):
            return {"enum": _distinct(values)}
        return {"type": "string", "maxLength": max(MIN_STRING_CHARS, 2 * max(map(len, values)))}
    return {"type": kind}


def _object(objects: list[dict[str, Any]]) -> dict[str, Any]:
    keys = list(dict.fromkeys(key for obj in objects for key in obj))
    return {
        "type": "object",
        "properties": {key: _value([obj[key] for obj in objects if key in obj]) for key in keys},
        "required": [key for key in keys if all(key in obj for obj in objects)],
        "additionalProperties": False,
    }


def _label_like(values: list[str]) -> bool:
    """Few distinct values, each seen about twice or more: a category, not free text."""
    distinct = len(set(values))
    return distinct <= FIELD_VALUES_MAX and distinct <= len(values) / 2


def _distinct(values: list[Any]) -> list[Any]:
    """Values without repeats, sorted (by their text) so that the same answers always give the same schema."""
    unique = {repr(v): v for v in values}
    return [unique[key] for key in sorted(unique)]
