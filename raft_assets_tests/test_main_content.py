"""Main-content extraction of documentation pages, and PDFs without running headers and footers.

The pages are generated Sphinx (alabaster, Read the Docs), MkDocs Material and Docusaurus pages whose code
examples and chrome strings are known (`doc_sites`); they go through the real loaders (a local folder, and a
sitemap served over HTTP) and the default chunker.
"""

from pathlib import Path

import pytest
from bs4 import BeautifulSoup
from fpdf import FPDF

from raft_assets.contracts.sources import LocalSource, SitemapSource
from raft_assets.ingestion.chunking import split_documents
from raft_assets.ingestion.documents import documents_frame
from raft_assets.ingestion.html import NO_TEXT_IN_PAGE, extract_page, page_text
from raft_assets.ingestion.loaded import LoadedDocument
from raft_assets.ingestion.local_files import folder_fingerprint, load_folder
from raft_assets.ingestion.sitemap import load_sitemap
from raft_assets_tests.doc_sites import THEMES, DocPage, generate_pages
from raft_assets_tests.test_sitemap import sitemap
from raft_assets_tests.web_server import Route, WebServer


@pytest.fixture(scope="module")
def pages() -> list[DocPage]:
    """48 pages: every other page of four sites of 24, one per theme."""
    return generate_pages(96, seed=7)[::2]


def write_site(folder: Path, pages: list[DocPage]) -> None:
    for page in pages:
        path = folder / page.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page.html, encoding="utf-8")


def chunk_report(pages: list[DocPage], loaded: list[LoadedDocument]) -> tuple[int, list[str], list[str]]:
    """Chunks of the loaded pages (default chunker): their count, those holding chrome, the code examples in none."""
    by_uri = {doc.uri: doc for doc in loaded}
    assert all(doc.error is None for doc in loaded), [doc.error for doc in loaded if doc.error]
    frame = documents_frame("docs", loaded)
    chunks = split_documents(frame).chunks
    uri_of = dict(zip(frame["doc_id"], frame["uri"], strict=True))
    page_of = {uri: page for uri in by_uri for page in pages if uri.endswith(page.path)}
    with_chrome, texts_of = [], {}
    for text, doc_ids in chunks.select("text", "doc_ids").iter_rows():
        holders = [page_of[uri_of[doc_id]] for doc_id in doc_ids]
        found = [s for page in holders for s in page.chrome if s in text]
        if found:
            with_chrome.append(f"{found[:3]} in {text[:200]!r}")
        for page in holders:
            texts_of.setdefault(page.path, []).append(text)
    missing = [
        f"{page.path}: {code[:60]!r}"
        for page in pages
        for code in page.code_examples
        if not any(code in chunk for chunk in texts_of.get(page.path, []))
    ]
    return chunks.height, with_chrome, missing


def test_the_corpus_covers_every_theme_with_code_and_chrome(pages):
    assert {page.theme for page in pages} == set(THEMES)
    for theme in THEMES:
        themed = [page for page in pages if page.theme == theme]
        assert len(themed) == 12
        assert sum(len(page.code_examples) for page in themed) > 20
        assert all(page.chrome for page in themed)
    assert any("\n\n" in code for page in pages for code in page.code_examples)  # blank lines inside code


def test_local_folder_of_doc_pages_gives_chunks_without_chrome_and_every_code_example_verbatim(pages, tmp_path):
    write_site(tmp_path, pages)
    loaded = load_folder(LocalSource(name="docs", kind="local", path=tmp_path))
    assert len(loaded) == len(pages)

    total, with_chrome, _ = chunk_report(pages, loaded)
    assert len(with_chrome) < 0.01 * total, with_chrome[:5]
    by_uri = {doc.uri: doc for doc in loaded}
    assert [code[:60] for page in pages for code in page.code_examples if code not in by_uri[page.path].text] == []
    page = pages[0]
    doc = by_uri[page.path]
    assert doc.title.startswith(page.title)  # the <title>: "Title — Project 1.2 documentation"
    assert doc.text.startswith(f"# {page.title}\n\n")
    assert f"## {page.headings[1]}\n" in doc.text


