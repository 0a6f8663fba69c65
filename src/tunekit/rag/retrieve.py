"""Retrieval over an index: BM25, dense cosine, or both fused by reciprocal rank.

BM25 finds exact words (product names, error codes); dense vectors find paraphrases. Reciprocal rank
fusion (Cormack et al., 2009) combines the two rankings without calibrating their unrelated scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from tunekit.errors import UserError, require
from tunekit.rag.chunk import search_text
from tunekit.rag.store import load_contents

if TYPE_CHECKING:
    from tunekit.config import ProjectConfig

Mode = Literal["hybrid", "bm25", "dense"]
MODES = ("hybrid", "bm25", "dense")
# How deep each ranking goes into the fusion: past this, a chunk's 1/(k + rank) share is negligible.
_FUSION_DEPTH = 100


@dataclass(frozen=True)
class Retrieved:
    chunk_id: str
    path: str  # relative to the index file's folder
    line_start: int  # first source line; the first page for PDFs (see `unit`)
    line_end: int
    text: str
    score: float  # BM25 score, cosine similarity, or fused RRF score, by mode
    rank: int  # 1-based
    unit: str = "line"  # "line", or "page" for PDFs
    heading: str = ""  # heading trail of the chunk's section


class Retriever:
    """Loads an index once and answers queries from memory."""

    def __init__(self, index_path: str | Path, *, top_k: int = 4, mode: Mode = "hybrid", rrf_k: int = 60):
        if mode not in MODES:
            raise UserError(f"unknown retrieval mode '{mode}'", where="rag.mode", fix=f"use one of {', '.join(MODES)}")
        self.index_path = Path(index_path)
        self.top_k, self.mode, self.rrf_k = top_k, mode, rrf_k
        self.meta, self.contents = load_contents(self.index_path)
        _check_embedding_model(self.meta, self.index_path)
        # Built now rather than on the first query, so a server's first request is not the slow one.
        self._bm25: Any = self._build_bm25() if mode != "dense" and len(self) else None

    @classmethod
    def from_config(cls, cfg: ProjectConfig, *, say: Any = None) -> Retriever:
        """The retriever `cfg.rag` describes; builds the index first when it is missing but docs are set."""
        rag = cfg.rag
        if rag.index is None and not rag.docs:
            raise UserError("retrieval needs an index or documents", where="rag", fix="set rag.index or rag.docs")
        index = (cfg.base_dir / (rag.index or "rag_index.db")).resolve()
        if not index.exists():
            if not rag.docs:
                raise UserError(
                    "index file does not exist and rag.docs is empty",
                    where=str(index),
                    fix="build it with `tunekit index DOCS --out FILE`, or set rag.docs",
                )
            from tunekit.rag.index import build_index

            docs = [(cfg.base_dir / doc).resolve() for doc in rag.docs]
            build_index(docs, index, chunk_chars=rag.chunk_chars, chunk_overlap=rag.chunk_overlap, say=say)
        return cls(index, top_k=rag.top_k, mode=rag.mode, rrf_k=rag.rrf_k)

    def __len__(self) -> int:
        return len(self.contents.ids)

    def search(self, query: str, top_k: int | None = None) -> list[Retrieved]:
        """The `top_k` best chunks for `query`, best first; empty for an empty query or index."""
        k = self.top_k if top_k is None else top_k
        if not query.strip() or not len(self) or k <= 0:
            return []
        if self.mode == "bm25":
            scored = _top(self._bm25_scores(query), k, positive_only=True)
        elif self.mode == "dense":
            scored = _top(self._dense_scores(query), k)
        else:
            scored = self._fused(query, k)
        return [self._retrieved(row, score, rank) for rank, (row, score) in enumerate(scored, start=1)]

    def _fused(self, query: str, k: int) -> list[tuple[int, float]]:
        depth = max(k, _FUSION_DEPTH)
        fused: dict[int, float] = {}
        lexical = _top(self._bm25_scores(query), depth, positive_only=True)
        for ranking in (lexical, _top(self._dense_scores(query), depth)):
            for rank, (row, _) in enumerate(ranking, start=1):
                fused[row] = fused.get(row, 0.0) + 1.0 / (self.rrf_k + rank)
        # Ties (a chunk first in one list and absent from the other) keep index order, so results are stable.
        return sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:k]

    def _bm25_scores(self, query: str) -> np.ndarray:
        import bm25s

        tokens = bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)[0]
        if not tokens:
            return np.zeros(len(self), dtype=np.float32)
        return np.asarray(self._bm25.get_scores(tokens), dtype=np.float32)

    def _build_bm25(self) -> Any:
        # bm25s persists to a folder of .npy/.json files, not into SQLite, so the BM25 index is rebuilt
        # from the stored chunk texts when the retriever loads: milliseconds for thousands of chunks, and
        # the index stays one self-consistent file.
        bm25s = require("bm25s", "BM25 retrieval")
        texts = [search_text(h, t) for h, t in zip(self.contents.headings, self.contents.texts)]
        bm25 = bm25s.BM25()
        bm25.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
        return bm25

    def _dense_scores(self, query: str) -> np.ndarray:
        from tunekit.rag.embed import embed_texts

        return self.contents.vectors @ embed_texts([query])[0]  # unit vectors: dot product = cosine

    def _retrieved(self, row: int, score: float, rank: int) -> Retrieved:
        c = self.contents
        return Retrieved(
            chunk_id=c.ids[row],
            path=c.paths[row],
            line_start=c.loc_starts[row],
            line_end=c.loc_ends[row],
            text=c.texts[row],
            score=float(score),
            rank=rank,
            unit=c.units[row],
            heading=c.headings[row],
        )


def _check_embedding_model(meta: dict[str, str], index: Path) -> None:
    # Query vectors from one model compared with chunk vectors from another would rank at random.
    from tunekit.rag.index import EMBEDDING_MODEL

    if meta.get("embedding_model", EMBEDDING_MODEL) != EMBEDDING_MODEL:
        raise UserError(
            f"index was embedded with {meta['embedding_model']}, not {EMBEDDING_MODEL}",
            where=str(index),
            fix="re-run `tunekit index` on it",
        )


def _top(scores: np.ndarray, k: int, *, positive_only: bool = False) -> list[tuple[int, float]]:
    """(row, score) of the k highest scores; with `positive_only`, chunks sharing no word are left out."""
    order = np.argsort(-scores, kind="stable")[:k]
    return [(int(row), float(scores[row])) for row in order if not positive_only or scores[row] > 0]
