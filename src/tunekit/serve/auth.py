"""Bearer API keys on requests (the keys themselves come from `tunekit.secrets`); none set means no auth,
loopback only.

Keys are never logged: requests are identified by `key_id_for(key)`, a short hash the request log and the
rate limiter use instead.
"""

from __future__ import annotations

import ipaddress

from tunekit.errors import ConfigError
from tunekit.monitor.logdb import key_id_for
from tunekit.secrets import ApiKeys
from tunekit.serve.errors import ApiError

BEARER = "bearer "


def authenticate(keys: ApiKeys, authorization: str | None, kind: str = "API key") -> str | None:
    """The caller's key id, or None when no keys are configured; a 401 ApiError otherwise. `kind` names the
    keys in messages ("admin key" on the admin routes)."""
    if not keys.required:
        return None
    if not authorization or not authorization.lower().startswith(BEARER):
        raise ApiError(401, f"Missing {kind}: send 'Authorization: Bearer KEY'.",
                       headers={"WWW-Authenticate": "Bearer"})
    matched = keys.matching(authorization[len(BEARER):].strip())
    if matched is None:
        raise ApiError(401, f"Incorrect {kind} provided.", headers={"WWW-Authenticate": "Bearer"})
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
            fix=f"set the {api_keys_env} environment variable or serve.api_keys_file, or serve on 127.0.0.1",
        )
