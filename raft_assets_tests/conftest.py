from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from raft_assets.resources.paths import ProjectPaths

REPO = Path(__file__).resolve().parents[1]
RAFT_ASSETS = str(Path(sys.executable).parent / "raft-assets")


def cli_env(tmp_path: Path, sources: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a `raft-assets` run with its own DAGSTER_HOME and data folder under tmp_path."""
    return {
        **{key: value for key, value in os.environ.items() if not key.startswith("RAFT_")},
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "RAFT_DATA_DIR": str(tmp_path / "generated"),
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
        timeout=300,
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
