"""Where the project reads its sources and writes its outputs (the RAFT_* path variables)."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from raft_assets.ingestion.sources import SourceSpec, load_sources
from raft_assets.storage import partition_file


class ProjectPaths(dg.ConfigurableResource):
    """The sources file and the output folders. Relative paths are relative to the working directory."""

    sources_file: str = "data/sources.yaml"
    data_dir: str = "data/generated"
    checkpoint_dir: str = "checkpoints"

    @classmethod
    def from_env(cls) -> ProjectPaths:
        return cls(
            sources_file=os.environ.get("RAFT_SOURCES", "data/sources.yaml"),
            data_dir=os.environ.get("RAFT_DATA_DIR", "data/generated"),
            checkpoint_dir=os.environ.get("RAFT_CHECKPOINT_DIR", "checkpoints"),
        )

    def sources(self) -> list[SourceSpec]:
        return load_sources(Path(self.sources_file))

    def source(self, name: str) -> SourceSpec:
        by_name = {spec.name: spec for spec in self.sources()}
        if name not in by_name:
            raise dg.Failure(
                f"Source {name!r} is not in {self.sources_file} (sources there: {', '.join(by_name) or 'none'})."
            )
        return by_name[name]

    def stage_file(self, stage: str, source: str, suffix: str = ".parquet") -> Path:
        """`<data_dir>/<stage>/<source><suffix>`; a partition key that is not a valid source name is refused."""
        return partition_file(self.data_dir, stage, source, suffix)
