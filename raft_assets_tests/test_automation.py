"""The crawl schedule, the folder sensor and the automation conditions, on real Dagster instances."""

import functools
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from raft_assets.definitions import defs
from raft_assets.defs.automation.conditions import on_upstream_data_change
from raft_assets.defs.automation.schedules import crawl_schedule
from raft_assets.defs.automation.sensors import local_folders_sensor
from raft_assets.defs.ingestion.assets import chunks, documents
from raft_assets.defs.partitions import doc_sources
from raft_assets_tests.conftest import REPO, SOURCES, run_assets, write_sources


@pytest.fixture
def folders(project) -> dict[str, Path]:
    """Copies of the two sample sources, which the tests may change."""
    root = Path(project.sources_file).parent
    copies = {name: Path(shutil.copytree(REPO / "data" / name, root / name)) for name in SOURCES}
    write_sources(Path(project.sources_file), [{"name": name, "kind": "local", "path": name} for name in SOURCES])
    return copies


def requests_of(result, keys: list[dg.AssetKey] | None = None) -> set[tuple[str, str | None]]:
    """(asset, partition) pairs that an automation tick requested; partition None for unpartitioned assets."""
    pairs = set()
    for key in keys or defs.resolve_asset_graph().get_all_asset_keys():
        if result.get_num_requested(key):
            partitions = result.get_requested_partitions(key)
            pairs |= {(key.to_user_string(), partition) for partition in partitions}
    return pairs


@contextmanager
def partitions_read_once(instance: dg.DagsterInstance) -> Iterator[None]:
    """The instance's dynamic partitions read once per name while an automation tick is evaluated.

    `dg.evaluate_automation_conditions` writes its cursor with the instance itself as the partitions store, where the
    daemon uses its caching instance queryer: for this graph's conditions that is some 4,000 reads of the same two
    partition lists from SQLite, 25 of a tick's 26 s (profiled). They cannot change during a tick.
    """
    read = instance.get_dynamic_partitions
    instance.get_dynamic_partitions = functools.cache(read)
    try:
        yield
    finally:
        del instance.get_dynamic_partitions


def tick(instance: dg.DagsterInstance, cursor=None):
    """One tick of the automation over the whole graph."""
    with partitions_read_once(instance):
        return dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)


def sensor_tick(instance, project) -> dg.SensorResult | dg.SkipReason:
    return local_folders_sensor(dg.build_sensor_context(instance=instance, resources={"paths": project}))


def test_the_schedule_requests_a_crawl_of_every_source():
    tick = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)
    with dg.instance_for_test() as instance:  # a schedule's context takes an instance that has a reference
        assert isinstance(
            crawl_schedule(dg.build_schedule_context(instance, scheduled_execution_time=tick)), dg.SkipReason
        )
        instance.add_dynamic_partitions(doc_sources.name, SOURCES)
        runs = crawl_schedule(dg.build_schedule_context(instance, scheduled_execution_time=tick))
    assert sorted(run.partition_key for run in runs) == SOURCES
    assert len({run.run_key for run in runs}) == len(SOURCES)
    assert crawl_schedule.cron_schedule == "0 3 * * *"  # daily
    job = defs.resolve_job_def(crawl_schedule.job_name)
    assert job.asset_layer.executable_asset_keys == {documents.key}  # the crawl itself: nothing downstream


def test_an_unchanged_crawl_requests_nothing_and_a_changed_file_only_its_partition(instance, project, folders):
    instance.add_dynamic_partitions(doc_sources.name, SOURCES)
    for source in SOURCES:
        run_assets(project, instance, [documents, chunks], source)
    first = tick(instance)
    assert first.total_requested == 0

    # The daily crawl finds the same documents: same data version, nothing requested downstream.
    for source in SOURCES:
        run_assets(project, instance, [documents], source)
    unchanged = tick(instance, first.cursor)
    assert unchanged.total_requested == 0
    assert isinstance(sensor_tick(instance, project), dg.SkipReason)

    # One file gains a paragraph: the sensor asks for that source only, then its chunks are requested.
    page = folders["llama_docs"] / "rag_and_raft.md"
    page.write_text(
        page.read_text() + "\n\nA new paragraph about retrieval, long enough to be a chunk of its own. " * 3
    )
    sensor = sensor_tick(instance, project)
    assert [request.partition_key for request in sensor.run_requests] == ["llama_docs"]
    assert sensor_tick(instance, project).run_requests[0].run_key == sensor.run_requests[0].run_key  # asked once

    run_assets(project, instance, [documents], "llama_docs")
    assert isinstance(sensor_tick(instance, project), dg.SkipReason)
    changed = tick(instance, unchanged.cursor)
    assert requests_of(changed) == {("chunks", "llama_docs")}

    # Its new chunks reach the next stage of that partition and the assets that read every partition.
    run_assets(project, instance, [chunks], "llama_docs")
    after_chunks = tick(instance, changed.cursor)
    assert requests_of(after_chunks) == {("questions", "llama_docs"), ("retrieval_index", None), ("base_model", None)}


def test_a_touched_file_is_read_again_but_costs_nothing_downstream(instance, project, folders):
    instance.add_dynamic_partitions(doc_sources.name, SOURCES)
    for source in SOURCES:
        run_assets(project, instance, [documents, chunks], source)
    first = tick(instance)

    (folders["pytorch_docs"] / "torchrun_launch.txt").touch()
    sensor = sensor_tick(instance, project)
    assert [request.partition_key for request in sensor.run_requests] == ["pytorch_docs"]
    run_assets(project, instance, [documents], "pytorch_docs")
    after = tick(instance, first.cursor)
    assert after.total_requested == 0


def test_an_asset_waits_until_every_path_from_a_change_has_settled(instance):
    """d reads a directly and through b -> c: a change of a runs b, then c, then d once (not d twice)."""
    versions = {"a": "1", "b": "1", "c": "1", "d": "1"}

    def versioned(name: str, deps: list[str]) -> dg.AssetsDefinition:
        condition = None if name == "a" else on_upstream_data_change()

        @dg.asset(name=name, deps=deps, automation_condition=condition)
        def _asset() -> dg.MaterializeResult:
            return dg.MaterializeResult(data_version=dg.DataVersion(versions[name]))

        return _asset

    graph = [versioned("a", []), versioned("b", ["a"]), versioned("c", ["b"]), versioned("d", ["a", "c"])]

    def materialize(*names: str) -> None:
        assert dg.materialize(graph, selection=list(names), instance=instance).success

    def small_tick(cursor) -> tuple[set[str], object]:
        result = dg.evaluate_automation_conditions(defs=graph, instance=instance, cursor=cursor)
        return {name for name, _ in requests_of(result, [asset.key for asset in graph])}, result.cursor

    materialize("a", "b", "c", "d")
    wanted, cursor = small_tick(None)
    assert wanted == set()

    versions["a"] = "2"
    materialize("a")
    wanted, cursor = small_tick(cursor)
    assert wanted == {"b"}  # d waits: b is requested, and c after it
    versions["b"] = "2"
    materialize("b")
    wanted, cursor = small_tick(cursor)
    assert wanted == {"c"}
    versions["c"] = "2"
    materialize("c")
    wanted, cursor = small_tick(cursor)
    assert wanted == {"d"}
    materialize("d")
    assert small_tick(cursor)[0] == set()

    materialize("a")  # the same data version again: nothing to do
    assert small_tick(cursor)[0] == set()
