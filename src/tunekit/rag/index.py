"""Building and updating an index: read, chunk, embed and store only what changed.

A file whose bytes are unchanged (same SHA-256) is skipped, a changed one has all its chunks replaced,
and a file no longer among the given documents is removed. Changing the chunk settings or the embedding
model re-indexes everything, since old and new chunks would not be comparable.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from tunekit.errors import UserError
from tunekit.io import sha256_file
from tunekit.rag.chunk import chunk_lines, search_text
from tunekit.rag.readers import SUPPORTED_SUFFIXES, read_document
from tunekit.rag.store import FileEntry, StoredChunk, count_chunks, read_state, write_changes

EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass
class IndexReport:
    index: Path
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    chunks_written: int = 0
    chunks_total: int = 0
    seconds: float = 0.0


def collect_documents(docs: list[Path]) -> list[Path]:
    """Supported files among `docs`, folders searched recursively (hidden entries skipped), sorted."""
    found: dict[Path, None] = {}  # a dict keeps first-seen order and drops a file named twice
    for doc in docs:
        if not doc.exists():
            raise UserError("does not exist", where=str(doc), fix="pass existing files or folders to index")
        if doc.is_dir():
            for path in sorted(doc.rglob("*")):
                hidden = any(part.startswith(".") for part in path.relative_to(doc).parts)
                if path.is_file() and not hidden and path.suffix.lower() in SUPPORTED_SUFFIXES:
                    found[path.resolve()] = None
        elif doc.suffix.lower() in SUPPORTED_SUFFIXES:
            found[doc.resolve()] = None
        else:
            raise UserError(
                f"unsupported document type '{doc.suffix or doc.name}'",
                where=str(doc),
                fix=f"index {', '.join(SUPPORTED_SUFFIXES)} files",
            )
    if not found:
        raise UserError(
            f"no {', '.join(SUPPORTED_SUFFIXES)} files found",
            where=", ".join(str(d) for d in docs),
        )
    return list(found)


def build_index(
    docs: list[Path],
    index: Path,
    *,
    chunk_chars: int = 1200,
    chunk_overlap: int = 200,
    say: Callable[[str], object] | None = None,
) -> IndexReport:
    """Create or update the SQLite index at `index` from the documents under `docs`."""
    started = time.perf_counter()
    index = index.resolve()
    files = collect_documents(docs)
    report = IndexReport(index=index)
    meta = _index_meta(chunk_chars, chunk_overlap)
    old_meta, old_hashes = read_state(index)
    settings_changed = any(old_meta.get(key) != value for key, value in meta.items())

    upserts: list[FileEntry] = []
    current: set[str] = set()
    for path in files:
        key = document_key(path, index)
        current.add(key)
        digest = sha256_file(path)
        if key in old_hashes and old_hashes[key] == digest and not settings_changed:
            report.skipped.append(key)
            continue
        (report.changed if key in old_hashes else report.added).append(key)
        upserts.append(_read_and_chunk(path, key, digest, chunk_chars, chunk_overlap))
    report.removed = sorted(set(old_hashes) - current)

    upserts = _embed(upserts, say)
    report.chunks_written = sum(len(entry.chunks) for entry in upserts)
    if upserts or report.removed or settings_changed or not index.exists():
        write_changes(index, meta, upserts, report.removed)
    report.chunks_total = count_chunks(index)
    report.seconds = time.perf_counter() - started
    return report


def document_key(path: Path, index: Path) -> str:
    """How the index names a document: relative to the index file's folder when it lies below it (an index
    and its documents can move together, and re-indexing from another working directory still recognises
    every file), otherwise absolute (a citation reading `../../docs/x.md` would help nobody)."""
    try:
        relative = os.path.relpath(path, index.parent)
    except ValueError:  # another drive on Windows: no relative path exists
        return path.as_posix()
    return path.as_posix() if relative.startswith("..") else Path(relative).as_posix()


def chunk_id(key: str, loc_start: int, loc_end: int, text: str) -> str:
    """Content-addressed: an unchanged chunk keeps its id when its file is re-indexed."""
    return hashlib.sha256(f"{key}\0{loc_start}\0{loc_end}\0{text}".encode()).hexdigest()[:16]


def _index_meta(chunk_chars: int, chunk_overlap: int) -> dict[str, str]:
    from tunekit.rag.embed import EMBEDDING_DIM

    return {
        "embedding_model": EMBEDDING_MODEL,
        "embedding_dim": str(EMBEDDING_DIM),
        "chunk_chars": str(chunk_chars),
        "chunk_overlap": str(chunk_overlap),
    }


def _read_and_chunk(path: Path, key: str, digest: str, chunk_chars: int, overlap: int) -> FileEntry:
    document = read_document(path)
    chunks = chunk_lines(document.lines, chunk_chars=chunk_chars, overlap=overlap)
    stored = [
        StoredChunk(chunk_id(key, c.loc_start, c.loc_end, c.text), i, c.loc_start, c.loc_end, c.heading, c.text)
        for i, c in enumerate(chunks)
    ]
    return FileEntry(key, digest, document.unit, stored)


def _embed(entries: list[FileEntry], say: Callable[[str], object] | None) -> list[FileEntry]:
    """The same entries with vectors, embedded in one batch run (far faster than file by file)."""
    chunks = [(entry, chunk) for entry in entries for chunk in entry.chunks]
    if not chunks:
        return entries
    from tunekit.rag.embed import embed_texts

    if say:
        say(f"embedding {len(chunks)} chunks from {len(entries)} files")
    vectors = iter(embed_texts([search_text(chunk.heading, chunk.text) for _, chunk in chunks]))
    return [replace(e, chunks=[replace(c, vector=next(vectors)) for c in e.chunks]) for e in entries]
