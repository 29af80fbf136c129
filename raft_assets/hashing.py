"""Content hashes: the identities of documents, chunks and requests."""

from __future__ import annotations

import hashlib


def content_hash(*parts: str) -> str:
    """A 128-bit hex digest of the parts (joined unambiguously)."""
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        encoded = part.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()
