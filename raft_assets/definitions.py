"""The code location: every asset, check, job, sensor and resource of the project."""

import dagster as dg

from raft_assets.automation.sensors import doc_sources_sensor, per_source_job
from raft_assets.generation.assets import cot_answers, questions
from raft_assets.ingestion.assets import chunks, documents
from raft_assets.resources.llm import LLMResource
from raft_assets.resources.paths import ProjectPaths

defs = dg.Definitions(
    assets=[documents, chunks, questions, cot_answers],
    jobs=[per_source_job],
    sensors=[doc_sources_sensor],
    resources={"paths": ProjectPaths.from_env(), "llm": LLMResource.from_env("RAFT_LLM")},
)
