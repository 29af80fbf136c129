"""The code location: every asset, check, job, schedule, sensor and resource of the project."""

import dagster as dg

from raft_assets.defs import deployment
from raft_assets.defs.automation.conditions import on_upstream_data_change
from raft_assets.defs.automation.jobs import crawl_job, per_recipe_job, per_source_job
from raft_assets.defs.automation.schedules import crawl_schedule
from raft_assets.defs.automation.sensors import (
    automation_sensor,
    doc_sources_sensor,
    local_folders_sensor,
    recipes_sensor,
)
from raft_assets.defs.curation.assets import curated_answers
from raft_assets.defs.dataset.assets import eval_set, eval_set_disjoint_from_training, raft_dataset, raft_dataset_checks
from raft_assets.defs.evaluation.assets import eval_report
from raft_assets.defs.evaluation.experiment_report import experiment_report
from raft_assets.defs.evaluation.vllm import VLLMResource
from raft_assets.defs.generation.assets import cot_answers, questions
from raft_assets.defs.ingestion.assets import chunks, documents
from raft_assets.defs.resources import LLMResource, ProjectPaths
from raft_assets.defs.retrieval.assets import retrieval_index
from raft_assets.defs.training.assets import fsdp_checkpoint, hf_checkpoint
from raft_assets.defs.training.base_model import base_model
from raft_assets.defs.training.trainer import TrainerResource
from raft_assets.settings import load_settings

SETTINGS = load_settings()
OWNERS = ["team:ml-platform"]  # shown on every asset in the UI: who to ask about it


def automated(spec: dg.AssetSpec) -> dg.AssetSpec:
    """Owners on every asset; below the crawled `documents`, refresh on upstream data change."""
    condition = None if spec.key == documents.key else on_upstream_data_change()
    return spec.replace_attributes(owners=OWNERS, automation_condition=condition)


defs = dg.Definitions(
    assets=dg.map_asset_specs(
        automated,
        [
            documents,
            chunks,
            questions,
            cot_answers,
            curated_answers,
            retrieval_index,
            base_model,
            raft_dataset,
            eval_set,
            fsdp_checkpoint,
            hf_checkpoint,
            eval_report,
            experiment_report,
        ],
    ),
    asset_checks=[raft_dataset_checks, eval_set_disjoint_from_training],
    jobs=[per_source_job, per_recipe_job, crawl_job],
    schedules=[crawl_schedule],
    sensors=[doc_sources_sensor, recipes_sensor, local_folders_sensor, automation_sensor],
    executor=deployment.executor(SETTINGS.executor),
    resources={
        "paths": ProjectPaths.from_settings(SETTINGS),
        "llm": LLMResource.from_variables(SETTINGS.generator),
        "judge": LLMResource.from_variables(SETTINGS.judge),
        "curator": LLMResource.from_variables(SETTINGS.curator),
        "trainer": TrainerResource(),
        "vllm": VLLMResource(),
    },
)
