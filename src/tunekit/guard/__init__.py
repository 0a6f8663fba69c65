"""Guardrails: input and output policies declared in the config, applied in order, each decision logged.

`Guardrails.from_config(cfg)` builds them; `check_input(messages)` runs before the model and
`check_output(text, regenerate=..., citation_check=...)` after it. `run_safety` measures the attack
success rate of a model on the bundled red-team set, with and without guardrails.
"""

from tunekit.guard.events import GuardEvent, InputDecision, OutputDecision
from tunekit.guard.injection import INJECTION_FAMILIES, InjectionHit, find_injection, normalize_text
from tunekit.guard.policies import Guardrails, compile_guard_config, validate_guard_config

__all__ = [
    "INJECTION_FAMILIES",
    "GuardEvent",
    "Guardrails",
    "InjectionHit",
    "InputDecision",
    "OutputDecision",
    "compile_guard_config",
    "find_injection",
    "normalize_text",
    "validate_guard_config",
]
