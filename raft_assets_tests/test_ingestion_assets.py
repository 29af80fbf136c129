from pathlib import Path

import dagster as dg
import polars as pl

from raft_assets.defs.ingestion.assets import chunks, documents
from raft_assets.defs.partitions import doc_sources
from raft_assets_tests.conftest import write_sources
from raft_assets_tests.test_near_duplicates import content, footer

TEXT = "\n\n".join(
    f"Paragraph {i}: FSDP2 shards each decoder layer with fully_shard, and rank {i} gathers the full weights "
    f"only while layer {i} runs its forward and backward passes." * 2
    for i in range(12)
)


def materialize(project, instance, source: str, run_config: dict | None = None) -> dg.ExecuteInProcessResult:
    instance.add_dynamic_partitions(doc_sources.name, [source])
    return dg.materialize(
        [documents, chunks],
        partition_key=source,
        instance=instance,
        resources={"paths": project},
        run_config=run_config or {},
        raise_on_error=False,
    )


def add_local_source(project, folder: Path, name: str) -> None:
    write_sources(Path(project.sources_file), [{"name": name, "kind": "local", "path": str(folder)}])


def test_documents_and_chunks_write_parquet_with_metadata(project, instance, tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "fsdp.md").write_text(f"# FSDP\n\n{TEXT}", encoding="utf-8")
    (folder / "notes.txt").write_text(f"Notes\n{TEXT[:500]}", encoding="utf-8")
    (folder / "broken.pdf").write_text("not a pdf", encoding="utf-8")
    add_local_source(project, folder, "docs")

    run_config = {
        "ops": {
            "documents": {"config": {"max_failure_rate": 0.5}},
            "chunks": {"config": {"chunk_size": 400, "chunk_overlap": 40}},
        }
    }
    result = materialize(project, instance, "docs", run_config)
    assert result.success

    docs = pl.read_parquet(project.stage_file("documents", "docs"))
    assert docs.columns == ["doc_id", "source", "uri", "title", "text", "content_hash", "error"]
    assert docs["uri"].to_list() == ["broken.pdf", "fsdp.md", "notes.txt"]
    assert docs.filter(pl.col("error").is_not_null())["uri"].to_list() == ["broken.pdf"]

    found = pl.read_parquet(project.stage_file("chunks", "docs"))
    assert found.columns == ["chunk_id", "doc_id", "source", "position", "text", "doc_ids"]
    assert found["text"].str.len_chars().max() <= 400
    assert set(found["doc_id"]) == set(docs.filter(pl.col("error").is_null())["doc_id"])

    doc_meta = result.asset_materializations_for_node("documents")[0].metadata
    assert doc_meta["loaded"].value == 2 and doc_meta["failed"].value == 1
    assert doc_meta["dagster/row_count"].value == 3
    assert "broken.pdf" in doc_meta["errors"].value and "not a readable PDF" in doc_meta["errors"].value
    assert "fsdp.md" in doc_meta["preview"].value
    chunk_meta = result.asset_materializations_for_node("chunks")[0].metadata
    assert chunk_meta["dagster/row_count"].value == found.height
    assert chunk_meta["chunk_size"].value == 400
    assert [column.name for column in chunk_meta["dagster/column_schema"].value.columns] == found.columns

    checks = {evaluation.check_name: evaluation.passed for evaluation in result.get_asset_check_evaluations()}
    assert checks == {"has_documents": True, "failure_rate_within_bound": True}


def test_failure_rate_above_the_bound_blocks_chunks(project, instance, tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "good.md").write_text(TEXT, encoding="utf-8")
    (folder / "broken.pdf").write_text("not a pdf", encoding="utf-8")
    add_local_source(project, folder, "docs")

    result = materialize(project, instance, "docs")  # default bound: 25%; here 50% failed
    assert not result.success
    checks = {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}
    assert checks["has_documents"].passed
    assert not checks["failure_rate_within_bound"].passed
    assert "1 of 2 documents failed (50.0%; the bound is 25%)" in checks["failure_rate_within_bound"].description
    assert not project.stage_file("chunks", "docs").exists()


