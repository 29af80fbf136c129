from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml

from raft_assets.settings import ProjectPaths


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
