"""A missing optional package (an extra of pyproject.toml) ends any command in a one-line message with the exact
install command and exit code 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import run_in_process
from train_helpers import make_project
from tunekit.errors import MissingDependency, missing_dependency, require

# `tunekit ARGS` through the real entry point, with the packages named in argv[1] not installed: importing one
# raises ModuleNotFoundError naming it and importlib.util.find_spec returns None, as when pip never put it there.
WITHOUT = """
import sys
blocked, *args = sys.argv[1:]
sys.modules.update(dict.fromkeys(blocked.split(",")))
sys.argv = ["tunekit", *args]
from tunekit.cli.main import run
run()
"""


def tunekit_without(blocked: str, *args: object, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT, blocked, *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=os.environ.copy(), timeout=300)


def assert_install_hint(result: subprocess.CompletedProcess, command: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    assert command in result.stderr, result.stderr[-3000:]  # brackets included: not taken for rich markup
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("module", ["fastapi", "uvicorn", "prometheus_client"])
def test_serve_without_the_serve_extra(tmp_path, module):
    # Checked before anything loads, so the run folder need not even exist.
    result = tunekit_without(module, "serve", tmp_path / "run", cwd=tmp_path)
    assert_install_hint(result, "pip install 'tunekit[serve]'")
    assert f"needs {module}, which is not installed" in result.stderr


def test_index_without_sentence_transformers(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "refunds.md").write_text("# Refunds\n\nPaid back within 5 days.\n", encoding="utf-8")
    result = tunekit_without("sentence_transformers", "index", tmp_path / "docs", "--out", tmp_path / "index.db",
                             cwd=tmp_path)
    assert_install_hint(result, "pip install 'tunekit[rag]'")


def test_index_of_a_pdf_without_pypdf(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "manual.pdf").write_bytes(b"%PDF-1.4\n")  # never opened: the import fails first
    result = tunekit_without("pypdf", "index", tmp_path / "docs", "--out", tmp_path / "index.db", cwd=tmp_path)
    assert_install_hint(result, "pip install 'tunekit[rag]'")


def test_qlora_train_without_bitsandbytes(tmp_path, tiny_model_dir):
    config = make_project(tmp_path, tiny_model_dir)
    result = tunekit_without("bitsandbytes", "train", config, "method.name=qlora", cwd=tmp_path)
    assert_install_hint(result, "pip install 'tunekit[qlora]'")


def test_an_import_site_without_require_still_ends_in_the_message(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """The CLI's safety net: an optional package imported plainly, deep inside a command."""
    import tunekit.train.setup as setup

    def validate_with_a_plain_import(cfg):
        import bitsandbytes  # noqa: F401

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # not installed
    monkeypatch.setattr(setup, "validate_method", validate_with_a_plain_import)
    code, out = run_in_process(monkeypatch, capsys, "train", make_project(tmp_path, tiny_model_dir))
    assert code == 2 and "needs bitsandbytes, which is not installed (pip install 'tunekit[qlora]')" in out


def test_only_known_optional_packages_become_user_errors():
    assert missing_dependency(ModuleNotFoundError("No module named 'nope'", name="nope")) is None  # a bug: traceback
    wrapped = ImportError("serving is unavailable")  # what an import site may raise instead
    wrapped.__cause__ = ModuleNotFoundError("No module named 'uvicorn'", name="uvicorn")
    assert "pip install 'tunekit[serve]'" in str(missing_dependency(wrapped))


def test_a_package_that_is_installed_but_broken_is_not_called_missing(tmp_path, monkeypatch):
    """A package whose own import fails (one of its dependencies is missing) needs repairing, not installing."""
    (tmp_path / "bm25s").mkdir()
    (tmp_path / "bm25s" / "__init__.py").write_text("import tunekit_test_absent_dependency\n", encoding="utf-8")
    monkeypatch.syspath_prepend(tmp_path)
    monkeypatch.delitem(sys.modules, "bm25s", raising=False)
    with pytest.raises(MissingDependency, match=r"bm25s, which is installed but cannot be imported: .*absent"):
        require("bm25s", "BM25 retrieval")
