"""The jobs that the schedule and the sensors launch, one source or recipe partition per run."""

import dagster as dg

from raft_assets.defs.curation.assets import curated_answers
from raft_assets.defs.dataset.assets import raft_dataset
from raft_assets.defs.evaluation.assets import eval_report
from raft_assets.defs.generation.assets import cot_answers, questions
from raft_assets.defs.ingestion.assets import chunks, documents
from raft_assets.defs.training.assets import fsdp_checkpoint, hf_checkpoint

per_source_job = dg.define_asset_job(
    "per_source_job",
    selection=dg.AssetSelection.assets(documents, chunks, questions, cot_answers, curated_answers),
    description="Every per-source asset, for one source (a new source's first run).",
)

crawl_job = dg.define_asset_job(
    "crawl_job",
    selection=dg.AssetSelection.assets(documents),
    description="Read one source again; the automation refreshes downstream only if its documents changed.",
)

per_recipe_job = dg.define_asset_job(
    "per_recipe_job",
    selection=dg.AssetSelection.assets(raft_dataset, fsdp_checkpoint, hf_checkpoint, eval_report),
    description="Every per-recipe asset, for one recipe (a new recipe's first run): its dataset, fine-tuning, export "
    "and evaluation, from the shared sources, index and eval set.",
)
