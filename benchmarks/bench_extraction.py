"""Benchmark of HTML main-content extraction on generated documentation pages, against ground truth.

What it measures: N pages (default 2,000) from `raft_assets_tests.doc_sites` (sites of 24 pages, the themes
taking turns: Sphinx alabaster, Sphinx Read the Docs, MkDocs Material, Docusaurus) are turned into text by each
extractor below, one page at a time in this one process (one thread), and the texts are chunked with the
project's splitter (`split_documents` with the `chunks` defaults: chunk_size 1000, overlap 100, min 100
characters; its merging of boilerplate and near duplicates off, so that the extraction alone is measured).
For each extractor:

- chrome: the share of pages, and of chunks, holding a chrome string the page's theme inserted (sidebar, search
  box, "Navigation", footer, "Edit this page", previous/next, breadcrumbs, heading permalinks `¶`/`#`), among
  those that never occur in the page's body;
- code: the share of code examples found verbatim (indentation and blank lines included) in the page's text, and
  in some chunk of the page;
- headings, list items, table cells: the share found in the page's text (whitespace normalised);
- pages/s: pages over the extractor's wall time, and over this process's CPU time (parsing included, chunking
  not); the target compares CPU time, which other work on a shared machine disturbs less.

Extractors: `reference` (the reference recipe's cleaning, `html_extraction: reference`), `main_content` (ours:
the DOM fixes of `raft_assets.ingestion.html`, trafilatura's `bare_extraction`, our renderer), `trafilatura`
as shipped (`extract`, markdown, favor_recall, tables), `readability` (readability-lxml's summary, its text by
resiliparse with formatting kept), `justext` (its non-boilerplate paragraphs; it normalises whitespace, so code
cannot survive), `resiliparse` (`extract_plain_text` with `main_content=True`, formatting kept).

Targets (for `main_content`): chrome in under 1% of chunks; every code example verbatim in some chunk; at least
the reference's pages per CPU second (measured in the same run).

Run from the repository root:

    .venv/bin/python benchmarks/bench_extraction.py [--pages 2000] [--seed 0] [--record]

`--record` writes the section "## Extraction: main content of documentation pages" of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import justext
import trafilatura
from readability import Document
from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.html import HTMLTree
from results import machine_description, publish  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from raft_assets.ingestion.chunking import ChunkingOptions, split_documents  # noqa: E402
from raft_assets.ingestion.documents import documents_frame  # noqa: E402
from raft_assets.ingestion.html import extract_page  # noqa: E402
from raft_assets.ingestion.loaded import LoadedDocument  # noqa: E402
from raft_assets_tests.doc_sites import THEMES, DocPage, generate_pages  # noqa: E402

SECTION_TITLE = "## Extraction: main content of documentation pages"
# The `chunks` defaults (1000/100, min 100 characters), its boilerplate merging off: the extraction alone is measured.
CHUNKING = ChunkingOptions(near_duplicates=False)
TARGET_CHROME_CHUNKS = 0.01
TARGET_CODE_IN_CHUNKS = 1.0
KEY_PACKAGES = ["trafilatura", "readability-lxml", "jusText", "resiliparse", "lxml", "beautifulsoup4"]
CHOSEN = "main_content"


def _resiliparse_text(html: str, main_content: bool) -> str:
    tree = HTMLTree.parse(html)
    return extract_plain_text(
        tree, main_content=main_content, preserve_formatting=True, list_bullets=True, links=False, alt_texts=False
    )


def _justext(html: str) -> str:
    paragraphs = justext.justext(html, justext.get_stoplist("English"))
    return "\n\n".join(paragraph.text for paragraph in paragraphs if not paragraph.is_boilerplate)


def _trafilatura(html: str) -> str:
    options = {"include_formatting": True, "include_tables": True, "favor_recall": True, "deduplicate": False}
    return trafilatura.extract(html, output_format="markdown", include_comments=False, **options) or ""


EXTRACTORS: dict[str, Callable[[str], str]] = {
    "reference": lambda html: extract_page(html, "reference").text,
    "main_content": lambda html: extract_page(html, "main_content").text,
    "trafilatura": _trafilatura,
    "readability": lambda html: _resiliparse_text(Document(html).summary(), main_content=False),
    "justext": _justext,
    "resiliparse": lambda html: _resiliparse_text(html, main_content=True),
}


@dataclass(frozen=True)
class Scores:
    pages_per_s: float  # wall time
    pages_per_cpu_s: float  # this process's CPU time: what the target compares, as the machine may be shared
    empty_pages: float
    chrome_pages: float
    chunks: int
    chrome_chunks: float
    code_in_page: float
    code_in_chunks: float
    headings: float
    list_items: float
    table_cells: float


def _share(hits: int, total: int) -> float:
    return hits / total if total else 1.0


def _found(needles: tuple[str, ...], text: str) -> int:
    flat = " ".join(text.split())
    return sum(" ".join(needle.split()) in flat for needle in needles)


def score(name: str, pages: list[DocPage]) -> Scores:
    extract = EXTRACTORS[name]
    started, started_cpu = time.perf_counter(), time.process_time()
    texts = [extract(page.html) for page in pages]
    elapsed, elapsed_cpu = time.perf_counter() - started, time.process_time() - started_cpu
    loaded = [
        LoadedDocument(uri=page.path, title=page.title, text=text) for page, text in zip(pages, texts, strict=True)
    ]
    frame = documents_frame("bench", loaded)
    chunks = split_documents(frame, CHUNKING).chunks
    by_id = dict(zip(frame["doc_id"], frame["uri"], strict=True))
    page_of = {page.path: page for page in pages}
    chrome_chunks = 0
    chunk_texts: dict[str, list[str]] = {}
    for text, doc_ids in chunks.select("text", "doc_ids").iter_rows():
        holders = [page_of[by_id[doc_id]] for doc_id in doc_ids]
        chrome_chunks += any(any(s in text for s in page.chrome) for page in holders)
        for page in holders:
            chunk_texts.setdefault(page.path, []).append(text)
    codes = [code for page in pages for code in page.code_examples]
    return Scores(
        pages_per_s=len(pages) / elapsed,
        pages_per_cpu_s=len(pages) / elapsed_cpu,
        empty_pages=_share(sum(not text.strip() for text in texts), len(pages)),
        chrome_pages=_share(
            sum(any(s in text for s in p.chrome) for p, text in zip(pages, texts, strict=True)), len(pages)
        ),
        chunks=chunks.height,
        chrome_chunks=_share(chrome_chunks, chunks.height),
        code_in_page=_share(
            sum(c in t for p, t in zip(pages, texts, strict=True) for c in p.code_examples), len(codes)
        ),
        code_in_chunks=_share(
            sum(any(c in chunk for chunk in chunk_texts.get(p.path, [])) for p in pages for c in p.code_examples),
            len(codes),
        ),
        headings=_share(
            sum(_found(p.headings, t) for p, t in zip(pages, texts, strict=True)), sum(len(p.headings) for p in pages)
        ),
        list_items=_share(
            sum(_found(p.list_items, t) for p, t in zip(pages, texts, strict=True)),
            sum(len(p.list_items) for p in pages),
        ),
        table_cells=_share(
            sum(_found(p.table_cells, t) for p, t in zip(pages, texts, strict=True)),
            sum(len(p.table_cells) for p in pages),
        ),
    )


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def report(pages: list[DocPage], results: dict[str, Scores], args: argparse.Namespace) -> tuple[str, bool]:
    machine = machine_description(KEY_PACKAGES)
    chosen, reference = results[CHOSEN], results["reference"]
    targets = [
        (
            f"{CHOSEN}: chrome in under {_pct(TARGET_CHROME_CHUNKS)} of chunks",
            chosen.chrome_chunks < TARGET_CHROME_CHUNKS,
        ),
        (f"{CHOSEN}: every code example verbatim in some chunk", chosen.code_in_chunks >= TARGET_CODE_IN_CHUNKS),
        (
            f"{CHOSEN}: at least the reference's pages per CPU second ({chosen.pages_per_cpu_s:.1f} vs "
            f"{reference.pages_per_cpu_s:.1f})",
            chosen.pages_per_cpu_s >= reference.pages_per_cpu_s,
        ),
    ]
    codes = sum(len(page.code_examples) for page in pages)
    rows = [
        "| extractor | pages/s (wall) | pages per CPU s | pages with chrome | chunks | chunks with chrome | code in page text | code in a chunk "
        "| headings | list items | table cells | empty pages |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in results.items():
        rows.append(
            f"| `{name}` | {s.pages_per_s:.1f} | {s.pages_per_cpu_s:.1f} | {_pct(s.chrome_pages)} | {s.chunks:,} | {_pct(s.chrome_chunks)} | "
            f"{_pct(s.code_in_page)} | {_pct(s.code_in_chunks)} | {_pct(s.headings)} | {_pct(s.list_items)} | "
            f"{_pct(s.table_cells)} | {_pct(s.empty_pages)} |"
        )
    lines = [
        SECTION_TITLE,
        "",
        f"- date: {machine['date']}; {machine['cpus']}, {machine['memory']}, load {machine['load']}",
        f"- {machine['python']}; {machine['packages']}",
        f"- command: `.venv/bin/python benchmarks/bench_extraction.py --pages {args.pages} --seed {args.seed}`",
        f"- corpus: {len(pages):,} generated pages ({', '.join(THEMES)}; sites of 24 pages), "
        f"{sum(len(p.html) for p in pages) / 1e6:.1f} MB of HTML, {codes:,} code examples; one process, one thread, "
        "pages one at a time; chunks by `split_documents` (1000/100, min 100 characters, near-duplicate merging off)",
        "",
        *rows,
        "",
        "Chrome: a chrome string of the page's theme (among those absent from its body) in the text. Code: the exact "
        "example, whitespace included. Headings, list items, table cells: found with whitespace normalised. "
        "`main_content` is the default of `html_extraction`; `reference` is the reference recipe's cleaning.",
        "",
        "Targets:",
        *(f"- {'PASS' if ok else 'FAIL'}: {label}" for label, ok in targets),
    ]
    return "\n".join(lines) + "\n", all(ok for _, ok in targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extractors", default=",".join(EXTRACTORS), help="comma-separated subset")
    parser.add_argument("--record", action="store_true", help="write the section into benchmarks/RESULTS.md")
    args = parser.parse_args()
    pages = generate_pages(args.pages, args.seed)
    names = args.extractors.split(",")
    results = {}
    for name in [CHOSEN, "reference", *[n for n in names if n not in (CHOSEN, "reference")]]:
        results[name] = score(name, pages)
        print(f"{name}: {results[name]}", flush=True)
    section, passed = report(pages, results, args)
    partial = None if set(names) >= set(EXTRACTORS) else "not every extractor was run"
    publish(section, args.record, not_recordable=partial)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