def test_every_code_example_is_in_some_chunk(pages, tmp_path):
    write_site(tmp_path, pages)
    _, _, missing = chunk_report(pages, load_folder(LocalSource(name="docs", kind="local", path=tmp_path)))
    assert missing == []


def test_the_reference_mode_keeps_the_chrome_that_main_content_drops(pages, tmp_path):
    """The measure above can fail: the same pages cleaned the reference's way carry chrome in most chunks."""
    sample = [page for page in pages if page.theme == "sphinx_alabaster"][:12]
    write_site(tmp_path, sample)
    loaded = load_folder(LocalSource(name="docs", kind="local", path=tmp_path, html_extraction="reference"))
    total, with_chrome, _ = chunk_report(sample, loaded)
    assert len(with_chrome) > 0.5 * total


def test_sitemap_pages_are_extracted_to_main_content(pages):
    sample = pages[::4]
    with WebServer() as server:
        server.routes.update({f"/{page.path}": Route(page.html.encode()) for page in sample})
        server.routes["/sitemap.xml"] = sitemap(*(server.url(f"/{page.path}") for page in sample))
        source = SitemapSource(
            name="site", kind="sitemap", sitemap=server.url("/sitemap.xml"), requests_per_second=200.0, retries=0
        )
        loaded = load_sitemap(source).documents
    assert len(loaded) == len(sample)
    total, with_chrome, missing = chunk_report(sample, loaded)
    assert len(with_chrome) < 0.01 * total, with_chrome[:5]
    assert missing == []


