"""A corpus of bad inputs through the `documents` and `chunks` assets on a real Dagster instance.

Every bad file or page is one row of `documents` whose `error` says what is wrong with it; the good
documents of the same source are loaded and chunked; the `failure_rate_within_bound` check reports the
share of failures and blocks `chunks` when it is over the bound.
"""

from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from fpdf import FPDF

from raft_assets.defs.ingestion.assets import chunks, documents
from raft_assets.defs.partitions import doc_sources
from raft_assets_tests.conftest import run_assets, write_sources
from raft_assets_tests.test_ingestion_assets import materialize
from raft_assets_tests.test_sitemap import page, sitemap
from raft_assets_tests.web_server import Route, WebServer

PARAGRAPHS = [
    "FSDP shards every parameter, gradient and optimizer state across the data-parallel ranks, and gathers "
    "the full weights of one layer only while that layer runs its forward and backward passes.",
    "Activation checkpointing keeps only the inputs of each decoder layer during the forward pass and "
    "recomputes the activations in the backward pass, trading compute for memory.",
    "Llama 3 8B uses grouped-query attention with eight key-value heads and a context window of 8,192 tokens.",
]
GOOD_FILES = {
    "guide.md": "# FSDP guide\n\n" + "\n\n".join(PARAGRAPHS),
    "notes/serving.txt": "Serving notes\n" + "\n".join(reversed(PARAGRAPHS)),
}
HUGE_LINE = b"Gradient accumulation sums the gradients of several micro-batches before one optimizer step.\n"
CHROME_ONLY_HTML = b"""<!doctype html><html><head><title>Only chrome</title>
<style>body { color: red }</style><script>window.analytics = {};</script></head>
<body><header>Acme docs</header><nav><a href="/">Home</a> <a href="/docs">Docs</a></nav>
<script>render()</script><noscript>Enable JavaScript</noscript></body></html>"""
# Each bad file and the words its error must contain.
BAD_FILES = {
    "empty.md": ["empty file"],
    "zero.txt": ["empty file"],
    "blank.txt": ["no text in the file", "whitespace"],
    "binary.txt": ["binary content", "NUL"],
    "latin1.txt": ["not valid UTF-8", "0xe9"],
    "huge.txt": ["50.0 MB", "over the 25 MB limit", "max_file_mb"],
    "fake.pdf": ["not a readable PDF", "no %PDF- header", "<!doctype html>"],
    "truncated.pdf": ["not a readable PDF", "truncated", "%%EOF"],
    "chrome.html": ["no text in the page", "scripts, styles, navigation"],
    "slides.docx": ["unsupported file type '.docx'"],
    "dangling.md": ["cannot read file", "broken symbolic link", "gone.md"],
}


def real_pdf() -> bytes:
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=11)
    for paragraph in PARAGRAPHS:
        pdf.multi_cell(0, 6, paragraph)
        pdf.ln(4)
    return bytes(pdf.output())


