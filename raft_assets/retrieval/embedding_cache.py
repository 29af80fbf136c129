"""A cache of embeddings on disk (SQLite): a text embedded once by a model is never embedded by it again.

Keyed by the model's identity (its folder and the sizes and times of its files) and the text's hash; the text
itself is not stored. It is what makes a killed index build resume where it stopped, a recipe with its own chunking
embed only the chunks that differ, and every run after the first skip the embedding of the same eval questions.
Several processes may share one file (`RAFT_EMBEDDING_CACHE`); deleting it only costs the time to embed again.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from raft_assets.files import open_shared_database
from raft_assets.hashing import content_hash

LOOKUP_BATCH = 500
"""Texts looked up per query (SQLite allows 32,766 parameters per statement since 3.32; fewer keeps it quick)."""


class EmbeddingCacheError(RuntimeError):
    """The cache file cannot be used (damaged, not a cache, not writable)."""


class EmbeddingCache:
    """(model key, text's hash) -> float32 vector, in a SQLite file that several processes and threads use at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # one connection, used by the serving threads of a process too
        try:
            self._db = open_shared_database(
                path,
                "CREATE TABLE IF NOT EXISTS embeddings (model TEXT NOT NULL, text_hash TEXT NOT NULL,"
                " vector BLOB NOT NULL, PRIMARY KEY (model, text_hash)) WITHOUT ROWID",
            )
        except (OSError, sqlite3.DatabaseError) as error:
            raise EmbeddingCacheError(
                f"The embedding cache {path} cannot be used ({error}). It only saves time: delete it (or point "
                "RAFT_EMBEDDING_CACHE elsewhere) and run again."
            ) from error

    def lookup(self, model: str, texts: Sequence[str]) -> list[np.ndarray | None]:
        """The cached vector of each text by `model`, None where there is none."""
        keys = [content_hash(text) for text in texts]
        found: dict[str, bytes] = {}
        with self._lock:
            for start in range(0, len(keys), LOOKUP_BATCH):
                part = sorted(set(keys[start : start + LOOKUP_BATCH]))
                places = ",".join("?" * len(part))
                rows = self._db.execute(
                    f"SELECT text_hash, vector FROM embeddings WHERE model = ? AND text_hash IN ({places})",
                    (model, *part),
                )
                found.update(rows)
        return [np.frombuffer(found[key], dtype=np.float32) if key in found else None for key in keys]

    def store(self, model: str, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Adds the vectors of texts not in the cache yet. A text's first vector stays: one computed in a batch of
        other texts may differ from it in the last bits, and every reader must get the same one."""
        rows = [
            (model, content_hash(text), np.ascontiguousarray(vector, dtype=np.float32).tobytes())
            for text, vector in zip(texts, vectors, strict=True)
        ]
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO embeddings (model, text_hash, vector) VALUES (?, ?, ?)", rows)
            self._db.execute("COMMIT")

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]

    def close(self) -> None:
        self._db.close()