def test_reference_mode_is_the_old_cleaning_byte_for_byte(pages):
    for page in pages[:: len(pages) // 8]:
        old = page_text(BeautifulSoup(page.html.encode(), "lxml"))
        assert extract_page(page.html.encode(), "reference").text == old
    html = Path("data/llama_docs/serving_with_vllm.html").read_bytes()
    assert extract_page(html, "reference").text == page_text(BeautifulSoup(html, "lxml"))


def test_markup_that_trips_the_extractor_is_fixed_on_the_dom():
    """Sections whose heading slug reads like a layout word, entities in code, bare <pre>, line-number tables."""
    prose = "FSDP shards every parameter across the data-parallel ranks and gathers one layer at a time. " * 3
    html = f"""<html><head><title>Sharding</title></head><body>
    <div class="sphinxsidebar"><h3>Quick search</h3><form><input name="q"></form></div>
    <div role="main"><section id="sharding-guide"><h1>Sharding guide<a class="headerlink" href="#sharding-guide">¶</a></h1>
    <p>{prose}</p>
    <section id="related-settings"><h2>Related settings<a class="headerlink" href="#related-settings">¶</a></h2>
    <p>{prose}</p>
    <pre>curl "https://example.org/api?a=1&amp;region=eu"

echo done</pre>
    <div class="highlight"><table class="highlighttable"><tr><td class="linenos"><div class="linenodiv"><pre>1
2</pre></div></td><td class="code"><div><pre><span></span><span class="k">def</span> f():
    return 1
</pre></div></td></tr></table></div>
    </section></section></div></body></html>"""
    text = extract_page(html, "main_content").text
    assert text.startswith("# Sharding guide\n\n")
    assert "## Related settings\n" in text
    assert '```\ncurl "https://example.org/api?a=1&region=eu"\n\necho done\n```' in text
    assert "```\ndef f():\n    return 1\n```" in text
    assert "¶" not in text and "Quick search" not in text


@pytest.mark.parametrize("mode", ["main_content", "reference"])
def test_a_page_that_is_all_chrome_is_a_recorded_error(tmp_path, mode):
    site = generate_pages(1, seed=3)[0].html
    body_start, body_end = site.index('<div class="body" role="main">'), site.index('<div class="sphinxsidebar"')
    chrome_only = site[:body_start] + site[body_end:]
    (tmp_path / "chrome.html").write_text("<html><body><nav>Home</nav><header>Acme</header></body></html>")
    (tmp_path / "sidebar_only.html").write_text(chrome_only)
    docs = {
        doc.uri: doc for doc in load_folder(LocalSource(name="d", kind="local", path=tmp_path, html_extraction=mode))
    }
    assert docs["chrome.html"].error == NO_TEXT_IN_PAGE
    if mode == "main_content":
        assert docs["sidebar_only.html"].error == NO_TEXT_IN_PAGE
    else:  # the reference keeps the sidebar's text
        assert "Quick search" in docs["sidebar_only.html"].text


# --------------------------------------------------------------------------- PDFs

BODY = [
    "FSDP shards every parameter, gradient and optimizer state across the data-parallel ranks.",
    "Activation checkpointing recomputes each decoder layer's activations in the backward pass.",
    "Llama 3 8B uses grouped-query attention with eight key-value heads.",
]

ORDINALS = ["first", "second", "third", "fourth"]


class ManualPDF(FPDF):
    """A manual with a running header and footer, the footer a page number in one of three styles."""

    def __init__(self, footer_style: str) -> None:
        super().__init__()
        self.footer_style = footer_style

    def header(self) -> None:
        self.set_font("Helvetica", size=9)
        self.cell(0, 8, "Acme Training Manual, revision 2024-03", new_x="LMARGIN", new_y="NEXT")

    def footer(self) -> None:
        self.set_y(-15)
        self.set_font("Helvetica", size=9)
        number = {"page_of": f"Page {self.page_no()} of {{nb}}", "dashes": f"- {self.page_no()} -"}
        self.cell(0, 8, number.get(self.footer_style, str(self.page_no())), align="C")


def manual_pdf(path: Path, footer_style: str, pages: int) -> None:
    pdf = ManualPDF(footer_style)
    pdf.set_title("Acme manual")
    for number in range(pages):
        pdf.add_page()
        pdf.set_font("Helvetica", size=11)
        for paragraph in BODY:
            pdf.multi_cell(0, 6, f"In the {ORDINALS[number]} section: {paragraph}")
            pdf.ln(3)
    pdf.output(str(path))


@pytest.mark.parametrize("footer_style", ["bare", "page_of", "dashes"])
def test_pdf_running_headers_footers_and_page_numbers_are_dropped(tmp_path, footer_style):
    manual_pdf(tmp_path / "manual.pdf", footer_style, pages=4)
    [doc] = load_folder(LocalSource(name="d", kind="local", path=tmp_path))
    assert doc.error is None and doc.title == "Acme manual"
    assert "Acme Training Manual" not in doc.text
    lines = doc.text.splitlines()
    assert not any(line.strip() in {"1", "2", "3", "4"} or "Page 2 of 4" in line or "- 3 -" in line for line in lines)
    for ordinal in ORDINALS[:4]:
        for paragraph in BODY:
            assert f"In the {ordinal} section: {paragraph}" in " ".join(lines)


def test_a_short_pdf_keeps_its_lines(tmp_path):
    """With two pages a repeated line cannot be told from a running header: nothing is dropped."""
    manual_pdf(tmp_path / "short.pdf", "page_of", pages=2)
    [doc] = load_folder(LocalSource(name="d", kind="local", path=tmp_path))
    assert doc.text.count("Acme Training Manual") == 2
    assert "Page 2 of 2" in doc.text


def test_changing_the_extraction_mode_changes_the_folder_fingerprint(tmp_path):
    """The sensor re-reads a folder whose fingerprint changed: a new `html_extraction` must do that too."""
    (tmp_path / "page.html").write_text(generate_pages(1)[0].html, encoding="utf-8")
    main = LocalSource(name="d", kind="local", path=tmp_path)
    reference = LocalSource(name="d", kind="local", path=tmp_path, html_extraction="reference")
    assert folder_fingerprint(main) == folder_fingerprint(main)
    assert folder_fingerprint(main) != folder_fingerprint(reference)
