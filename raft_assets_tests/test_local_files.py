from pathlib import Path

import pytest
from fpdf import FPDF

from raft_assets.contracts.sources import LocalSource, SourcesError
from raft_assets.ingestion.local_files import load_folder

PARAGRAPH = "Llama 3 8B supports a context window of 8,192 tokens and uses grouped-query attention."

HTML_PAGE = f"""<!doctype html>
<html><head><title>Serving guide</title><script>var tracking = 1;</script></head>
<body>
<header>Site header SHOULD_NOT_APPEAR</header>
<nav><a href="/">Home</a> <a href="/docs">Docs NAV_LINK</a></nav>
<div role="list"><div role="listitem">LIST_CHROME</div></div>
<h1>Serving</h1>
<p>{PARAGRAPH}</p>
<p>Use   <code>vllm serve</code> to start
an OpenAI-compatible server.</p>
</body></html>"""


def make_pdf(path: Path, title: str, paragraphs: list[str]) -> None:
    pdf = FPDF()
    pdf.set_title(title)
    pdf.add_page()
    pdf.set_font("Helvetica", size=11)
    for paragraph in paragraphs:
        pdf.multi_cell(0, 6, paragraph)
        pdf.ln(4)
    pdf.output(str(path))


def load(folder: Path, **options) -> dict[str, object]:
    return {doc.uri: doc for doc in load_folder(LocalSource(name="test", kind="local", path=folder, **options))}


def test_each_format_loads_with_title_and_text(tmp_path):
    (tmp_path / "guide.md").write_text(f"Intro line\n\n# Llama 3 guide\n\n{PARAGRAPH}\n", encoding="utf-8")
    (tmp_path / "notes.txt").write_text(f"FSDP notes\r\n{PARAGRAPH}\r\n", encoding="utf-8")
    (tmp_path / "page.html").write_text(HTML_PAGE, encoding="utf-8")
    make_pdf(tmp_path / "paper.pdf", "Quantization notes", [PARAGRAPH, "Int4 weights need half a byte per parameter."])
    docs = load(tmp_path)

    assert sorted(docs) == ["guide.md", "notes.txt", "page.html", "paper.pdf"]
    assert all(doc.error is None for doc in docs.values())
    assert docs["guide.md"].title == "Llama 3 guide"
    assert docs["notes.txt"].title == "FSDP notes"
    assert "\r" not in docs["notes.txt"].text
    assert docs["paper.pdf"].title == "Quantization notes"
    assert "half a byte per parameter" in docs["paper.pdf"].text
    for doc in docs.values():
        assert "8,192 tokens" in doc.text


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("main_content", f"# Serving\n\n{PARAGRAPH}\n\nUse `vllm serve` to start an OpenAI-compatible server."),
        ("reference", f"Serving\n{PARAGRAPH}\nUse vllm serve to start\nan OpenAI-compatible server."),
    ],
)
def test_html_drops_navigation_header_lists_and_scripts(tmp_path, mode, expected):
    (tmp_path / "page.html").write_text(HTML_PAGE, encoding="utf-8")
    page = load(tmp_path, html_extraction=mode)["page.html"]
    assert page.title == "Serving guide"
    for chrome in ("SHOULD_NOT_APPEAR", "NAV_LINK", "LIST_CHROME", "tracking"):
        assert chrome not in page.text
    assert page.text == expected


def test_bad_files_become_rows_with_a_reason_and_good_files_still_load(tmp_path):
    (tmp_path / "good.md").write_text(f"# Good\n\n{PARAGRAPH}", encoding="utf-8")
    (tmp_path / "empty.md").write_bytes(b"")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (tmp_path / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (tmp_path / "fake.pdf").write_text("this is not a pdf", encoding="utf-8")
    (tmp_path / "chrome_only.html").write_text("<html><body><nav>Home</nav></body></html>", encoding="utf-8")
    (tmp_path / "whitespace.txt").write_text("  \n\n\t\n", encoding="utf-8")
    (tmp_path / "dangling.md").symlink_to(tmp_path / "missing-target.md")
    (tmp_path / "big.txt").write_text("x" * 2_000_000, encoding="utf-8")
    docs = load(tmp_path, max_file_mb=1)

    assert docs["good.md"].error is None
    expected = {
        "empty.md": "empty file",
        "latin1.txt": "not valid UTF-8: byte 0xe9 at offset 3",
        "binary.txt": "binary content",
        "fake.pdf": "not a readable PDF",
        "chrome_only.html": "no text in the page",
        "whitespace.txt": "no text in the file",
        "dangling.md": "cannot read file: No such file or directory",
        "big.txt": "file is 2.0 MB, over the 1 MB limit",
    }
    for uri, reason in expected.items():
        assert docs[uri].error is not None and reason in docs[uri].error, (uri, docs[uri].error)
        assert docs[uri].text == ""


def test_include_and_exclude_globs_select_files_in_subfolders(tmp_path):
    (tmp_path / "guides").mkdir()
    (tmp_path / "drafts").mkdir()
    for name in ("guides/a.md", "drafts/b.md", "top.md", "guides/c.txt"):
        (tmp_path / name).write_text(f"# {name}\n\n{PARAGRAPH}", encoding="utf-8")
    assert sorted(load(tmp_path)) == ["drafts/b.md", "guides/a.md", "guides/c.txt", "top.md"]
    assert sorted(load(tmp_path, include=["**/*.md"], exclude=["drafts/**"])) == ["guides/a.md", "top.md"]


def test_unsupported_extension_matched_by_a_wide_glob_is_reported(tmp_path):
    (tmp_path / "slides.pptx").write_bytes(b"PK\x03\x04")
    assert load(tmp_path, include=["*"])["slides.pptx"].error == "unsupported file type '.pptx'"


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SourcesError, match="does not exist"):
        load(tmp_path / "nowhere")
