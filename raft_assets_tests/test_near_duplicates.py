"""Boilerplate and near-duplicate chunks kept once, with every document that holds them (issue 14)."""

import random

import polars as pl

from raft_assets.ingestion.chunking import ChunkingOptions, split_documents
from raft_assets.ingestion.documents import documents_frame
from raft_assets.ingestion.loaded import LoadedDocument
from raft_assets.ingestion.near_duplicates import jaccard, near_duplicate_groups, shingles

TOPICS = ["sharding", "checkpoints", "mixed precision", "activation memory", "gradient clipping", "data loading"]


def content(page: int) -> str:
    """Three paragraphs that only this page has."""
    return "\n\n".join(
        f"Page {page}, part {part}: the {TOPICS[(page + part) % len(TOPICS)]} step number {page * 10 + part} "
        f"keeps {page + part} buffers per rank and frees rank {part}'s copy after step {page}. " * 3
        for part in range(3)
    )


def footer(page: int) -> str:
    """The site's footer: the year, the page's name and the line breaks change from page to page."""
    year = 2023 + page % 3
    text = (
        f"Was this page helpful? Tell us how we can improve the Page {page} tutorial. All content on this site "
        "is licensed under the Apache License 2.0, and code samples are released under the BSD license; "
        f"copyright {year} Example Inc. and its contributors. Report a problem with this page on the issue tracker."
    )
    return text.replace(" under ", "\nunder ") if page % 2 else text


def site(pages: int = 20) -> list[LoadedDocument]:
    return [
        LoadedDocument(f"page{page:02d}.md", f"Page {page}", f"{content(page)}\n\n{footer(page)}")
        for page in range(pages)
    ]


def test_a_boilerplate_paragraph_with_variants_in_20_documents_is_one_chunk_with_20_provenance_entries():
    docs = documents_frame("site", site())
    result = split_documents(docs, ChunkingOptions())
    holding = result.chunks.filter(pl.col("text").str.contains("Was this page helpful"))
    assert holding.height == 1
    [boilerplate] = holding.iter_rows(named=True)
    assert boilerplate["doc_ids"] == sorted(docs["doc_id"])
    assert boilerplate["doc_id"] == min(docs["doc_id"])
    assert boilerplate["text"] == footer(docs.sort("doc_id")["uri"].str.slice(4, 2).cast(pl.Int64)[0])
    assert result.boilerplate_paragraphs == 20
    assert not result.chunks.filter(pl.col("text").str.contains("licensed|copyright")).height > 1
    # every page's own text is still in its own chunks
    for page, doc_id in zip(range(20), docs["doc_id"], strict=True):
        own = "\n\n".join(result.chunks.filter(pl.col("doc_id") == doc_id, pl.col("doc_ids").list.len() == 1)["text"])
        assert f"Page {page}, part 2" in own and "helpful" not in own
    [example] = result.examples().filter(pl.col("kind") == "paragraph").iter_rows(named=True)
    assert example["documents"] == 20 and example["kept"] != example["merged"]

    without = split_documents(docs, ChunkingOptions(near_duplicates=False))
    assert without.chunks.filter(pl.col("text").str.contains("Was this page helpful")).height == 20
    assert without.boilerplate_paragraphs == 0


def test_the_chunks_do_not_depend_on_the_order_of_the_documents():
    docs = documents_frame("site", site())
    shuffled = docs.sample(fraction=1.0, shuffle=True, seed=3)
    assert shuffled["doc_id"].to_list() != docs["doc_id"].to_list()
    first = split_documents(docs, ChunkingOptions()).chunks.sort("chunk_id")
    again = split_documents(shuffled, ChunkingOptions()).chunks.sort("chunk_id")
    assert first.equals(again)


def navigation(page: int) -> str:
    """A sidebar of short lines (each too short to be taken out as a paragraph), the current page marked."""
    entries = ["Installation", "Quickstart", "Sharding a model", "Saving checkpoints", "Mixed precision", "FAQ"]
    lines = [
        f"* {entry}{' (current)' if index == page % len(entries) else ''} - read the {entry.lower()} guide"
        for index, entry in enumerate(entries)
    ]
    return "Navigation\n\n" + "\n\n".join(lines)


