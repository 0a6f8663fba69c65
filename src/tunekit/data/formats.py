"""Input formats, detected from the fields of a row, each converted to the internal `Example`.

Detection is per row, so a file that mixes formats is still read; an explicit `format` in the config
turns detection off and every row must then fit that format.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tunekit.config import MAPPABLE_FIELDS
from tunekit.data.problems import Problems
from tunekit.data.readers import RawRow
from tunekit.data.records import ROLES, Example

# Fields that identify each format, checked in this order (most specific first).
SIGNATURES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("messages", ("messages",)),
    ("sharegpt", ("conversations",)),
    ("alpaca", ("instruction", "output")),
    ("prompt_completion", ("prompt", "completion")),
    ("task", ("input", "output")),
    ("label", ("text", "label")),
    ("text", ("text",)),
)
# The fields of each format that hold text (messages and conversations check their turns themselves).
TEXT_FIELDS = {
    "alpaca": ("instruction", "input", "output"), "prompt_completion": ("prompt", "completion"),
    "task": ("input", "output"), "label": ("text", "label"), "text": ("text",),
}  # fmt: skip
SHAREGPT_ROLES = {
    "system": "system", "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "model": "assistant", "bot": "assistant",
}  # fmt: skip


@dataclass(frozen=True)
class TaskWrap:
    """How task and label records become conversations: the config's system prompt and user template."""

    system_prompt: str | None = None
    user_template: str = "{input}"
    convert_types: bool = False  # a number, true/false, object or list where text belongs: convert, not refuse


class RowError(Exception):
    """A row that does not fit its format; carries a problem code, a message and a fix."""

    def __init__(self, code: str, message: str, fix: str = ""):
        super().__init__(message)
        self.code, self.message, self.fix = code, message, fix


def detect_format(data: dict[str, Any]) -> str | None:
    """The format whose fields are all present; else the one most of whose fields are (a row with a
    missing field is better reported as "missing 'completion'" than as an unknown format)."""
    for name, required in SIGNATURES:
        if all(key in data for key in required):
            return name
    overlap = [(sum(k in data for k in required), -i, name) for i, (name, required) in enumerate(SIGNATURES)]
    best = max(overlap)
    return best[2] if best[0] > 0 else None


