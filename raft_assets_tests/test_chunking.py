from itertools import pairwise

import polars as pl
import pytest
from langchain_text_splitters import RecursiveCharacterTextSplitter

from raft_assets.hashing import content_hash
from raft_assets.ingestion.chunking import SEPARATORS, ChunkingOptions, section_path, sections, split_documents
from raft_assets.ingestion.documents import documents_frame
from raft_assets.ingestion.loaded import LoadedDocument


def sentence(i: int) -> str:
    return f"Sentence number {i} explains how tensor parallel rank {i % 8} holds a slice of every weight matrix."


def frame(*docs: LoadedDocument) -> pl.DataFrame:
    return documents_frame("src", list(docs))


def test_chunks_respect_size_and_overlap_and_cover_the_document():
    text = " ".join(sentence(i) for i in range(60))
    result = split_documents(frame(LoadedDocument("a.md", "A", text)), ChunkingOptions())
    chunks = result.chunks
    assert chunks.height > 5
    assert all(len(t) <= 1000 for t in chunks["text"])
    assert chunks["position"].to_list() == list(range(chunks.height))
    texts = chunks["text"].to_list()
    for first, second in pairwise(texts):
        assert second[:40] in first  # neighbours overlap
    assert texts[0].startswith(sentence(0)) and texts[-1].endswith(sentence(59))


def test_separator_preference_page_rule_then_paragraphs_then_lines():
    paragraph = "\n".join(sentence(i) for i in range(4))  # four lines, ~400 characters
    other = paragraph.replace("number", "No.")
    text = "\n\n".join([paragraph, paragraph.upper(), "----------", other, other.upper(), other.lower()])
    texts = (
        split_documents(frame(LoadedDocument("a.md", "A", text)), ChunkingOptions(chunk_overlap=0))
        .chunks["text"]
        .to_list()
    )
    assert texts == [
        f"{paragraph}\n\n{paragraph.upper()}",  # cut at the page rule, not inside a paragraph
        f"----------\n\n{other}\n\n{other.upper()}",  # the third paragraph would pass 1000 characters
        other.lower(),
    ]


def test_short_chunks_are_dropped_repeated_texts_kept_once_with_every_document_and_ids_are_content_hashes():
    unique = " ".join(sentence(i) for i in range(5))
    docs = frame(
        LoadedDocument("a.md", "A", unique),
        LoadedDocument("b.md", "B", unique),  # an exact copy of a.md's chunk
        LoadedDocument("c.md", "C", "x" * 100),  # exactly 100 characters: too short
        LoadedDocument("d.md", "D", "y" * 101),
        LoadedDocument.failed("e.md", "empty file"),
    )
    a, b, d = docs["doc_id"][0], docs["doc_id"][1], docs["doc_id"][3]
    result = split_documents(docs, ChunkingOptions())
    assert result.dropped_short == 1
    assert result.merged_duplicates == 1
    assert result.chunks["text"].to_list() == [unique, "y" * 101]
    assert result.chunks["chunk_id"].to_list() == [content_hash(unique), content_hash("y" * 101)]
    assert result.chunks["doc_ids"].to_list() == [sorted([a, b]), [d]]
    assert result.chunks["doc_id"].to_list() == [min(a, b), d]  # the smallest: independent of the files' order


def test_document_ids_are_stable_and_content_hash_follows_the_text():
    first = frame(LoadedDocument("a.md", "A", "one text"))
    again = frame(LoadedDocument("a.md", "A changed title", "another text"))
    assert first["doc_id"][0] == again["doc_id"][0]
    assert first["content_hash"][0] != again["content_hash"][0]
    assert documents_frame("other", [LoadedDocument("a.md", "A", "one text")])["doc_id"][0] != first["doc_id"][0]


MANUAL = "\n\n".join(
    [
        "# FSDP guide",
        " ".join(sentence(i) for i in range(3)),
        "## Installation",
        " ".join(sentence(i) for i in range(3, 6)),
        "Run this to check the install, then shard a model:",
        "```python\n# Not a heading: a comment in the code.\nimport torch\n\n\ndef shard(model):\n    return model\n```",
        "### From source",
        " ".join(sentence(i) for i in range(6, 9)),
        "## Usage",
        " ".join(sentence(i) for i in range(9, 40)),
    ]
)


