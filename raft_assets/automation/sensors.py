"""The `doc_sources` sensor: partitions follow `data/sources.yaml`; new sources are materialized."""

import dagster as dg

from raft_assets.generation.assets import cot_answers, questions
from raft_assets.ingestion.assets import chunks, documents
from raft_assets.partitions import doc_sources
from raft_assets.resources.paths import ProjectPaths

per_source_job = dg.define_asset_job(
    "per_source_job",
    selection=dg.AssetSelection.assets(documents, chunks, questions, cot_answers),
    description="Every per-source asset, for one source.",
)


def partition_changes(existing: list[str], wanted: list[str]) -> tuple[list[str], list[str]]:
    """The keys to add and the keys to remove so that `existing` becomes `wanted`."""
    added = [key for key in wanted if key not in existing]
    removed = [key for key in existing if key not in wanted]
    return added, removed


@dg.sensor(
    job=per_source_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds a partition for each new source in the sources file (and materializes it), removes gone ones.",
)
def doc_sources_sensor(context: dg.SensorEvaluationContext, paths: ProjectPaths) -> dg.SensorResult | dg.SkipReason:
    wanted = [spec.name for spec in paths.sources()]
    added, removed = partition_changes(context.instance.get_dynamic_partitions(doc_sources.name), wanted)
    if not added and not removed:
        return dg.SkipReason(f"The {len(wanted)} sources in {paths.sources_file} are all partitions already.")
    context.log.info(f"sources added: {added or 'none'}; removed: {removed or 'none'}")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=name) for name in added],
        dynamic_partitions_requests=[
            doc_sources.build_add_request(added),
            doc_sources.build_delete_request(removed),
        ],
    )
