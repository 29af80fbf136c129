"""Near-duplicate questions within a source: of those saying the same, only the best-rated is kept."""

from __future__ import annotations

import numpy as np

BLOCK_ROWS = 256  # rows of the similarity matrix computed at once: 256 x n float32, whatever n is


def near_duplicates(vectors: np.ndarray, threshold: float) -> dict[int, int]:
    """{row: the row it duplicates} for L2-normalised `vectors` in order of preference (best first).

    Greedy in that order: a row whose cosine with an earlier row that is kept is at least `threshold` is a
    duplicate of the first such row; otherwise it is kept. So the row kept for a group is its most preferred, and a
    duplicate never names another duplicate.
    """
    duplicates: dict[int, int] = {}
    for start in range(0, len(vectors), BLOCK_ROWS):
        similar = vectors[start : start + BLOCK_ROWS] @ vectors[: start + BLOCK_ROWS].T
        for offset, row in enumerate(similar):
            index = start + offset
            earlier = np.flatnonzero(row[:index] >= threshold)
            kept = next((int(j) for j in earlier if j not in duplicates), None)
            if kept is not None:
                duplicates[index] = kept
    return duplicates
