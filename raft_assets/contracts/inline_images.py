"""A PNG shown inline in markdown (a `data:` URI), as the Dagster UI renders a markdown metadata value: plots seen on
the asset's page, not a path to open elsewhere. Every stage that plots (evaluation, training, curation) shares it."""

from __future__ import annotations

import base64
from pathlib import Path

MAX_INLINE_BYTES = 100_000  # of the PNG; base64 adds a third. Bigger ones bloat the event log: linked instead


def inline_png(path: Path, alt: str, max_bytes: int = MAX_INLINE_BYTES) -> str:
    """Markdown showing the PNG at `path` inline; a PNG over `max_bytes` is named, with its path, instead."""
    data = path.read_bytes()
    if len(data) > max_bytes:
        return f"*{alt}: {len(data) // 1000} KB, too large to show inline (over {max_bytes // 1000} KB): `{path}`*"
    return f"![{alt}](data:image/png;base64,{base64.b64encode(data).decode('ascii')})"
