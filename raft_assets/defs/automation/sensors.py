"""The sensors: sources added to or removed from the sources file, recipes to or from the experiments file, and
changed files in local sources."""

import dagster as dg

from raft_assets.contracts.sources import LocalSource
from raft_assets.defs.automation.jobs import crawl_job, per_recipe_job, per_source_job
from raft_assets.defs.ingestion.assets import FILES_FINGERPRINT, documents
from raft_assets.defs.partitions import doc_sources, recipes
from raft_assets.defs.resources import ProjectPaths
from raft_assets.ingestion.local_files import folder_fingerprint


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
    return synced(context, doc_sources, [spec.name for spec in paths.sources()], f"sources in {paths.sources_file}")


@dg.sensor(
    job=per_recipe_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds a partition for each new recipe in the experiments file (and materializes it), removes gone "
    "ones.",
)
def recipes_sensor(context: dg.SensorEvaluationContext, paths: ProjectPaths) -> dg.SensorResult | dg.SkipReason:
    names = [recipe.name for recipe in paths.recipes()]
    return synced(context, recipes, names, f"recipes in {paths.experiments_file}")


def synced(
    context: dg.SensorEvaluationContext, partitions: dg.DynamicPartitionsDefinition, wanted: list[str], what: str
) -> dg.SensorResult | dg.SkipReason:
    """The partitions made to match `wanted`, and a run of the sensor's job for each one added."""
    added, removed = partition_changes(context.instance.get_dynamic_partitions(partitions.name), wanted)
    if not added and not removed:
        return dg.SkipReason(f"The {len(wanted)} {what} are all partitions already.")
    context.log.info(f"{partitions.name} added: {added or 'none'}; removed: {removed or 'none'}")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=name) for name in added],
        dynamic_partitions_requests=[partitions.build_add_request(added), partitions.build_delete_request(removed)],
    )


def last_ingestion(instance: dg.DagsterInstance, source: str) -> dg.EventLogRecord | None:
    """The latest `documents` materialization of a source, if any."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=documents.key, asset_partitions=[source]), limit=1
    ).records
    return records[0] if records else None


def ingested_fingerprint(record: dg.EventLogRecord) -> str | None:
    materialization = record.asset_materialization
    value = materialization.metadata.get(FILES_FINGERPRINT) if materialization else None
    return value.value if value is not None else None


@dg.sensor(
    job=crawl_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Reads a local source again when a file in its folder was added, changed or removed.",
)
def local_folders_sensor(context: dg.SensorEvaluationContext, paths: ProjectPaths) -> dg.SensorResult | dg.SkipReason:
    """Compares each local folder with the fingerprint recorded by the source's last `documents` materialization.

    A source never materialized is left to `doc_sources_sensor`. The run key names the folder state and the
    materialization it differs from, so a change is requested once, however many ticks pass before it runs.
    """
    partitions = set(context.instance.get_dynamic_partitions(doc_sources.name))
    requests = []
    for spec in paths.sources():
        if not isinstance(spec, LocalSource) or spec.name not in partitions:
            continue
        record = last_ingestion(context.instance, spec.name)
        if record is None:
            continue
        fingerprint = folder_fingerprint(spec)
        if fingerprint != ingested_fingerprint(record):
            run_key = f"{spec.name}:{fingerprint}:{record.storage_id}"
            requests.append(dg.RunRequest(run_key=run_key, partition_key=spec.name))
    if not requests:
        return dg.SkipReason("No file changed in the local sources since they were last read.")
    context.log.info(f"files changed in: {', '.join(request.partition_key for request in requests)}")
    return dg.SensorResult(run_requests=requests)


automation_sensor = dg.AutomationConditionSensorDefinition(
    "automation_sensor",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Requests the assets whose automation condition is true (see automation/conditions.py).",
)
