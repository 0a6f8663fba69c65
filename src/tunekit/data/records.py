"""The one internal record every input format is normalised to: a conversation with provenance."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunekit.errors import UserError

ROLES = ("system", "user", "assistant")


@dataclass
class Example:
    """One training example as a list of chat messages, plus where it came from.

    `messages` holds dicts with exactly `role` and `content`, the shape chat templates expect.
    `label` is set for task data whose answer is one of a small label set (classification).
    """

    messages: list[dict[str, str]]
    source: str = "<memory>"
    line: int = 0
    label: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"

    def text_of(self, role: str) -> str:
        return "\n".join(m["content"] for m in self.messages if m["role"] == role)

    @property
    def prompt_text(self) -> str:
        """The user turns: the key for leakage checks. System prompts are left out because they are
        usually one shared instruction, which would make every pair of examples look alike."""
        return "\n".join(m["content"] for m in self.messages if m["role"] == "user")

    @property
    def full_text(self) -> str:
        """User and assistant turns, the key for duplicate checks (system prompts left out, as above)."""
        return "\n".join(f"{m['role']}: {m['content']}" for m in self.messages if m["role"] != "system")

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"messages": self.messages}
        if self.label is not None:
            row["label"] = self.label
        if self.meta:
            row["meta"] = self.meta
        return row


def read_split(path: Path) -> list[Example]:
    """A prepared split (JSONL written by `tunekit data prepare`) as Examples, with file:line provenance."""
    if not path.exists():
        raise UserError("split file does not exist", where=str(path), fix="run `tunekit data prepare` first")
    examples = []
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            meta = row.get("meta", {})
            examples.append(Example(row["messages"], str(path), line_no, row.get("label"), meta))
    return examples
