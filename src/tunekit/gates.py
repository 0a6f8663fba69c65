"""Success criteria declared before the run: `metric op threshold`, e.g. `accuracy >= 0.85`."""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass

OPERATORS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}
_GATE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(>=|<=|==|>|<)\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*$")


@dataclass(frozen=True)
class Gate:
    metric: str
    op: str
    threshold: float
    text: str

    def passes(self, value: float | None) -> bool:
        return value is not None and bool(OPERATORS[self.op](value, self.threshold))

    def gap(self, value: float | None) -> float | None:
        """How far the value is from passing (0 when it passes); None when the metric is missing."""
        if value is None:
            return None
        if self.passes(value):
            return 0.0
        return abs(self.threshold - value)


def parse_gate(text: str) -> Gate:
    match = _GATE.match(text)
    if not match:
        raise ValueError(
            f"gate {text!r} is not 'metric op number'; operators: {', '.join(OPERATORS)} (e.g. 'accuracy >= 0.85')"
        )
    metric, op, number = match.groups()
    return Gate(metric, op, float(number), f"{metric} {op} {number}")
