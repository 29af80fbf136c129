from pathlib import Path

import dagster as dg

from raft_assets.defs.automation.sensors import doc_sources_sensor
from raft_assets.defs.partitions import doc_sources
from raft_assets_tests.conftest import write_sources


def tick(instance: dg.DagsterInstance, project) -> dg.SensorResult | dg.SkipReason:
    """Evaluate the sensor, then apply its partition requests as the Dagster daemon does."""
    context = dg.build_sensor_context(instance=instance, resources={"paths": project})
    result = doc_sources_sensor(context)
    if isinstance(result, dg.SensorResult):
        for request in result.dynamic_partitions_requests:
            if isinstance(request, dg.AddDynamicPartitionsRequest):
                instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
            else:
                for key in request.partition_keys:
                    instance.delete_dynamic_partition(request.partitions_def_name, key)
    return result


def local(name: str) -> dict:
    return {"name": name, "kind": "local", "path": name}


def test_partitions_follow_the_sources_file(instance, project):
    sources_file = Path(project.sources_file)
    write_sources(sources_file, [local("llama_docs"), local("pytorch_docs")])

    first = tick(instance, project)
    assert sorted(request.partition_key for request in first.run_requests) == ["llama_docs", "pytorch_docs"]
    assert instance.get_dynamic_partitions(doc_sources.name) == ["llama_docs", "pytorch_docs"]

    assert isinstance(tick(instance, project), dg.SkipReason)  # nothing changed: nothing requested

    write_sources(sources_file, [local("pytorch_docs"), local("company_wiki")])
    changed = tick(instance, project)
    assert [request.partition_key for request in changed.run_requests] == ["company_wiki"]
    assert sorted(instance.get_dynamic_partitions(doc_sources.name)) == ["company_wiki", "pytorch_docs"]
    assert doc_sources_sensor.job_name == "per_source_job"
