"""Atomic file and folder writes: after an error nothing is left half-written."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def tunekit_home() -> Path:
    """Root of tunekit's caches (`$TUNEKIT_HOME`, default `~/.cache/tunekit`)."""
    return Path(os.environ.get("TUNEKIT_HOME", Path.home() / ".cache" / "tunekit")).expanduser()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it into place only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.chmod(0o644)  # mkstemp makes it private; the result is an ordinary file
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text_atomic(target: str | os.PathLike[str], text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(target: str | os.PathLike[str], data: Any) -> None:
    write_text_atomic(target, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def jsonl_bytes(rows: list[dict[str, Any]]) -> bytes:
    """Rows as JSONL, the one serialisation every JSONL tunekit writes uses (hashes compare across writers)."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def write_jsonl_atomic(target: str | os.PathLike[str], rows: list[dict[str, Any]]) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(jsonl_bytes(rows))


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str], *, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; rename it to `target` only if the block succeeds.

    With `replace=True` an existing `target` is swapped out; otherwise its presence is an error
    left to the caller to prevent (we never merge into a half-old folder).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield tmp
        move_into_place(tmp, target, replace=replace)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def move_into_place(tmp: Path, target: Path, *, replace: bool = True) -> None:
    """Rename the finished folder `tmp` to `target`; with `replace`, an existing `target` is swapped out."""
    if target.exists() and replace:
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def require_free_space(folder: str | os.PathLike[str], tensors: Iterable[Any], what: str, fix: str) -> None:
    """Fail before writing `what` (these tensors, plus 5% and 16 MB for headers and small files) when the
    disk cannot hold it. A write that runs out of space part-way fails deep inside torch or safetensors
    with a message that does not say so ("unexpected pos ...")."""
    from tunekit.errors import UserError

    needed_bytes = int(sum(t.numel() * t.element_size() for t in tensors) * 1.05) + (16 << 20)
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if free < needed_bytes:
        raise UserError(
            f"not enough disk space to write {what}: it needs about {needed_bytes >> 20} MB and "
            f"{free >> 20} MB are free", where=str(existing), fix=fix,
        )


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """A file's SHA-256; for a folder (a saved dataset), one over its files' relative paths and contents."""
    digest = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as fh:
            while block := fh.read(chunk):
                digest.update(block)
    return digest.hexdigest()
