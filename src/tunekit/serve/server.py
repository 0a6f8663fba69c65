"""Run the app under uvicorn: in the foreground (`tunekit serve`) or in a background thread (tests, the demo).

    with serve_in_thread(build_state(...)) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="...")

Port 0 picks a free port; the real one is read back from the listening socket, so there is no window in
which another process can take it between choosing and binding.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tunekit.errors import require
from tunekit.serve.auth import check_bind_is_safe

STARTUP_TIMEOUT_S = 30.0


@dataclass
class RunningServer:
    host: str
    port: int
    state: Any  # the ServerState behind the app

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What OpenAI clients take as `base_url`."""
        return f"{self.url}/v1"


def uvicorn_server(app: Any, host: str, port: int, *, trusted_proxies: Sequence[str] = (),
                   log_level: str = "warning") -> Any:
    """uvicorn on `host:port`, taking the client address from X-Forwarded-For only from `trusted_proxies`.

    uvicorn's default trusts that header from 127.0.0.1 (or $FORWARDED_ALLOW_IPS): any local process could
    then pose as a new client per request and get a fresh rate-limit and failed-key budget each time."""
    uvicorn = require("uvicorn", "serving")
    # The app has its own access log (SQLite) and metrics; uvicorn's per-request lines would only duplicate them.
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=5, server_header=False,
                            proxy_headers=bool(trusted_proxies), forwarded_allow_ips=list(trusted_proxies))
    return uvicorn.Server(config)


def run_forever(state: Any, host: str, port: int) -> None:
    """Serve until Ctrl-C or SIGTERM (uvicorn handles both and finishes requests in flight).

    uvicorn then restores the handlers it found and raises the signal again. Found ignored (a process started
    from a background job inherits SIGINT so), that second signal would be lost and the command would end as
    if nothing had stopped it; the CLI's handlers (`stop_signals_interrupt`) make it a KeyboardInterrupt.
    """
    from tunekit.serve.app import create_app

    check_bind_is_safe(host, state.keys, state.serve.api_keys_env)
    uvicorn_server(create_app(state), host, port, trusted_proxies=state.serve.trusted_proxies).run()


@contextmanager
def serve_in_thread(state: Any, host: str = "127.0.0.1", port: int = 0) -> Iterator[RunningServer]:
    """Start a real server on `host:port` in a daemon thread; stop it (finishing requests) on exit."""
    from tunekit.serve.app import create_app

    check_bind_is_safe(host, state.keys, state.serve.api_keys_env)
    server = uvicorn_server(create_app(state), host, port, trusted_proxies=state.serve.trusted_proxies)
    thread = threading.Thread(target=server.run, name="tunekit-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"the server on {host}:{port} stopped while starting (is the port in use?)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the server on {host}:{port} did not start within {STARTUP_TIMEOUT_S:.0f} s")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield RunningServer(host, bound, state)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
