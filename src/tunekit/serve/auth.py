"""Bearer API keys: from `serve.api_keys` and an environment variable; none set means no auth, loopback only.

Keys are compared in constant time and never logged: requests are identified by `key_id_for(key)`, a short
hash the request log and the rate limiter use instead.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from dataclasses import dataclass

from tunekit.config_stages import ServeConfig
from tunekit.errors import ConfigError
from tunekit.monitor.logdb import key_id_for
from tunekit.serve.errors import ApiError

BEARER = "bearer "


@dataclass(frozen=True)
class ApiKeys:
    keys: tuple[str, ...]

    @classmethod
    def from_config(cls, serve: ServeConfig, environ: dict[str, str] | None = None) -> ApiKeys:
        environ = os.environ if environ is None else environ
        from_env = [k.strip() for k in environ.get(serve.api_keys_env, "").split(",")]
        keys = tuple(dict.fromkeys(k for k in (*serve.api_keys, *from_env) if k))  # ordered, unique
        return cls(keys)

    @property
    def required(self) -> bool:
        return bool(self.keys)

    def check(self, authorization: str | None) -> str | None:
        """The caller's key id, or None when no keys are configured; a 401 ApiError otherwise."""
        if not self.keys:
            return None
        if not authorization or not authorization.lower().startswith(BEARER):
            raise ApiError(401, "Missing API key: send 'Authorization: Bearer KEY'.",
                           headers={"WWW-Authenticate": "Bearer"})
        presented = authorization[len(BEARER):].strip().encode()
        # Compare against every key (no early exit) so timing says nothing about which prefix matched.
        matched = None
        for key in self.keys:
            if hmac.compare_digest(presented, key.encode()):
                matched = key
        if matched is None:
            raise ApiError(401, "Incorrect API key provided.", headers={"WWW-Authenticate": "Bearer"})
        return key_id_for(matched)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind_is_safe(host: str, keys: ApiKeys, api_keys_env: str) -> None:
    """Refuse to listen beyond this machine without keys: an open model endpoint is a free GPU for anyone."""
    if not keys.required and not is_loopback(host):
        raise ConfigError(
            f"serving on {host} without API keys would let anyone on the network use the model",
            where="serve.host",
            fix=f"set serve.api_keys or the {api_keys_env} environment variable, or serve on 127.0.0.1",
        )