def write_bad_files(folder: Path) -> None:
    pdf = real_pdf()
    contents = {
        "empty.md": b"",
        "zero.txt": b"",
        "blank.txt": b"   \n\n\t \r\n",
        "binary.txt": bytes(range(256)) * 16,
        "latin1.txt": "Caf\xe9 cr\xe8me: a menu saved as Latin-1.".encode("latin-1"),
        "huge.txt": HUGE_LINE * (50_000_000 // len(HUGE_LINE) + 1),
        "fake.pdf": b"<!doctype html><html><body><p>Moved: see the web version.</p></body></html>",
        "truncated.pdf": pdf[: len(pdf) // 2],
        "chrome.html": CHROME_ONLY_HTML,
        "slides.docx": b"PK\x03\x04 a zip archive",
    }
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    (folder / "dangling.md").symlink_to(folder / "gone.md")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A folder of good files and every kind of bad one (a 50 MB text file among them)."""
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "notes").mkdir()
    for name, text in GOOD_FILES.items():
        (folder / name).write_text(text, encoding="utf-8")
    write_bad_files(folder)
    return folder


def add_sources(project, instance, *sources: dict) -> None:
    write_sources(Path(project.sources_file), list(sources))
    instance.add_dynamic_partitions(doc_sources.name, [source["name"] for source in sources])


def local_source(folder: Path, name: str = "corpus", **options) -> dict:
    return {"name": name, "kind": "local", "path": str(folder), "include": ["**/*"], **options}


def bound(max_failure_rate: float) -> dict:
    return {"documents": {"config": {"max_failure_rate": max_failure_rate}}}


def read_stage(project, stage: str, source: str) -> pl.DataFrame:
    return pl.read_parquet(project.stage_file(stage, source))


def errors_by_uri(docs: pl.DataFrame) -> dict[str, str]:
    return dict(docs.filter(pl.col("error").is_not_null()).select("uri", "error").iter_rows())


def assert_reasons(docs: pl.DataFrame, expected: dict[str, list[str]]) -> None:
    """Each uri in `expected` is one row without text whose error holds all the expected words."""
    errors = errors_by_uri(docs)
    for uri, words in expected.items():
        assert docs.filter(pl.col("uri") == uri).height == 1, uri
        missing = [word for word in words if word not in errors.get(uri, "")]
        assert not missing, f"{uri}: {errors.get(uri)!r} lacks {missing}"
    assert docs.filter(pl.col("error").is_not_null())["text"].str.len_chars().max() == 0


def assert_chunks_only_from(project, source: str, good: pl.DataFrame) -> pl.DataFrame:
    """The chunks come from every good document and from nothing else, each a piece of its text."""
    found = read_stage(project, "chunks", source)
    assert set(found["doc_id"]) == set(good["doc_id"])
    texts = dict(good.select("doc_id", "text").iter_rows())
    assert all(chunk["text"] in texts[chunk["doc_id"]] for chunk in found.iter_rows(named=True))
    return found


def materialization(result: dg.ExecuteInProcessResult, node: str = "documents") -> dict[str, object]:
    [event] = result.asset_materializations_for_node(node)
    return {key: value.value for key, value in event.metadata.items()}


def check(result: dg.ExecuteInProcessResult, name: str):
    [evaluation] = [e for e in result.get_asset_check_evaluations() if e.check_name == name]
    return evaluation


def test_bad_files_are_rows_with_their_reasons_and_good_files_are_chunked(project, instance, corpus):
    add_sources(project, instance, local_source(corpus))
    result = run_assets(project, instance, [documents, chunks], "corpus", config=bound(0.9))

    docs = read_stage(project, "documents", "corpus")
    assert sorted(docs["uri"]) == sorted([*GOOD_FILES, *BAD_FILES])
    assert_reasons(docs, BAD_FILES)
    good = docs.filter(pl.col("error").is_null())
    assert dict(good.select("uri", "text").iter_rows()) == GOOD_FILES
    assert_chunks_only_from(project, "corpus", good)

    metadata = materialization(result)
    assert (metadata["loaded"], metadata["failed"]) == (len(GOOD_FILES), len(BAD_FILES))
    assert all(uri in metadata["errors"] for uri in BAD_FILES)
    rate = check(result, "failure_rate_within_bound")
    assert rate.passed
    assert rate.description.startswith("11 of 13 documents failed (84.6%; the bound is 90%). Most common: 2 ×")
    assert check(result, "has_documents").passed


def test_a_failure_rate_over_the_bound_fails_the_check_and_keeps_the_documents_file(project, instance, corpus):
    add_sources(project, instance, local_source(corpus))
    result = materialize(project, instance, "corpus")  # the default bound, 25%

    assert not result.success
    rate = check(result, "failure_rate_within_bound")
    assert not rate.passed
    assert rate.description.startswith(
        "11 of 13 documents failed (84.6%; the bound is 25%). Most common: 2 × empty file; 1 × "
    )
    # The materialization and its file hold every reason, for a user to read in the UI; chunks did not run.
    assert materialization(result)["failed"] == len(BAD_FILES)
    assert_reasons(read_stage(project, "documents", "corpus"), BAD_FILES)
    assert not result.asset_materializations_for_node("chunks")
    assert not project.stage_file("chunks", "corpus").exists()


@pytest.mark.slow  # 50 MB read and chunked
def test_a_50_mb_file_within_max_file_mb_is_read_and_chunked(project, instance, corpus):
    add_sources(project, instance, local_source(corpus, "big", include=["huge.txt"], max_file_mb=60))
    result = run_assets(project, instance, [documents, chunks], "big")

    [huge] = read_stage(project, "documents", "big").iter_rows(named=True)
    assert huge["error"] is None
    assert huge["text"].encode() == (corpus / "huge.txt").read_bytes()
    # The same line over and over: a few distinct chunks, every repeat dropped as a duplicate.
    found = assert_chunks_only_from(project, "big", pl.DataFrame([huge]))
    assert found.height >= 1 and found["text"].str.starts_with("Gradient accumulation").all()
    assert materialization(result, "chunks")["merged_duplicates"] > 10_000


@pytest.fixture
def server():
    with WebServer() as server:
        yield server


def sitemap_source(server: WebServer, name: str, path: str) -> dict:
    settings = {"timeout_s": 1.0, "retries": 1, "requests_per_second": 50.0}
    return {"name": name, "kind": "sitemap", "sitemap": server.url(path), **settings}


def good_page(title: str) -> Route:
    return Route(page(title, " ".join(PARAGRAPHS)))


@pytest.mark.parametrize(
    ("body", "found"),
    [
        (
            b"<!doctype html><html><body><h1>Welcome to Acme</h1></body></html>",
            "'<!doctype html><html><body><h1>Welcome",
        ),
        (b"\x89\xfe garbage & more garbage; not markup at all", "garbage & more garbage"),
    ],
    ids=["html", "garbage"],
)
def test_a_sitemap_that_is_not_xml_is_one_row_naming_it_and_other_sources_go_on(project, instance, server, body, found):
    server.routes.update(
        {
            "/sitemap.xml": Route(body, content_type="application/xml"),
            "/good/sitemap.xml": sitemap(server.url("/a.html")),
            "/a.html": good_page("Page A"),
        }
    )
    add_sources(
        project,
        instance,
        sitemap_source(server, "broken", "/sitemap.xml"),
        sitemap_source(server, "site", "/good/sitemap.xml"),
    )

    result = materialize(project, instance, "broken")
    assert not result.success
    description = check(result, "has_documents").description
    assert description.startswith(f"No document of source 'broken' could be loaded: {server.url('/sitemap.xml')}: ")
    assert "not a sitemap" in description
    docs = read_stage(project, "documents", "broken")
    [(uri, reason)] = errors_by_uri(docs).items()
    assert uri == server.url("/sitemap.xml")
    assert reason.startswith("not a sitemap: no <urlset> or <sitemapindex> element (it starts with ")
    assert found in reason
    assert uri in materialization(result)["errors"]
    assert server.paths_requested() == ["/sitemap.xml"]

    run_assets(project, instance, [documents, chunks], "site")
    assert read_stage(project, "documents", "site")["error"].to_list() == [None]


def test_sitemap_pages_that_hang_fail_or_have_no_text_are_rows_and_good_pages_load(project, instance, server):
    bad_pages = {
        "/slow.html": (Route(page("Slow", "late"), delay_s=5.0), "timed out after 1 s (gave up after 2 attempts)"),
        "/stalled.html": (Route(good_page("Stalled").body, stall_s=5.0), "timed out after 1 s"),
        "/chrome.html": (Route(CHROME_ONLY_HTML), "no text in the page after removing scripts, styles, navigation"),
        "/missing.html": (Route(b"Not here", status=404), "HTTP 404 Not Found"),
        "/error.html": (Route(b"Oops", status=500), "HTTP 500 Internal Server Error (gave up after 2 attempts)"),
    }
    good_pages = {"/a.html": good_page("Page A"), "/b.html": good_page("Page B")}
    server.routes.update(good_pages | {path: route for path, (route, _) in bad_pages.items()})
    server.routes["/sitemap.xml"] = sitemap(*(server.url(path) for path in [*good_pages, *bad_pages]))
    add_sources(project, instance, sitemap_source(server, "site", "/sitemap.xml"))

    result = run_assets(project, instance, [documents, chunks], "site", config=bound(0.75))

    docs = read_stage(project, "documents", "site")
    assert_reasons(docs, {server.url(path): [reason] for path, (_, reason) in bad_pages.items()})
    good = docs.filter(pl.col("error").is_null())
    assert sorted(good["title"]) == ["Page A", "Page B"]
    assert all(PARAGRAPHS[0] in text for text in good["text"])
    assert_chunks_only_from(project, "site", good)
    metadata = materialization(result)
    assert (metadata["loaded"], metadata["failed"]) == (2, 5)
    assert check(result, "failure_rate_within_bound").passed
