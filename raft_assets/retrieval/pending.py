"""Embeddings computed by a run but not yet in the index, saved slice by slice so that a killed run resumes."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from raft_assets.files import written_atomically


class PendingEmbeddings:
    """Parts `part-NNNNN.npz` (chunk ids, embeddings, model) in `folder`, each written atomically."""

    def __init__(self, folder: Path, model: str) -> None:
        self.folder = folder
        self.model = model

    def _parts(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.npz")) if self.folder.is_dir() else []

    def load(self) -> tuple[list[str], np.ndarray | None]:
        """The chunk ids and embeddings of every readable part of this model (None when there is none)."""
        ids: list[str] = []
        arrays: list[np.ndarray] = []
        for part in self._parts():
            try:
                with np.load(part, allow_pickle=False) as data:
                    if str(data["model"]) != self.model:
                        continue
                    part_ids, vectors = data["chunk_ids"].tolist(), data["embeddings"]
            except (OSError, ValueError, KeyError):
                continue  # unreadable: its chunks are embedded again
            if arrays and vectors.shape[1] != arrays[0].shape[1]:
                continue
            ids.extend(part_ids)
            arrays.append(vectors)
        return ids, (np.concatenate(arrays) if arrays else None)

    def add(self, chunk_ids: Sequence[str], embeddings: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        number = max((int(part.stem.removeprefix("part-")) for part in self._parts()), default=-1) + 1
        with written_atomically(self.folder / f"part-{number:05d}.npz") as partial, partial.open("wb") as file:
            np.savez(
                file,
                chunk_ids=np.array(list(chunk_ids), dtype=str),
                embeddings=np.asarray(embeddings, dtype=np.float32),
                model=np.array(self.model),
            )

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
