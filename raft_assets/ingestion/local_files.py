"""Loading a local folder: text, markdown, HTML and PDF files, one document per file."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from pathlib import Path

from raft_assets.contracts.sources import HtmlExtraction, LocalSource, SourcesError
from raft_assets.hashing import content_hash, files_fingerprint
from raft_assets.ingestion.html import NO_TEXT_IN_PAGE, extract_page
from raft_assets.ingestion.loaded import DocumentError, LoadedDocument
from raft_assets.ingestion.pdf import read_pdf

_MARKDOWN_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_SNIFF_BYTES = 8192


def load_folder(source: LocalSource) -> list[LoadedDocument]:
    """One `LoadedDocument` per matching file, in path order; unreadable files carry their error."""
    if not source.path.is_dir():
        raise SourcesError(f"Folder {source.path} of source {source.name!r} does not exist.")
    return [load_file(path, source) for path in matching_files(source)]


def matching_files(source: LocalSource) -> list[Path]:
    """Files (and dangling links, reported as unreadable) matched by include, not by exclude.

    An exclude pattern that matches a folder (`drafts/**`) excludes everything under it.
    """

    def glob(patterns: list[str]) -> set[Path]:
        return {path for pattern in patterns for path in source.path.glob(pattern)}

    excluded = glob(source.exclude)
    return sorted(
        path
        for path in glob(source.include)
        if (path.is_file() or path.is_symlink()) and not excluded.intersection([path, *path.parents])
    )


def folder_fingerprint(source: LocalSource) -> str:
    """A hash of the matching files' names, sizes and modification times, and of how HTML is read: it changes when
    a file does, or the source's `html_extraction`."""
    if not source.path.is_dir():
        return content_hash("missing folder")
    return content_hash(files_fingerprint(source.path, matching_files(source)), source.html_extraction)


def load_file(path: Path, source: LocalSource) -> LoadedDocument:
    uri = path.relative_to(source.path).as_posix()
    max_bytes = int(source.max_file_mb * 1_000_000)
    reader = _readers(source.html_extraction).get(path.suffix.lower())
    if reader is None:
        return LoadedDocument.failed(uri, f"unsupported file type {path.suffix or '(none)'!r}")
    try:
        size = path.stat().st_size
        if size == 0:
            raise DocumentError("empty file")
        if size > max_bytes:
            raise DocumentError(f"file is {size / 1e6:.1f} MB, over the {max_bytes / 1e6:g} MB limit (max_file_mb)")
        title, text = reader(path)
    except DocumentError as error:
        return LoadedDocument.failed(uri, str(error))
    except OSError as error:
        return LoadedDocument.failed(uri, f"cannot read file: {error.strerror or error}{_broken_link(path)}")
    if not text.strip():
        return LoadedDocument.failed(uri, "no text in the file, only whitespace")
    return LoadedDocument(uri=uri, title=title or path.stem, text=text)


def _broken_link(path: Path) -> str:
    if path.is_symlink() and not path.exists():
        return f" (a broken symbolic link to {os.readlink(path)})"
    return ""


def _decode_text(data: bytes) -> str:
    if b"\x00" in data[:_SNIFF_BYTES]:
        raise DocumentError("binary content (NUL bytes) in a text file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DocumentError(f"not valid UTF-8: byte 0x{data[error.start]:02x} at offset {error.start}") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _read_markdown(path: Path) -> tuple[str, str]:
    text = _decode_text(path.read_bytes())
    heading = _MARKDOWN_HEADING.search(text)
    return (heading.group(1) if heading else ""), text


def _read_plain_text(path: Path) -> tuple[str, str]:
    text = _decode_text(path.read_bytes())
    first_line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return first_line[:120], text


def _read_html(path: Path, mode: HtmlExtraction) -> tuple[str, str]:
    data = path.read_bytes()
    if b"\x00" in data[:_SNIFF_BYTES]:
        raise DocumentError("binary content (NUL bytes) in an HTML file")
    page = extract_page(data, mode)
    if not page.text:
        raise DocumentError(NO_TEXT_IN_PAGE)
    return page.title, page.text


def _readers(html_extraction: HtmlExtraction) -> dict[str, Callable[[Path], tuple[str, str]]]:
    """The reader of each file extension; HTML in the source's extraction mode."""
    read_html = functools.partial(_read_html, mode=html_extraction)
    return {
        ".md": _read_markdown,
        ".markdown": _read_markdown,
        ".txt": _read_plain_text,
        ".html": read_html,
        ".htm": read_html,
        ".pdf": read_pdf,
    }
