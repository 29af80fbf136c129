"""The code location: every asset, check, job, schedule, sensor and resource of the project."""

import dagster as dg

from raft_assets import deployment
from raft_assets.automation.conditions import on_upstream_data_change
from raft_assets.automation.jobs import crawl_job, per_source_job
from raft_assets.automation.schedules import crawl_schedule
from raft_assets.automation.sensors import automation_sensor, doc_sources_sensor, local_folders_sensor
from raft_assets.dataset.assets import eval_set, eval_set_disjoint_from_training, raft_dataset, raft_dataset_checks
from raft_assets.evaluation.assets import eval_report
from raft_assets.generation.assets import cot_answers, questions
from raft_assets.ingestion.assets import chunks, documents
from raft_assets.resources.llm import LLMResource
from raft_assets.resources.paths import ProjectPaths
from raft_assets.resources.trainer import TrainerResource
from raft_assets.resources.vllm import VLLMResource
from raft_assets.retrieval.assets import retrieval_index
from raft_assets.training.assets import base_model, fsdp_checkpoint, hf_checkpoint

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
            retrieval_index,
            base_model,
            raft_dataset,
            eval_set,
            fsdp_checkpoint,
            hf_checkpoint,
            eval_report,
        ],
    ),
    asset_checks=[raft_dataset_checks, eval_set_disjoint_from_training],
    jobs=[per_source_job, crawl_job],
    schedules=[crawl_schedule],
    sensors=[doc_sources_sensor, local_folders_sensor, automation_sensor],
    executor=deployment.executor(),
    resources={
        "paths": ProjectPaths.from_env(),
        "llm": LLMResource.from_env("RAFT_LLM"),
        "judge": LLMResource.from_env("RAFT_JUDGE"),
        "trainer": TrainerResource(),
        "vllm": VLLMResource(),
    },
)