def test_near_duplicate_chunks_common_across_the_source_are_merged_into_one_with_every_holder():
    docs = documents_frame("site", [LoadedDocument(f"p{page}.md", f"P{page}", navigation(page)) for page in range(6)])
    result = split_documents(docs, ChunkingOptions())
    assert result.chunks.height == 1
    assert result.chunks["doc_ids"].to_list() == [sorted(docs["doc_id"])]
    assert result.merged_near_duplicates == 5 and result.boilerplate_paragraphs == 0
    assert split_documents(docs, ChunkingOptions(near_duplicates=False)).chunks.height == 6


# Real API reference text (numpy 2's ufunc docs): templates whose copies differ in one meaningful word.
TEMPLATE = (
    "Compute the bit-wise {op} of two arrays element-wise. Computes the bit-wise {op} of the underlying binary "
    "representation of the integers in the input arrays. This ufunc implements the C/Python operator ``{sym}``. "
    "Parameters: x1, x2 : array_like. Only integer and boolean types are handled. If ``x1.shape != x2.shape``, "
    "they must be broadcastable to a common shape (which becomes the shape of the output)."
)
FUNCTIONS = [("AND", "&"), ("OR", "|"), ("XOR", "^")]


def test_template_paragraphs_of_different_functions_stay_apart_though_similar():
    pages = [
        LoadedDocument(f"bitwise_{op.lower()}.md", f"bitwise_{op.lower()}", TEMPLATE.format(op=op, sym=sym))
        for op, sym in FUNCTIONS
    ] + [LoadedDocument(f"guide{page}.md", f"Guide {page}", content(page)) for page in range(8)]
    texts = [TEMPLATE.format(op=op, sym=sym) for op, sym in FUNCTIONS]
    assert jaccard(shingles(texts[0]), shingles(texts[1])) >= ChunkingOptions().near_duplicate_threshold
    result = split_documents(documents_frame("api", pages), ChunkingOptions())
    kept = result.chunks.filter(pl.col("text").str.starts_with("Compute the bit-wise"))
    assert sorted(kept["text"]) == sorted(texts)  # 3 of 11 documents: under boilerplate_min_share (30%)
    assert result.merges == []
    # ...while the same three copies, identical, are one chunk, and copies common across the source merge too
    same = [LoadedDocument(f"alias{i}.md", f"alias{i}", texts[1]) for i in range(3)]
    assert split_documents(documents_frame("api", same + pages[3:]), ChunkingOptions()).chunks.filter(
        pl.col("text").str.starts_with("Compute the bit-wise")
    )["doc_ids"].list.len().to_list() == [3]
    shared = split_documents(documents_frame("api", pages), ChunkingOptions(boilerplate_min_share=0.25))
    assert shared.chunks.filter(pl.col("text").str.starts_with("Compute the bit-wise")).height == 1


def test_groups_are_stars_around_the_first_text_not_chains():
    words = [f"word{i}" for i in range(30)]

    def changed(*at: int) -> str:
        return " ".join(f"other{i}" if i in at else word for i, word in enumerate(words))

    base, near, far = changed(), changed(15), changed(8, 15)  # far is close to near, not to base
    assert jaccard(shingles(base), shingles(near)) == jaccard(shingles(near), shingles(far)) > 0.8
    assert jaccard(shingles(base), shingles(far)) < 0.7
    assert near_duplicate_groups([base, near, far], 0.7) == [[0, 1]]
    assert near_duplicate_groups([far, near, base], 0.7) == [[0, 1]]
    assert near_duplicate_groups([base, "unrelated text entirely " * 5], 0.7) == []
    texts = [base, near] * 3
    random.Random(0).shuffle(texts)
    assert near_duplicate_groups(texts, 0.7) == [list(range(6))]
