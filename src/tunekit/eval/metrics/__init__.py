"""Evaluation metrics, one module each; a module registers its metric with `@register` on import.

Adding a metric is adding one file to this package: the registry imports every module here the
first time a metric is looked up (private `_helpers.py` and `base.py` excepted), so there is no list
to edit.

    check_metrics(cfg.eval.metrics, ctx)  # UserError before any model loads
    result = get_metric("macro_f1").compute(predictions, references, ctx)
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from typing import TypeVar

from tunekit.errors import UserError
from tunekit.eval.metrics.base import Metric, MetricContext, MetricResult

_METRICS: dict[str, type[Metric]] = {}
_discovered = False

M = TypeVar("M", bound=type[Metric])


def register(cls: M) -> M:
    """Class decorator: make the metric available under `cls.name` (lower-case, unique)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.isidentifier() or name != name.lower():
        raise ValueError(f"{cls.__qualname__}: a metric needs a lower-case identifier as `name`, got {name!r}")
    existing = _METRICS.get(name)
    # Same module and class name is the same metric imported again (e.g. a reload), not a clash.
    if existing is not None and (existing.__module__, existing.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"metric '{name}' registered twice: {existing.__module__} and {cls.__module__}")
    _METRICS[name] = cls
    return cls


def available_metrics() -> list[str]:
    _discover()
    return sorted(_METRICS)


def get_metric(name: str) -> Metric:
    _discover()
    cls = _METRICS.get(name)
    if cls is None:
        raise UserError(f"unknown metric '{name}'", where="eval.metrics", fix=_allowed_hint(name))
    return cls()


def check_metrics(names: list[str], ctx: MetricContext) -> None:
    """Every problem with the metric list and the context it needs, in one UserError, before any model loads."""
    _discover()
    problems = []
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"metric '{name}' is listed more than once")
    for name in dict.fromkeys(names):
        if name not in _METRICS:
            problems.append(f"unknown metric '{name}' ({_allowed_hint(name)})")
        else:
            problems.extend(_METRICS[name]().check(ctx))
    if problems:
        raise UserError("; ".join(problems), where="eval.metrics")


def _allowed_hint(name: str) -> str:
    allowed = sorted(_METRICS)
    close = difflib.get_close_matches(name, allowed, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"{hint}allowed: {', '.join(allowed)}"


def _discover() -> None:
    # Lazy, so a metric module can import `register` from this package while the package is loading.
    global _discovered
    if _discovered:
        return
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_") and module.name != "base":
            importlib.import_module(f"{__name__}.{module.name}")
    _discovered = True


__all__ = [
    "Metric",
    "MetricContext",
    "MetricResult",
    "available_metrics",
    "check_metrics",
    "get_metric",
    "register",
]
