"""How grounding composes with the task: one object, built from the config, that eval and serve share.

    grounding = Grounding.from_config(cfg)
    turns = grounding.messages(messages, retrieved)     # sources + the instruction for this citation style
    grounding.check(answer, retrieved)                  # CitationCheck: flagged when not ok
    grounding.answer_only(answer)                       # what quality metrics score

Citation styles (`rag.citations`):
- `inline`: prose answers cite `[n]` after each statement.
- `json_field`: structured answers stay in their format and list the source numbers in one field of
  the JSON object. Asking a JSON-only task to sprinkle `[n]` through its text breaks the JSON (the
  demo's RAG baseline scored json_valid 0 that way), so `auto` picks this whenever answers are JSON.
- `none`: the sources are context only; nothing is required or checked beyond invalid numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tunekit.rag.cite import CitationCheck, check_citations, citation_sources, without_citation_field
from tunekit.rag.prompt import GROUNDING_INSTRUCTION, NO_SOURCES_INSTRUCTION, grounded_messages

JSON_METRICS = frozenset({"json_valid", "json_schema", "field_accuracy"})
CONTEXT_INSTRUCTION = "Use the sources below where they help."
NO_SOURCES_CONTEXT = "No source in the documentation matched this question."


def json_field_instruction(field: str) -> str:
    return (f"Use the sources below where they help. Answer in exactly the JSON format you were asked for, "
            f'and add the field "{field}" to the JSON object: the numbers of the sources you used, for '
            f'example "{field}": [1], or "{field}": [] when none of them helped.')


@dataclass(frozen=True)
class Grounding:
    style: str  # "inline" | "json_field" | "none"
    field: str = "sources"
    required: bool = True  # an answer that cites nothing is flagged (never in style "none")

    @classmethod
    def from_config(cls, cfg: Any) -> Grounding:
        rag = cfg.rag
        style = rag.citations if rag.citations != "auto" else ("json_field" if answers_are_json(cfg) else "inline")
        return cls(style, rag.citation_field, rag.require_citations and style != "none")

    @property
    def instruction(self) -> str:
        if self.style == "json_field":
            return json_field_instruction(self.field)
        return GROUNDING_INSTRUCTION if self.style == "inline" else CONTEXT_INSTRUCTION

    @property
    def json_field(self) -> str | None:
        return self.field if self.style == "json_field" else None

    def messages(self, messages: list[dict[str, Any]], retrieved: Sequence[Any]) -> list[dict[str, Any]]:
        no_sources = NO_SOURCES_INSTRUCTION if self.style == "inline" else NO_SOURCES_CONTEXT
        return grounded_messages(messages, retrieved, instruction=self.instruction, no_sources=no_sources)

    def check(self, text: str, retrieved: Sequence[Any]) -> CitationCheck:
        """Flag invalid source numbers, and a missing citation when one is required and a source was given
        (with nothing retrieved there is nothing to cite)."""
        return check_citations(text, retrieved, required=self.required and bool(retrieved), field=self.json_field)

    def sources(self, text: str, retrieved: Sequence[Any]) -> list[dict[str, Any]]:
        return citation_sources(text, retrieved, field=self.json_field)

    def answer_only(self, text: str) -> str:
        return without_citation_field(text, self.json_field)


def answers_are_json(cfg: Any) -> bool:
    """Whether the project's answers are JSON objects, as far as its config says."""
    return bool(cfg.guard.json_schema or cfg.eval.json_schema or cfg.eval.label_field
                or JSON_METRICS & set(cfg.eval.metrics))
