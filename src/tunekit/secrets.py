"""API keys are secrets: read from an environment variable and a key file, never from the config.

Configs are copied into run folders and model cards, so a key written there would leak with every run
shared. This module only reads and holds the keys; `serve.auth` checks requests against them.
"""

from __future__ import annotations

import hmac
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tunekit.config_stages import ServeConfig
from tunekit.errors import ConfigError

KEY_FILE_FIX = "one key a line; comments on lines of their own, starting with #"


@dataclass(frozen=True)
class ApiKeys:
    keys: tuple[str, ...]
    sources: tuple[str, ...] = ()  # where the keys came from, for messages: "$TUNEKIT_API_KEYS", a file
    notes: tuple[str, ...] = ()  # warnings for the operator, e.g. a key file that others can read

    @classmethod
    def from_config(cls, serve: ServeConfig, *, base_dir: Path | None = None,
                    environ: dict[str, str] | None = None) -> ApiKeys:
        """Keys from `serve.api_keys_env` (comma-separated) and `serve.api_keys_file` (relative to `base_dir`,
        default the current folder); a ConfigError when the file is missing, empty or writable by others."""
        environ = os.environ if environ is None else environ
        keys, sources, notes = [], [], []
        from_env = _keys_in(environ, serve.api_keys_env)
        if from_env:
            keys += from_env
            sources.append(f"${serve.api_keys_env}")
        if serve.api_keys_file:
            path = Path(base_dir or Path.cwd()) / Path(serve.api_keys_file).expanduser()
            keys += read_key_file(path)
            sources.append(str(path))
            if _others_can_read(path):
                notes.append(f"{path} is readable by group or others, who can then use the API (chmod 600 {path})")
        return cls(tuple(dict.fromkeys(keys)), tuple(sources), tuple(notes))  # ordered, unique

    @classmethod
    def admin_from_config(cls, serve: ServeConfig, api_keys: ApiKeys, *,
                          environ: dict[str, str] | None = None) -> ApiKeys:
        """Admin keys (they load and unload adapters) from `serve.admin_keys_env` only: no key file, so there is
        one place to look for them. A ConfigError when one is also an API key: each set must open only its routes."""
        environ = os.environ if environ is None else environ
        keys = tuple(dict.fromkeys(_keys_in(environ, serve.admin_keys_env)))
        if any(api_keys.matching(key) for key in keys):
            raise ConfigError(f"a key in ${serve.admin_keys_env} is also an API key, so API clients could load and "
                              "unload adapters", where="serve.admin_keys_env",
                              fix="give admins keys of their own, not used as API keys")
        return cls(keys, (f"${serve.admin_keys_env}",) if keys else ())

    @property
    def required(self) -> bool:
        return bool(self.keys)

    def matching(self, presented: str) -> str | None:
        """The configured key equal to `presented`, or None.

        Compared against every key (no early exit) in constant time, so timing says nothing about which
        key or prefix matched."""
        matched = None
        for key in self.keys:
            if hmac.compare_digest(presented.encode(), key.encode()):
                matched = key
        return matched


def read_key_file(path: Path) -> list[str]:
    """The keys in `path`: one a line, blank lines and `#` comment lines skipped.

    A file that group or others can write is refused: whoever can write it can add a key of their own. One
    they can only read is served with a warning (`ApiKeys.notes`), not refused: secrets mounted into
    containers (Docker, Kubernetes) are world-readable by default, and refusing those would push operators
    to environment variables, which are no more private. Messages name line numbers, never a key."""
    if not path.is_file():
        raise ConfigError(f"{path} is not a file", where="serve.api_keys_file", fix=KEY_FILE_FIX)
    if os.name == "posix" and path.stat().st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(f"{path} can be written by group or others, who could add a key of their own",
                          where="serve.api_keys_file", fix=f"chmod 600 {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text", where="serve.api_keys_file", fix=KEY_FILE_FIX) from None
    keys = []
    for number, line in enumerate(lines, start=1):
        key = line.strip()
        if not key or key.startswith("#"):
            continue
        if len(key.split()) > 1:  # e.g. a trailing comment: such a "key" could never be sent in a header
            raise ConfigError(f"line {number} of {path} has a space inside a key", where="serve.api_keys_file",
                              fix=KEY_FILE_FIX)
        keys.append(key)
    if not keys:
        raise ConfigError(f"{path} holds no keys", where="serve.api_keys_file",
                          fix=f"{KEY_FILE_FIX}; or unset serve.api_keys_file to serve on loopback without keys")
    return keys


def _keys_in(environ: Mapping[str, str], variable: str) -> list[str]:
    """The comma-separated keys in `variable`, blanks dropped."""
    return [key.strip() for key in environ.get(variable, "").split(",") if key.strip()]


def _others_can_read(path: Path) -> bool:
    return os.name == "posix" and bool(path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH))
