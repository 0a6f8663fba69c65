"""Problems found in data: every one names `file:line`, what is wrong and how to fix it."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    source: str
    line: int  # 1-based; 0 means the file as a whole
    severity: Severity
    code: str  # stable machine-readable name, e.g. "malformed_json"
    message: str
    fix: str = ""

    def render(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        fix = f" ({self.fix})" if self.fix else ""
        return f"{where}: {self.severity}: {self.message}{fix}"


@dataclass
class Problems:
    """An ordered collection that the checks append to; never raises, so every problem is reported."""

    items: list[Problem] = field(default_factory=list)

    def add(self, source: str, line: int, severity: Severity, code: str, message: str, fix: str = "") -> None:
        self.items.append(Problem(source, line, severity, code, message, fix))

    def error(self, source: str, line: int, code: str, message: str, fix: str = "") -> None:
        self.add(source, line, "error", code, message, fix)

    def warn(self, source: str, line: int, code: str, message: str, fix: str = "") -> None:
        self.add(source, line, "warning", code, message, fix)

    def extend(self, other: Problems) -> None:
        self.items.extend(other.items)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.items if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.items if p.severity == "warning"]

    def counts(self) -> dict[str, int]:
        return dict(Counter(p.code for p in self.items))

    def exit_code(self) -> int:
        """0 clean, 1 warnings only, 2 errors: the contract of `tunekit data check`."""
        if self.errors:
            return 2
        return 1 if self.items else 0

    def to_json(self) -> list[dict[str, Any]]:
        return [asdict(p) for p in self.items]
