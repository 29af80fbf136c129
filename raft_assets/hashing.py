"""Content hashes: the identities of documents, chunks and requests."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path


def content_hash(*parts: str) -> str:
    """A 128-bit hex digest of the parts (joined unambiguously)."""
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        encoded = part.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()


def tree_fingerprint(root: Path, leaving_out: str | None = None) -> str:
    """`files_fingerprint` of every file under `root` (a checkpoint folder, say), but those named `leaving_out`."""
    return files_fingerprint(
        root, sorted(path for path in root.rglob("*") if path.is_file() and path.name != leaving_out)
    )


def files_fingerprint(root: Path, files: Iterable[Path]) -> str:
    """A hash of the files' paths (relative to `root`), sizes and modification times: it changes when a file does,
    without reading any file."""
    entries = []
    for path in files:
        stat = path.lstat()
        entries.append(f"{path.relative_to(root).as_posix()}:{stat.st_size}:{stat.st_mtime_ns}")
    return content_hash(*entries)


def chunks_fingerprint(chunk_ids: Iterable[str]) -> str:
    """The identity of a set of chunks, whatever their order: the same texts chunked the same way give the same one
    (a chunk's id is its text's hash)."""
    return content_hash(*sorted(set(chunk_ids)))
