"""Curation: each generated question rated with its oracle chunk and answer, near-duplicates merged, a verdict."""
