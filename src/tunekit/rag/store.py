"""The index file: one SQLite database holding files, chunks, their vectors and how they were made.

One file is easy to copy next to a model and to open from several server processes at once. Vectors are
float32 blobs in the chunk rows; the BM25 index is not stored (see `tunekit.rag.retrieve`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tunekit.errors import UserError
from tunekit.io import atomic_path

SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,          -- relative to the index file's folder, '/'-separated
    sha256 TEXT NOT NULL,
    unit TEXT NOT NULL              -- 'line' or 'page': what loc_start/loc_end count
);
CREATE TABLE IF NOT EXISTS chunks (
    id TEXT PRIMARY KEY,
    path TEXT NOT NULL REFERENCES files(path) ON DELETE CASCADE,
    ord INTEGER NOT NULL,           -- position in the file
    loc_start INTEGER NOT NULL,
    loc_end INTEGER NOT NULL,
    heading TEXT NOT NULL,
    text TEXT NOT NULL,
    vector BLOB NOT NULL            -- float32, unit length
);
CREATE INDEX IF NOT EXISTS chunks_by_path ON chunks(path, ord);
"""


@dataclass(frozen=True)
class StoredChunk:
    id: str
    ord: int
    loc_start: int
    loc_end: int
    heading: str
    text: str
    vector: np.ndarray | None = None  # None until embedded


@dataclass(frozen=True)
class FileEntry:
    path: str
    sha256: str
    unit: str
    chunks: list[StoredChunk]


@dataclass(frozen=True)
class IndexContents:
    """Everything a retriever needs, column by column in one order."""

    ids: list[str]
    paths: list[str]
    units: list[str]
    loc_starts: list[int]
    loc_ends: list[int]
    headings: list[str]
    texts: list[str]
    vectors: np.ndarray  # (n, dim) float32


def read_state(index: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(meta, path -> sha256) of an existing index, or two empty dicts when there is none yet."""
    if not index.exists():
        return {}, {}
    with closing(_connect(index, read_only=True)) as conn:
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        hashes = dict(conn.execute("SELECT path, sha256 FROM files"))
    return meta, hashes


def write_changes(index: Path, meta: dict[str, str], upserts: list[FileEntry], removed: list[str]) -> None:
    """Apply a re-index in one transaction (a new index is built beside it and renamed into place),
    so an interrupted run leaves the previous index as it was."""
    with _writable(index) as conn, conn:  # the inner `conn` context commits, or rolls back on error
        conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", meta.items())
        conn.executemany("DELETE FROM files WHERE path = ?", [(path,) for path in removed])
        for entry in upserts:
            conn.execute("DELETE FROM files WHERE path = ?", (entry.path,))  # cascades to its chunks
            conn.execute(
                "INSERT INTO files(path, sha256, unit) VALUES (?, ?, ?)", (entry.path, entry.sha256, entry.unit)
            )
            conn.executemany(
                "INSERT INTO chunks(id, path, ord, loc_start, loc_end, heading, text, vector) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (c.id, entry.path, c.ord, c.loc_start, c.loc_end, c.heading, c.text, _blob(c.vector))
                    for c in entry.chunks
                ],
            )


def count_chunks(index: Path) -> int:
    with closing(_connect(index, read_only=True)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])


def load_contents(index: Path) -> tuple[dict[str, str], IndexContents]:
    """(meta, every chunk) of an index, in file then position order."""
    with closing(_connect(index, read_only=True)) as conn:
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        rows = conn.execute(
            "SELECT c.id, c.path, f.unit, c.loc_start, c.loc_end, c.heading, c.text, c.vector "
            "FROM chunks c JOIN files f ON f.path = c.path ORDER BY c.path, c.ord"
        ).fetchall()
    dim = int(meta.get("embedding_dim", "0"))
    vectors = np.frombuffer(b"".join(row[7] for row in rows), dtype=np.float32).reshape(len(rows), dim)
    columns = list(zip(*rows)) if rows else [[] for _ in range(7)]
    return meta, IndexContents(
        ids=list(columns[0]),
        paths=list(columns[1]),
        units=list(columns[2]),
        loc_starts=list(columns[3]),
        loc_ends=list(columns[4]),
        headings=list(columns[5]),
        texts=list(columns[6]),
        vectors=vectors,
    )


def _blob(vector: np.ndarray | None) -> bytes:
    if vector is None:
        raise ValueError("chunk written before it was embedded")  # a bug in tunekit, not user input
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


@contextmanager
def _writable(index: Path) -> Iterator[sqlite3.Connection]:
    if index.exists():
        with closing(_connect(index, read_only=False)) as conn:
            yield conn
        return
    with atomic_path(index) as tmp, closing(sqlite3.connect(tmp)) as conn:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.executescript(_SCHEMA)
        conn.execute("INSERT INTO meta(key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        conn.commit()
        yield conn


def _connect(index: Path, *, read_only: bool) -> sqlite3.Connection:
    if not index.is_file():
        raise UserError("index file does not exist", where=str(index), fix="build it with `tunekit index DOCS --out`")
    # Read-only opens never create a file or take a write lock, so servers can share one index.
    uri = f"{index.resolve().as_uri()}?mode={'ro' if read_only else 'rw'}"
    conn = sqlite3.connect(uri, uri=True)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise UserError(f"not a tunekit index ({exc})", where=str(index), fix="build it with `tunekit index`") from None
    if version is None or version[0] != SCHEMA_VERSION:
        conn.close()
        raise UserError(
            f"index schema {version[0] if version else 'unknown'} is not the supported {SCHEMA_VERSION}",
            where=str(index),
            fix="rebuild it with `tunekit index` into a new file",
        )
    return conn
