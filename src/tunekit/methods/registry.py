"""Method name -> class, filled by discovery: every public module of `tunekit.methods` (helpers start with
`_`; `base` and `registry` excepted) and every module named by an installed package's `tunekit.methods`
entry point is imported the first time a method is looked up, and registers its class with `@register`."""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
from collections.abc import Callable
from typing import TypeVar

from tunekit.config import MethodConfig
from tunekit.errors import ConfigError
from tunekit.methods.base import Method

ENTRY_POINT_GROUP = "tunekit.methods"
NOT_METHODS = ("base", "registry")

_METHODS: dict[str, type[Method]] = {}
_discovered = False

M = TypeVar("M", bound=type[Method])


def register(cls: M) -> M:
    """Class decorator: make the method available under `cls.name` (a unique lower-case identifier)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.isidentifier() or name != name.lower():
        raise ValueError(f"{cls.__qualname__}: a method needs a lower-case identifier as `name`, got {name!r}")
    unknown = sorted(set(cls.options) - (set(MethodConfig.model_fields) - {"name"}))
    if unknown:
        raise ValueError(f"method '{name}': options {unknown} are not MethodConfig fields (besides `name`)")
    existing = _METHODS.get(name)
    # Same module and class name is the same method imported again (e.g. a reload), not a clash.
    if existing is not None and (existing.__module__, existing.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"method '{name}' registered twice: {existing.__module__} and {cls.__module__}")
    _METHODS[name] = cls
    return cls


def available_methods() -> list[str]:
    _discover()
    return sorted(_METHODS)


def get_method(name: str) -> Method:
    _discover()
    cls = _METHODS.get(name)
    if cls is None:
        raise ConfigError(
            f"unknown method '{name}'",
            where="method.name",
            fix=f"available: {', '.join(sorted(_METHODS))}",
        )
    return cls()


def methods_where(predicate: Callable[[type[Method]], bool]) -> list[str]:
    """Names of the methods whose class satisfies `predicate` (for hints that name alternatives by trait)."""
    _discover()
    return sorted(name for name, cls in _METHODS.items() if predicate(cls))


def _discover() -> None:
    # Lazy, so that a method module can import `register` while the package is still loading.
    global _discovered
    if _discovered:
        return
    import tunekit.methods as package

    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_") and module.name not in NOT_METHODS:
            importlib.import_module(f"{package.__name__}.{module.name}")
    # Methods shipped by other packages: `[project.entry-points."tunekit.methods"] loha = "my_pkg.loha"`.
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        entry.load()
    _discovered = True
