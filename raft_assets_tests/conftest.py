from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from raft_assets.defs.resources import ProjectPaths

REPO = Path(__file__).resolve().parents[1]
RAFT_ASSETS = str(Path(sys.executable).parent / "raft-assets")


def cli_env(tmp_path: Path, sources: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a `raft-assets` run with its own DAGSTER_HOME and data folder under tmp_path."""
    return {
        **{key: value for key, value in os.environ.items() if not key.startswith("RAFT_")},
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "RAFT_DATA_DIR": str(tmp_path / "generated"),
        "RAFT_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "RAFT_SOURCES": str(sources or REPO / "data" / "sources.yaml"),
        "COLUMNS": "200",
        **extra,
    }


def run_cli(tmp_path: Path, *args: str, sources: Path | None = None, **extra_env: str) -> subprocess.CompletedProcess:
    """`raft-assets run ARGS` in a subprocess, as a user runs it."""
    return subprocess.run(
        [RAFT_ASSETS, "run", *args],
        cwd=REPO,
        env=cli_env(tmp_path, sources, **extra_env),
        capture_output=True,
        text=True,
        timeout=900,
    )


def write_sources(path: Path, sources: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"sources": sources}), encoding="utf-8")
    return path


@pytest.fixture
def project(tmp_path: Path) -> ProjectPaths:
    """Paths under tmp_path; the sources file is empty until a test writes it with `write_sources`."""
    sources_file = write_sources(tmp_path / "sources.yaml", [])
    return ProjectPaths(
        sources_file=str(sources_file),
        data_dir=str(tmp_path / "generated"),
        checkpoint_dir=str(tmp_path / "checkpoints"),
    )


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


SOURCES = ["llama_docs", "pytorch_docs"]


def run_assets(
    project: ProjectPaths,
    instance: dg.DagsterInstance,
    selection: list,
    partition: str | None = None,
    config: dict | None = None,
    **resources: object,
) -> dg.ExecuteInProcessResult:
    """Materialize `selection` out of the whole graph (with the extractive generator unless told otherwise)."""
    from raft_assets.definitions import defs
    from raft_assets.defs.evaluation.vllm import VLLMResource
    from raft_assets.defs.resources import LLMResource
    from raft_assets.defs.training.trainer import TrainerResource

    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=selection,
        partition_key=partition,
        instance=instance,
        resources={
            "paths": project,
            "llm": LLMResource(),
            "judge": LLMResource(),
            "trainer": TrainerResource(),
            "vllm": VLLMResource(),
            **resources,
        },
        run_config={"ops": config or {}},
    )
    assert result.success
    return result


@pytest.fixture(scope="session")
def sample_pipeline(tmp_path_factory):
    """The shipped sample corpus through `eval_set`, with the extractive generator and the tiny model."""
    from raft_assets.defs.dataset.assets import eval_set, raft_dataset
    from raft_assets.defs.generation.assets import cot_answers, questions
    from raft_assets.defs.ingestion.assets import chunks, documents
    from raft_assets.defs.partitions import doc_sources
    from raft_assets.defs.retrieval.assets import retrieval_index
    from raft_assets.defs.training.base_model import base_model

    root = tmp_path_factory.mktemp("pipeline")
    project = ProjectPaths(
        sources_file=str(REPO / "data" / "sources.yaml"),
        data_dir=str(root / "generated"),
        checkpoint_dir=str(root / "checkpoints"),
    )
    curation = root / "curation.yaml"
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(doc_sources.name, SOURCES)
        for source in SOURCES:
            run_assets(project, instance, [documents, chunks, questions, cot_answers], source)
        eval_config = {"eval_set": {"config": {"curation_file": str(curation), "size": 10}}}
        run_assets(project, instance, [retrieval_index, base_model, raft_dataset, eval_set], config=eval_config)
        yield project, instance, curation
