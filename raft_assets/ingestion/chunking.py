"""Splitting documents into chunks with the reference recipe's splitter and rules, boilerplate kept once.

A chunk's identity is its text (`chunk_id` is its hash): a text that several documents of a source hold —
a page exported twice, a paragraph pasted into two pages — is one chunk, and `doc_ids` keeps every document
it came from. `doc_id` is the smallest of them, so the choice does not depend on the order of the files.

Boilerplate is kept once as well (`near_duplicates`, on by default; see `near_duplicates.py` for the similarity):

1. Before splitting, a paragraph that many documents of the source hold, exactly or nearly (a changed year, a
   page name inside it, other line breaks), is taken out of each of them and becomes a chunk of its own, whose
   `doc_ids` are all of them: it is no longer glued into a different chunk of every page, so questions are
   asked about it once. Its text is that of the smallest document's copy, and its `position` follows that
   document's own chunks. An identical paragraph qualifies in `boilerplate_min_documents` documents; one with
   variants must also be in `boilerplate_min_share` of the documents: page chrome is on most pages, while the
   paragraphs that an API reference repeats from a template with the function's name changed are each on a few.
2. After splitting, chunks that are near duplicates of each other are merged into the first in the order of
   (`doc_id`, `position`): one chunk, every holder in `doc_ids`.

Optionally (`by_headings`, off by default: the reference's splitter stays the default), each document is first
cut at its markdown headings, outside code blocks, and each chunk starts with the document's title and section
path (`Title > Section > Subsection`), so a question's context says where it comes from.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

import polars as pl
from langchain_text_splitters import RecursiveCharacterTextSplitter

from raft_assets.contracts.tables import CHUNK_SCHEMA
from raft_assets.fields import setting, validate_all
from raft_assets.hashing import content_hash
from raft_assets.ingestion.near_duplicates import near_duplicate_groups, normalized

# The reference's separators: its page separator line, paragraphs, lines, words.
SEPARATORS = ["----------", "\n\n", "\n", " "]
PATH_SEPARATOR = " > "
EXAMPLES = 5  # merges shown in the metadata

BLANK_LINES = re.compile(r"(\n[ \t]*\n\s*)")
FENCE = re.compile(r"^ {0,3}(```|~~~)", re.MULTILINE)
# Stands for a line break inside a code block while the splitter runs (see split_text); loaders reject NUL bytes.
CODE_BLANK_LINE = "\x00"
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")


@dataclass(frozen=True)
class ChunkingOptions:
    """How to chunk: what the launchpad offers for `chunks`."""

    chunk_size: int = setting(1000, "Characters per chunk (not tokens), as the reference.", gt=0)
    chunk_overlap: int = setting(100, "Characters shared by neighbouring chunks; less than chunk_size.", ge=0)
    min_chunk_chars: int = setting(
        100, "Chunks (and paragraphs) of this many characters or fewer are dropped, unless they hold code.", ge=0
    )
    by_headings: bool = setting(
        False,
        "Cut each document at its markdown headings before the character limit, and start each chunk with "
        "`Title > Section > Subsection`. Off: the reference's splitter alone.",
    )
    near_duplicates: bool = setting(
        True, "Keep boilerplate once: paragraphs repeated across documents, and near-duplicate chunks."
    )
    near_duplicate_threshold: float = setting(
        0.7,
        "Jaccard similarity of word 3-shingles from which two paragraphs, or two chunks, are copies of one text: "
        "0.7 takes a 30-50-word footer or banner whose page name and year change (0.72-0.83 measured). Copies that "
        "differ by more than case, spacing and punctuation are merged only when common across the source (the two "
        "settings below): a similarity alone cannot tell them from an API reference's template paragraphs.",
        ge=0.5,
        le=1,
    )
    boilerplate_min_documents: int = setting(
        3, "Documents that must hold a paragraph (identical copies or not) for it to be taken out as boilerplate.", ge=2
    )
    boilerplate_min_share: float = setting(
        0.3,
        "Share of the source's documents that must hold copies that differ for them to be merged: page chrome is on "
        "most pages; paragraphs and chunks that an API reference repeats from a template with one word changed "
        "(`minimum`/`maximum`) are each on a few, and must stay apart.",
        ge=0,
        le=1,
    )

    def __post_init__(self) -> None:
        validate_all(self)
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_size ({self.chunk_size})."
            )


@dataclass(frozen=True)
class Merge:
    """Texts kept once: boilerplate paragraphs taken out of their documents, or near-duplicate chunks."""

    kind: str  # "paragraph" or "chunk"
    members: int  # texts in the group, the kept one included
    documents: int  # documents that hold them
    kept: str  # the text kept: the first in (doc_id, position) order
    merged: str  # a member that differs from it, or it when every copy is the same


@dataclass(frozen=True)
class ChunkingResult:
    chunks: pl.DataFrame
    dropped_short: int
    merged_duplicates: int  # occurrences of a text that another document (or place) already holds
    merges: list[Merge] = field(default_factory=list)

    @property
    def boilerplate_paragraphs(self) -> int:
        """Paragraphs taken out of their documents as boilerplate."""
        return sum(merge.members for merge in self.merges if merge.kind == "paragraph")

    @property
    def merged_near_duplicates(self) -> int:
        """Chunks merged into a near-duplicate chunk."""
        return sum(merge.members - 1 for merge in self.merges if merge.kind == "chunk")

    def examples(self, per_kind: int = EXAMPLES) -> pl.DataFrame:
        """The first merges of each kind, for the metadata."""
        rows = [merge for kind in ("paragraph", "chunk") for merge in self.merges if merge.kind == kind][:per_kind]
        columns = ["kind", "members", "documents", "kept", "merged"]
        return pl.DataFrame(
            [[getattr(merge, name) for name in columns] for merge in rows], schema=columns, orient="row"
        )


@dataclass(frozen=True)
class Boilerplate:
    """A paragraph taken out of the documents that hold it, to be one chunk (or more, when it is long)."""

    text: str  # the copy of the smallest document
    doc_ids: list[str]  # every document that holds it, sorted
    merge: Merge


def split_documents(documents: pl.DataFrame, options: ChunkingOptions | None = None) -> ChunkingResult:
    """Chunks of the documents without an error, in the order their texts first appear.

    Chunks of `min_chunk_chars` characters or fewer are dropped (not a short code example: `pip install x`); every repeat of a text is merged into the one
    chunk of that text (its document added to `doc_ids`), and so are boilerplate and near duplicates (see the
    module's docstring). `position` is the chunk's index in `doc_id`.
    """
    options = options or ChunkingOptions()
    loaded = documents.filter(pl.col("error").is_null())
    texts = dict(zip(loaded["doc_id"], loaded["text"], strict=True))
    boilerplate: list[Boilerplate] = []
    if options.near_duplicates:
        texts, boilerplate = take_out_boilerplate(texts, options)
    occurrences: list[tuple[str, str, str, int, str, list[str]]] = []  # every kept chunk, repeats included
    dropped_short = 0
    by_doc: dict[str, list[Boilerplate]] = {}
    for item in boilerplate:  # each under its first holder, after that document's own chunks
        by_doc.setdefault(item.doc_ids[0], []).append(item)
    for doc in loaded.iter_rows(named=True):
        doc_id = doc["doc_id"]
        pieces = document_chunks(texts[doc_id], doc["title"], options)
        holders = [[doc_id]] * len(pieces)
        for item in by_doc.get(doc_id, []):
            own = split_text(item.text, options.chunk_size, options.chunk_overlap)
            pieces += own
            holders += [item.doc_ids] * len(own)
        for position, (text, doc_ids) in enumerate(zip(pieces, holders, strict=True)):
            if len(text) <= options.min_chunk_chars and not FENCE.search(text):
                dropped_short += 1
                continue
            occurrences.append((content_hash(text), doc_id, doc["source"], position, text, doc_ids))
    found = pl.DataFrame(occurrences, schema=CHUNK_SCHEMA, orient="row")
    first_holder = pl.col("doc_id", "source", "position").sort_by("doc_id", "position").first()
    frame = (
        found.group_by("chunk_id", maintain_order=True)
        .agg(
            first_holder,
            pl.col("text").first(),
            pl.col("doc_ids").list.explode(keep_nulls=False, empty_as_null=False).unique().sort(),
        )
        .select(list(CHUNK_SCHEMA))
    )
    merged_duplicates = found.height - frame.height
    merges = [item.merge for item in boilerplate]
    if options.near_duplicates:
        frame, near = merge_near_duplicates(frame, len(texts), options)
        merges += near
    return ChunkingResult(frame, dropped_short, merged_duplicates, merges)


@functools.cache
def _splitter(chunk_size: int, chunk_overlap: int) -> RecursiveCharacterTextSplitter:
    return RecursiveCharacterTextSplitter(
        chunk_size=chunk_size, chunk_overlap=chunk_overlap, separators=SEPARATORS, length_function=len
    )


def split_text(text: str, chunk_size: int, chunk_overlap: int) -> list[str]:
    """The reference's splitter on one text, except that a code block that fits in a chunk is not cut at its blank
    lines (the splitter's paragraph break): a documentation chatbot is asked about code, and half an example
    teaches nothing. Text without code blocks is split as the reference splits it."""
    if CODE_BLANK_LINE in text:  # cannot be masked: split as the reference does
        return _splitter(chunk_size, chunk_overlap).split_text(text)
    chunks = _splitter(chunk_size, chunk_overlap).split_text(_mask_blank_lines_in_code(text))
    return [chunk.replace(CODE_BLANK_LINE, "\n").strip() for chunk in chunks]


def _mask_blank_lines_in_code(text: str) -> str:
    """`text` with the line break before each empty line inside a code block (``` or ~~~) written as
    CODE_BLANK_LINE, so that the splitter's "\n\n" does not match there; the same length, so chunk sizes hold."""
    lines = text.split("\n")
    parts, in_code = [lines[0]], bool(FENCE.match(lines[0]))
    for line in lines[1:]:
        parts += [CODE_BLANK_LINE if in_code and not line else "\n", line]
        in_code ^= bool(FENCE.match(line))
    return "".join(parts)


def document_chunks(text: str, title: str | None, options: ChunkingOptions) -> list[str]:
    """One document's chunks, short ones included: the reference's splitter, or with `by_headings` the splitter
    on each section, the section's path before each of its chunks (within chunk_size where the path allows)."""
    if not options.by_headings:
        return split_text(text, options.chunk_size, options.chunk_overlap)
    chunks: list[str] = []
    for headings, body in sections(text):
        path = section_path(title, headings)
        size = max(options.chunk_size - len(path) - 2, options.chunk_size // 2)
        for piece in split_text(body, size, min(options.chunk_overlap, size // 2)):
            # a piece too short to keep stays short with its path: the path is not content
            chunks.append(f"{path}\n\n{piece}" if path and len(piece) > options.min_chunk_chars else piece)
    return chunks


def section_path(title: str | None, headings: tuple[str, ...]) -> str:
    """`Title > Section > Subsection`; a first heading that repeats the title is named once."""
    names = [title] if title else []
    for heading in headings:
        if not names or heading.casefold() != names[-1].casefold():
            names.append(heading)
    return PATH_SEPARATOR.join(names)


def paragraphs(text: str) -> list[tuple[str, str]]:
    """(paragraph, the blank lines after it) pairs that join back into `text`; a code block is never cut."""
    parts = BLANK_LINES.split(text)
    pairs: list[tuple[str, str]] = []
    in_code = False
    for index in range(0, len(parts), 2):
        block, separator = parts[index], parts[index + 1] if index + 1 < len(parts) else ""
        if in_code:  # a blank line inside a code block: glue to the block that opened it
            previous, previous_separator = pairs[-1]
            pairs[-1] = (previous + previous_separator + block, separator)
        else:
            pairs.append((block, separator))
        in_code ^= len(FENCE.findall(block)) % 2 == 1
    return pairs


def sections(text: str) -> list[tuple[tuple[str, ...], str]]:
    """(the headings above, the text) of each section: the text cut before every heading line outside code
    blocks (``` or ~~~, where `# comment` is a comment), the heading lines left out, empty sections too."""
    found: list[tuple[tuple[str, ...], str]] = []
    path: list[tuple[int, str]] = []
    lines: list[str] = []

    def close() -> None:
        body = "\n".join(lines).strip()
        if body:
            found.append((tuple(name for _, name in path), body))
        lines.clear()

    in_code = False
    for line in text.split("\n"):
        heading = None if in_code else HEADING.match(line)
        if heading:
            close()
            level = len(heading.group(1))
            path[:] = [(depth, name) for depth, name in path if depth < level]
            path.append((level, heading.group(2).strip()))
            continue
        if FENCE.match(line):
            in_code = not in_code
        lines.append(line)
    close()
    return found


def take_out_boilerplate(texts: dict[str, str], options: ChunkingOptions) -> tuple[dict[str, str], list[Boilerplate]]:
    """The documents' texts without their boilerplate paragraphs, and those paragraphs, each once.

    Documents are taken in doc_id order and paragraphs in their order, so the result does not depend on the
    order of the files. Paragraphs of `min_chunk_chars` or fewer characters stay where they are.
    """
    doc_ids = sorted(texts)
    split = {doc_id: paragraphs(texts[doc_id]) for doc_id in doc_ids}
    candidates = [
        (doc_id, index)
        for doc_id in doc_ids
        for index, (paragraph, _) in enumerate(split[doc_id])
        if len(paragraph.strip()) > options.min_chunk_chars
    ]
    candidate_texts = [split[doc_id][index][0].strip() for doc_id, index in candidates]
    removed: set[tuple[str, int]] = set()
    found: list[Boilerplate] = []
    holders = [{doc_id} for doc_id, _ in candidates]
    similar = near_duplicate_groups(candidate_texts, options.near_duplicate_threshold)
    minimum = options.boilerplate_min_documents
    for group in similar:
        for members in merged_groups(group, candidate_texts, holders, len(doc_ids), minimum, options):
            removed.update(candidates[member] for member in members)
            kept = candidate_texts[members[0]]
            variant = next((candidate_texts[m] for m in members if candidate_texts[m] != kept), kept)
            held = sorted({candidates[member][0] for member in members})
            found.append(Boilerplate(kept, held, Merge("paragraph", len(members), len(held), kept, variant)))
    remaining = dict(texts)
    for doc_id in {doc_id for doc_id, _ in removed}:
        kept_pairs = [pair for index, pair in enumerate(split[doc_id]) if (doc_id, index) not in removed]
        remaining[doc_id] = "".join(paragraph + separator for paragraph, separator in kept_pairs)
    return remaining, found


def merged_groups(
    group: list[int],
    texts: list[str],
    holders: list[set[str]],
    documents: int,
    identical_documents: int,
    options: ChunkingOptions,
) -> list[list[int]]:
    """What to keep once of a group of similar texts: the whole group when its holders are enough of the source's
    `documents` (`boilerplate_min_documents` and `boilerplate_min_share`); else each set of members with the same
    words (case, spacing and punctuation aside) held by at least `identical_documents` documents."""

    def held_by(members: list[int]) -> int:
        return len(set().union(*(holders[member] for member in members)))

    if held_by(group) >= max(options.boilerplate_min_documents, options.boilerplate_min_share * documents):
        return [group]
    by_words: dict[str, list[int]] = {}
    for member in group:
        by_words.setdefault(normalized(texts[member]), []).append(member)
    return [same for same in by_words.values() if len(same) > 1 and held_by(same) >= identical_documents]


def merge_near_duplicates(
    frame: pl.DataFrame, documents: int, options: ChunkingOptions
) -> tuple[pl.DataFrame, list[Merge]]:
    """The chunks with near duplicates merged into the first of their group in (doc_id, position) order, which
    keeps its place and takes every holder (`merged_members` says which; identical words always), and the merges.
    `documents`: how many the source has."""
    ordered = frame.sort("doc_id", "position", "chunk_id")
    ids, texts = ordered["chunk_id"].to_list(), ordered["text"].to_list()
    holders = [set(doc_ids) for doc_ids in ordered["doc_ids"].to_list()]
    groups = [
        members
        for group in near_duplicate_groups(texts, options.near_duplicate_threshold)
        for members in merged_groups(group, texts, holders, documents, 1, options)
    ]
    if not groups:
        return frame, []
    kept_of = {ids[member]: ids[group[0]] for group in groups for member in group[1:]}
    merged_holders = (
        frame.select(pl.col("chunk_id").replace(kept_of).alias("kept"), "doc_ids")
        .explode("doc_ids")
        .group_by("kept")
        .agg(pl.col("doc_ids").unique().sort())
    )
    merged = (
        frame.filter(~pl.col("chunk_id").is_in(list(kept_of)))
        .drop("doc_ids")
        .join(merged_holders, left_on="chunk_id", right_on="kept", how="left", maintain_order="left")
        .select(list(CHUNK_SCHEMA))
    )
    counts = dict(zip(merged["chunk_id"], merged["doc_ids"].list.len(), strict=True))
    merges = [Merge("chunk", len(group), counts[ids[group[0]]], texts[group[0]], texts[group[1]]) for group in groups]
    return merged, merges