def test_a_source_whose_every_document_fails_fails_its_check(project, instance, tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "empty.md").write_bytes(b"")
    (folder / "binary.txt").write_bytes(b"\x00\x01\x02")
    add_local_source(project, folder, "docs")

    result = materialize(project, instance, "docs", {"ops": {"documents": {"config": {"max_failure_rate": 1.0}}}})
    assert not result.success
    [failed] = [e for e in result.get_asset_check_evaluations() if not e.passed]
    assert failed.check_name == "has_documents"
    assert failed.description == (
        "No document of source 'docs' could be loaded: binary.txt: binary content (NUL bytes) in a text file; "
        "empty.md: empty file."
    )
    # The documents file keeps the per-file reasons; nothing downstream ran.
    errors = pl.read_parquet(project.stage_file("documents", "docs"))["error"].to_list()
    assert errors == ["binary content (NUL bytes) in a text file", "empty file"]
    assert not result.asset_materializations_for_node("chunks")


def test_data_version_changes_only_when_the_content_does(project, instance, tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.md").write_text(TEXT, encoding="utf-8")
    add_local_source(project, folder, "docs")

    def versions() -> tuple[str, str]:
        result = materialize(project, instance, "docs")
        assert result.success
        return tuple(
            result.asset_materializations_for_node(name)[0].tags["dagster/data_version"]
            for name in ("documents", "chunks")
        )

    first = versions()
    assert versions() == first
    closing = "A new closing paragraph: activation checkpointing recomputes each layer's activations in backward."
    (folder / "a.md").write_text(f"{TEXT}\n\n{closing * 2}", encoding="utf-8")
    changed = versions()
    assert changed[0] != first[0] and changed[1] != first[1]


def test_chunks_keep_boilerplate_once_and_say_so_in_the_metadata(project, instance, tmp_path):
    folder = tmp_path / "site"
    folder.mkdir()
    for page in range(20):
        (folder / f"page{page:02d}.md").write_text(
            f"# Page {page}\n\n{content(page)}\n\n{footer(page)}", encoding="utf-8"
        )
    add_local_source(project, folder, "site")

    result = materialize(project, instance, "site", {"ops": {"chunks": {"config": {"by_headings": True}}}})
    assert result.success
    found = pl.read_parquet(project.stage_file("chunks", "site"))
    [footer_chunk] = found.filter(pl.col("text").str.contains("Was this page helpful"))["doc_ids"].to_list()
    docs = pl.read_parquet(project.stage_file("documents", "site"))
    assert footer_chunk == sorted(docs["doc_id"])  # 20 provenance entries
    own = found.filter(pl.col("doc_ids").list.len() == 1)["text"]
    assert own.len() >= 20 and own.str.starts_with("Page ").all()  # by_headings: each starts with its path

    meta = result.asset_materializations_for_node("chunks")[0].metadata
    assert meta["boilerplate_paragraphs"].value == 20
    assert meta["merged_near_duplicates"].value == 0
    assert meta["by_headings"].value is True and meta["near_duplicates"].value is True
    assert "paragraph" in meta["near_duplicate_examples"].value and "Was this page helpful" in (
        meta["near_duplicate_examples"].value
    )

    off = materialize(project, instance, "site", {"ops": {"chunks": {"config": {"near_duplicates": False}}}})
    assert off.success
    off_meta = off.asset_materializations_for_node("chunks")[0].metadata
    assert off_meta["boilerplate_paragraphs"].value == 0
    assert (
        pl.read_parquet(project.stage_file("chunks", "site"))["text"].str.contains("Was this page helpful").sum() == 20
    )


def test_chunk_overlap_not_smaller_than_chunk_size_fails_with_the_reason(project, instance, tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.md").write_text(TEXT, encoding="utf-8")
    add_local_source(project, folder, "docs")
    run_config = {"ops": {"chunks": {"config": {"chunk_size": 200, "chunk_overlap": 200}}}}
    result = materialize(project, instance, "docs", run_config)
    assert not result.success
    [failure] = [event for event in result.all_events if event.event_type_value == "STEP_FAILURE"]
    assert "chunk_overlap (200) must be smaller than chunk_size (200)" in str(failure.event_specific_data.error)
