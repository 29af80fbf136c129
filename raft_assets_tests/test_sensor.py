from pathlib import Path

import dagster as dg

from raft_assets.defs.automation.sensors import doc_sources_sensor, recipes_sensor
from raft_assets.defs.partitions import doc_sources, recipes
from raft_assets_tests.conftest import write_sources


def tick(instance: dg.DagsterInstance, project, sensor=doc_sources_sensor) -> dg.SensorResult | dg.SkipReason:
    """Evaluate the sensor, then apply its partition requests as the Dagster daemon does."""
    context = dg.build_sensor_context(instance=instance, resources={"paths": project})
    result = sensor(context)
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


def test_recipe_partitions_follow_the_experiments_file(instance, project):
    """Without the file, the one recipe is `default`; a recipe added gets a partition and a run of its per-recipe
    assets, a recipe removed loses its partition."""
    first = tick(instance, project, recipes_sensor)
    assert [request.partition_key for request in first.run_requests] == ["default"]
    assert instance.get_dynamic_partitions(recipes.name) == ["default"]
    assert isinstance(tick(instance, project, recipes_sensor), dg.SkipReason)

    experiments = Path(project.experiments_file)
    experiments.write_text("recipes:\n  default: {}\n  lora:\n    fine_tune: {method: lora}\n", encoding="utf-8")
    added = tick(instance, project, recipes_sensor)
    assert [request.partition_key for request in added.run_requests] == ["lora"]
    assert instance.get_dynamic_partitions(recipes.name) == ["default", "lora"]

    experiments.write_text("recipes:\n  oracle_always:\n    dataset: {p: 1.0}\n", encoding="utf-8")
    changed = tick(instance, project, recipes_sensor)
    assert [request.partition_key for request in changed.run_requests] == ["oracle_always"]
    assert sorted(instance.get_dynamic_partitions(recipes.name)) == ["default", "oracle_always"]
    assert recipes_sensor.job_name == "per_recipe_job"
