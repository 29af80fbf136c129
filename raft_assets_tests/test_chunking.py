from itertools import pairwise

import polars as pl

from raft_assets.hashing import content_hash
from raft_assets.ingestion.chunking import split_documents
from raft_assets.ingestion.documents import documents_frame
from raft_assets.ingestion.loaded import LoadedDocument


def sentence(i: int) -> str:
    return f"Sentence number {i} explains how tensor parallel rank {i % 8} holds a slice of every weight matrix."


def frame(*docs: LoadedDocument) -> pl.DataFrame:
    return documents_frame("src", list(docs))


def test_chunks_respect_size_and_overlap_and_cover_the_document():
    text = " ".join(sentence(i) for i in range(60))
    result = split_documents(frame(LoadedDocument("a.md", "A", text)), 1000, 100, 100)
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
    texts = split_documents(frame(LoadedDocument("a.md", "A", text)), 1000, 0, 100).chunks["text"].to_list()
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
    result = split_documents(docs, 1000, 100, 100)
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
