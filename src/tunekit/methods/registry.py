"""Method name -> class. Each method module registers itself on import; `tunekit.methods` imports them all."""

from __future__ import annotations

from typing import TypeVar

from tunekit.errors import ConfigError
from tunekit.methods.base import Method

_METHODS: dict[str, type[Method]] = {}

M = TypeVar("M", bound=type[Method])


def register(cls: M) -> M:
    """Class decorator: make the method available under `cls.name` (names are unique)."""
    existing = _METHODS.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"method '{cls.name}' registered twice: {existing.__module__} and {cls.__module__}")
    _METHODS[cls.name] = cls
    return cls


def available_methods() -> list[str]:
    _load_builtin()
    return sorted(_METHODS)


def get_method(name: str) -> Method:
    _load_builtin()
    cls = _METHODS.get(name)
    if cls is None:
        raise ConfigError(
            f"unknown method '{name}'",
            where="method.name",
            fix=f"available: {', '.join(sorted(_METHODS))}",
        )
    return cls()


def _load_builtin() -> None:
    # Importing the package imports every method module, which registers it; lets `registry` be imported
    # on its own without a circular import at module load.
    import tunekit.methods  # noqa: F401
