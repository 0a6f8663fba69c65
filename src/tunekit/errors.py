"""The one error type users see. The CLI turns it into a message and exit code 2, never a traceback."""

from __future__ import annotations


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