def test_without_by_headings_chunks_of_prose_are_byte_identical_to_the_reference_splitter():
    prose = "\n\n".join(part for part in MANUAL.split("\n\n") if "```" not in part and "import torch" not in part)
    splitter = RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=100, separators=SEPARATORS)
    expected = [text for text in splitter.split_text(prose) if len(text) > 100]
    result = split_documents(frame(LoadedDocument("guide.md", "FSDP guide", prose)), ChunkingOptions())
    assert result.chunks["text"].to_list() == expected
    assert any("## Installation" in text for text in expected)  # the headings stay in the text, as the reference


def test_a_code_block_that_fits_in_a_chunk_is_never_cut_at_its_blank_lines_where_the_reference_cuts_it():
    code = "```python\n" + "\n\n".join(f"def step_{i}(model):\n    return model.shard({i})" for i in range(8)) + "\n```"
    text = sentence(0) * 3 + "\n\n" + code + "\n\n" + sentence(1)
    reference = RecursiveCharacterTextSplitter(chunk_size=400, chunk_overlap=40, separators=SEPARATORS)
    assert not any(code in chunk for chunk in reference.split_text(text))  # the defect: half an example per chunk
    chunks = split_documents(
        frame(LoadedDocument("guide.md", "FSDP guide", text)), ChunkingOptions(chunk_size=400, chunk_overlap=40)
    ).chunks["text"]
    assert any(code in chunk for chunk in chunks) and "\x00" not in "".join(chunks)
    assert all(len(chunk) <= 400 for chunk in chunks)


def test_a_short_code_example_is_kept_where_a_short_prose_chunk_is_dropped():
    text = "A heading\n\n" + sentence(0) * 12 + "\n\n```\npip install fsdp-tools\n```"
    chunks = split_documents(frame(LoadedDocument("guide.md", "FSDP guide", text)), ChunkingOptions()).chunks["text"]
    assert "```\npip install fsdp-tools\n```" in chunks.to_list()
    assert not any(chunk.startswith("A heading") and len(chunk) < 100 for chunk in chunks)


def test_by_headings_cuts_at_headings_outside_code_and_prefixes_the_section_path():
    options = ChunkingOptions(by_headings=True)
    texts = split_documents(frame(LoadedDocument("guide.md", "FSDP guide", MANUAL)), options).chunks["text"].to_list()
    prefixes = [text.split("\n\n", 1)[0] for text in texts]
    assert prefixes[:3] == ["FSDP guide", "FSDP guide > Installation", "FSDP guide > Installation > From source"]
    assert set(prefixes[3:]) == {"FSDP guide > Usage"} and len(texts) > 4  # the long section split at the limit
    assert all(len(text) <= 1000 for text in texts)
    installation = texts[1]
    # the code block stays whole and verbatim, its `# comment` not taken for a heading
    assert (
        "```python\n# Not a heading: a comment in the code.\nimport torch\n\n\ndef shard(model):\n    return model\n```"
        in (installation)
    )
    assert not any(text.startswith("Not a heading") or "> Not a heading" in text for text in texts)
    assert not any("\n## " in text or text.startswith("#") for text in texts)  # heading lines became the path


def test_section_path_names_a_first_heading_equal_to_the_title_once_and_works_without_a_title():
    assert section_path("FSDP guide", ("fsdp guide", "Setup")) == "FSDP guide > Setup"
    assert section_path(None, ("Setup", "Linux")) == "Setup > Linux"
    assert sections("```\n# one\n```\n~~~\n## two\n~~~\n# Real\ntext") == [
        ((), "```\n# one\n```\n~~~\n## two\n~~~"),
        (("Real",), "text"),
    ]


def test_overlap_not_smaller_than_size_and_out_of_bound_settings_are_refused():
    with pytest.raises(ValueError, match="chunk_overlap \\(1000\\) must be smaller than chunk_size \\(1000\\)"):
        ChunkingOptions(chunk_overlap=1000)
    with pytest.raises(ValueError, match="near_duplicate_threshold must be at least 0.5"):
        ChunkingOptions(near_duplicate_threshold=0.2)
