"""What the guardrails decided and why: one event per policy decision, and the decisions callers act on."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class GuardEvent:
    stage: str  # "input" | "output"
    policy: str  # e.g. "pii", "injection", "json_schema"
    action: str  # "allow" | "redact" | "block" | "retry" | "fallback" | "flag" (reported, not acted on)
    reason: str  # human-readable, e.g. "ignore-previous-instructions pattern: 'ignore all previous instructions'"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class InputDecision:
    allowed: bool
    messages: list[dict]  # possibly redacted; the caller sends these to the model, never the originals
    events: list[GuardEvent] = field(default_factory=list)

    @property
    def blocked_by(self) -> GuardEvent | None:
        return next((e for e in self.events if e.action == "block"), None)


@dataclass
class OutputDecision:
    ok: bool  # False: `text` is the configured fallback
    text: str
    events: list[GuardEvent] = field(default_factory=list)
    retries: int = 0

    @property
    def failed_by(self) -> GuardEvent | None:
        return next((e for e in self.events if e.action == "fallback"), None)
