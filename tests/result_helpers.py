"""A typed eval result to render and read: the one in tests/data, with parts replaced."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunekit.results import EvalResult

FIXTURE = Path(__file__).parent / "data" / "eval_result.json"


def fixture_dict() -> dict[str, Any]:
    """The fixture as plain JSON: edit it, then validate it with `sample_result(**parts)` or EvalResult."""
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


def sample_result(**parts: Any) -> EvalResult:
    """The fixture result with top-level `parts` replaced (given as the JSON eval.json holds)."""
    return EvalResult.model_validate({**fixture_dict(), **parts})