def apply_column_map(data: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    """Rename the user's columns to tunekit's field names (`columns` maps our field -> their column)."""
    if not columns:
        return data
    renamed = {k: v for k, v in data.items() if k not in columns.values()}
    for field, column in columns.items():
        if column in data:
            renamed[field] = data[column]
    return renamed


def to_examples(
    rows: list[RawRow], problems: Problems, *, fmt: str = "auto", columns: dict[str, str] | None = None,
    wrap: TaskWrap = TaskWrap(),
) -> list[Example]:
    examples: list[Example] = []
    for row in rows:
        data = apply_column_map(row.data, columns or {})
        name = detect_format(data) if fmt == "auto" else fmt
        if name is None:
            problems.error(
                row.source, row.line, "unknown_format", f"fields {sorted(data)[:8]} match no known format",
                "use messages, conversations, instruction/output, prompt/completion, input/output, "
                "text/label or text; or map your columns with data.columns",
            )
            continue
        try:
            data = _as_text(data, name, wrap.convert_types, problems, row)
            example = CONVERTERS[name](data, wrap)
        except RowError as err:
            problems.error(row.source, row.line, err.code, err.message, err.fix)
            continue
        example.source, example.line = row.source, row.line
        example.meta = {**row_metadata(data), **example.meta, "format": name}
        examples.append(example)
    return examples


def _as_text(data: dict[str, Any], name: str, convert: bool, problems: Problems, row: RawRow) -> dict[str, Any]:
    """`data` with its text fields checked: a value of another type is an error naming the field, or with
    data.convert_types a warning and the value as text (numbers as written, the rest as compact JSON)."""
    converted = dict(data)
    for key in TEXT_FIELDS.get(name, ()):
        value = data.get(key)
        if value is None or isinstance(value, str):
            continue
        text = str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else \
            json.dumps(value, ensure_ascii=False)
        kind = _kind(value)
        shown = text if len(text) <= 60 else text[:57] + "..."
        if not convert:
            raise RowError("wrong_type", f"'{key}' is {kind} ({shown}) where text belongs",
                           f"write it as a JSON string, e.g. {json.dumps(shown)}; or set data.convert_types: true "
                           "to convert such values (numbers as written, objects and lists as compact JSON)")
        problems.warn(row.source, row.line, "converted_type", f"'{key}' is {kind}; converted to the text {shown}",
                      "write it as a JSON string to silence this")
        converted[key] = text
    return converted


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    return {"dict": "an object", "list": "a list"}.get(type(value).__name__, f"a {type(value).__name__}")


# Longer strings are content (a document, a note), not something to group by.
META_MAX_CHARS = 100


def row_metadata(data: dict[str, Any]) -> dict[str, Any]:
    """A row's own metadata, kept through preparation so that reports can slice by it (governance.slices):
    the scalars of its `meta` object and its short scalar columns that are not content fields (a CSV's
    `region`, a JSONL's `customer_tier`)."""
    nested = data.get("meta") if isinstance(data.get("meta"), dict) else {}
    columns = {k: v for k, v in data.items() if k not in MAPPABLE_FIELDS and k not in ("meta", "needs_label")}
    return {k: v for k, v in {**columns, **nested}.items() if _is_short_scalar(v)}


def _is_short_scalar(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) <= META_MAX_CHARS
    return isinstance(value, (int, float, bool))


def _text_field(data: dict[str, Any], key: str, *, required: bool = True) -> str:
    if key not in data or data[key] is None:
        if required:
            raise RowError("missing_field", f"missing field '{key}'", f"add a non-empty '{key}' string")
        return ""
    value = data[key]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise RowError("wrong_type", f"'{key}' must be a string, got {type(value).__name__}", "use a JSON string")
    if required and not value.strip():
        raise RowError("empty_field", f"'{key}' is empty", f"give '{key}' some text or drop the row")
    return value


def _require(data: dict[str, Any], key: str) -> Any:
    if key not in data:
        raise RowError("missing_field", f"missing field '{key}'", f"add '{key}' or pick another data.format")
    return data[key]


def _from_messages(data: dict[str, Any], wrap: TaskWrap) -> Example:
    turns = _require(data, "messages")
    if not isinstance(turns, list) or not turns:
        raise RowError("wrong_type", "'messages' must be a non-empty list", 'e.g. [{"role": "user", ...}]')
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RowError("wrong_type", f"messages[{i}] must be an object with role and content")
        role = turn.get("role")
        if role not in ROLES:
            raise RowError("unknown_role", f"messages[{i}] has unknown role {role!r}", f"use one of {ROLES}")
        content = _text_field(turn, "content") if "content" in turn else None
        if content is None:
            raise RowError("missing_field", f"messages[{i}] has no 'content'", "add the turn's text")
        messages.append({"role": role, "content": content})
    return _checked(messages)


def _from_sharegpt(data: dict[str, Any], wrap: TaskWrap) -> Example:
    turns = _require(data, "conversations")
    if not isinstance(turns, list) or not turns:
        raise RowError("wrong_type", "'conversations' must be a non-empty list", 'e.g. [{"from": "human", ...}]')
    messages = []
    if data.get("system"):
        messages.append({"role": "system", "content": _text_field(data, "system")})
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RowError("wrong_type", f"conversations[{i}] must be an object with from and value")
        role = SHAREGPT_ROLES.get(str(turn.get("from", "")).lower())
        if role is None:
            raise RowError(
                "unknown_role", f"conversations[{i}] has unknown 'from' {turn.get('from')!r}",
                f"use one of {sorted(SHAREGPT_ROLES)}",
            )
        messages.append({"role": role, "content": _text_field(turn, "value")})
    return _checked(messages)


def _from_alpaca(data: dict[str, Any], wrap: TaskWrap) -> Example:
    instruction = _text_field(data, "instruction")
    extra = _text_field(data, "input", required=False)
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return _checked(_with_system(data, wrap, user, _answer(data, "output")))


def _from_prompt_completion(data: dict[str, Any], wrap: TaskWrap) -> Example:
    return _checked(_with_system(data, wrap, _text_field(data, "prompt"), _text_field(data, "completion")))


def _from_task(data: dict[str, Any], wrap: TaskWrap) -> Example:
    user = _render_template(wrap.user_template, data, _text_field(data, "input"))
    return _checked(_with_system(data, wrap, user, _answer(data, "output")))


def _from_label(data: dict[str, Any], wrap: TaskWrap) -> Example:
    label = _answer(data, "label")
    user = _render_template(wrap.user_template, data, _text_field(data, "text"))
    example = _checked(_with_system(data, wrap, user, label))
    example.label = label
    return example


def _from_text(data: dict[str, Any], wrap: TaskWrap) -> Example:
    # Raw text (continued pre-training) has no turns: one assistant turn trained end to end, no template.
    example = Example(messages=[{"role": "assistant", "content": _text_field(data, "text")}])
    example.meta["raw_text"] = True
    return example


def _answer(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if isinstance(value, (dict, list)):  # structured answers (extraction) are trained as compact JSON
        return json.dumps(value, ensure_ascii=False)
    return _text_field(data, key)


def _render_template(template: str, data: dict[str, Any], main: str) -> str:
    fields = {k: v for k, v in data.items() if isinstance(v, (str, int, float))}
    fields.update(input=main, text=main)
    try:
        return template.format(**fields)
    except (KeyError, IndexError) as exc:
        raise RowError(
            "template_field", f"data.user_template uses {exc} which this row lacks",
            f"use only fields the rows have: {sorted(fields)}",
        ) from None


def _with_system(data: dict[str, Any], wrap: TaskWrap, user: str, answer: str) -> list[dict[str, str]]:
    system = data.get("system") if isinstance(data.get("system"), str) else wrap.system_prompt
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def _checked(messages: list[dict[str, str]]) -> Example:
    """Role order: an optional system turn first, then user/assistant alternating, ending on assistant."""
    body = messages[1:] if messages[0]["role"] == "system" else messages
    for i, message in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            position = i + len(messages) - len(body)
            raise RowError(
                "role_order", f"turn {position} is '{message['role']}' where '{expected}' was expected",
                "a system turn may only come first; then user and assistant alternate, starting with user",
            )
    if not any(m["role"] == "assistant" for m in body):
        raise RowError("no_assistant", "no assistant turn to learn from", "add the answer as an assistant turn")
    if body[-1]["role"] != "assistant":
        raise RowError("ends_with_user", "the last turn is the user's", "end each example with the answer")
    for i, message in enumerate(messages):
        if not message["content"].strip():
            raise RowError("empty_field", f"turn {i} ({message['role']}) is empty", "give every turn some text")
    return Example(messages=messages)


CONVERTERS: dict[str, Callable[[dict[str, Any], TaskWrap], Example]] = {
    "messages": _from_messages,
    "sharegpt": _from_sharegpt,
    "alpaca": _from_alpaca,
    "prompt_completion": _from_prompt_completion,
    "task": _from_task,
    "label": _from_label,
    "text": _from_text,
}
