"""Reading a PDF's text with pypdf, without the running headers, footers and page numbers repeated on its pages.

A line is running when it sits among the first or last `EDGE_LINES` lines of a page and, with its digits
replaced by `#`, is on at least `RUNNING_SHARE` of the pages ("Acme manual, v2", "Page 3 of 10", "- 3 -", "3"
all repeat that way). Such lines would otherwise be glued into chunks between the paragraphs that a page
break splits, and a generator would ask about them.
"""

from __future__ import annotations

import io
import math
import re
from collections import Counter
from pathlib import Path

from raft_assets.ingestion.loaded import DocumentError, opening

EDGE_LINES = 2  # lines at the top, and at the bottom, of a page where running headers and footers are looked for
RUNNING_SHARE = 0.5  # of the pages
MIN_PAGES = 3  # with fewer pages, a repeated line cannot be told from a repeated sentence
_DIGITS = re.compile(r"\d+")


def read_pdf(path: Path) -> tuple[str, str]:
    """The PDF's title (from its metadata) and text: its pages' text, running lines removed, blank-line separated."""
    from pypdf import PdfReader  # here: 0.2 s to import, for the sources with PDFs alone

    data = path.read_bytes()
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise DocumentError("encrypted PDF")
        pages = [page.extract_text() or "" for page in reader.pages]
        title = (reader.metadata.title if reader.metadata else None) or ""
    except (DocumentError, OSError):
        raise
    except Exception as error:  # pypdf raises many exception types on malformed files
        raise DocumentError(f"not a readable PDF: {_pdf_damage(data, error)}") from None
    text = "\n\n".join(page.strip() for page in without_running_lines(pages) if page.strip())
    if not text:
        raise DocumentError("PDF has no extractable text (scanned images?)")
    return str(title).strip(), text


def without_running_lines(pages: list[str]) -> list[str]:
    """Each page's text without the lines at its top or bottom that repeat (digits aside) on most pages."""
    lines = [page.splitlines() for page in pages]
    if len(pages) < MIN_PAGES:
        return pages
    edges = [_edges(page) for page in lines]
    counts = Counter(key for page, found in zip(lines, edges, strict=True) for key in {_key(page[i]) for i in found})
    needed = max(2, math.ceil(RUNNING_SHARE * len(pages)))
    running = {key for key, count in counts.items() if count >= needed}
    return [
        "\n".join(line for i, line in enumerate(page) if i not in found or _key(line) not in running)
        for page, found in zip(lines, edges, strict=True)
    ]


def _edges(page: list[str]) -> set[int]:
    """The indices of the first and the last EDGE_LINES lines with text."""
    filled = [i for i, line in enumerate(page) if line.strip()]
    return set(filled[:EDGE_LINES] + filled[-EDGE_LINES:])


def _key(line: str) -> str:
    return " ".join(_DIGITS.sub("#", line).split())


def _pdf_damage(data: bytes, error: Exception) -> str:
    """What is wrong with a PDF that pypdf could not read: not a PDF at all, cut short, or damaged inside."""
    if b"%PDF-" not in data[:1024]:
        return f"no %PDF- header, so not a PDF at all (it starts with {opening(data)})"
    if b"%%EOF" not in data[-1024:]:
        return f"truncated, no %%EOF end marker ({type(error).__name__}: {error})"
    return f"{type(error).__name__}: {error}"
