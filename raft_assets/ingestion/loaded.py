"""What a loader returns for one file or page: its text, or the reason it could not be read."""

from __future__ import annotations

from dataclasses import dataclass


class DocumentError(Exception):
    """A file or page that cannot be turned into text; the message says why."""


@dataclass(frozen=True)
class LoadedDocument:
    uri: str
    title: str
    text: str
    error: str | None = None

    @classmethod
    def failed(cls, uri: str, error: str) -> LoadedDocument:
        return cls(uri=uri, title="", text="", error=error)


def opening(data: bytes, length: int = 40) -> str:
    """The first `length` bytes of a file or response as a quoted one-line string, to say what it holds."""
    return repr(" ".join(data[:length].decode("utf-8", "replace").split()))
