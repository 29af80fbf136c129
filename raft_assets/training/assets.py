"""The training assets: `base_model` (the model to fine-tune, resolved or built)."""

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from raft_assets.ingestion.assets import chunks
from raft_assets.partitions import doc_sources, every_source
from raft_assets.resources.paths import ProjectPaths
from raft_assets.storage import read_all_partitions
from raft_assets.training.base_model import load_tokenizer, resolve_base_model, write_pointer


class BaseModelConfig(dg.Config):
    name: str = Field(
        default=os.environ.get("RAFT_BASE_MODEL", "tiny"),
        description="A local model directory, a Hugging Face id already in the local cache, or `tiny`.",
    )


@dg.asset(group_name="training", kinds={"pytorch", "huggingface"}, deps=[every_source(chunks)])
def base_model(context: dg.AssetExecutionContext, config: BaseModelConfig, paths: ProjectPaths) -> dg.MaterializeResult:
    """The model to fine-tune; `tiny` is a small Llama built locally, its tokenizer trained on the chunks."""
    sources = context.instance.get_dynamic_partitions(doc_sources.name)
    checkpoints = Path(paths.checkpoint_dir)
    model = resolve_base_model(
        config.name,
        checkpoints,
        lambda: read_all_partitions(paths.data_dir, "chunks", sources, ["chunk_id", "text"]).sort("chunk_id")["text"],
    )
    write_pointer(model, checkpoints)
    tokenizer = load_tokenizer(model)
    example = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is FSDP?"}], tokenize=False, add_generation_prompt=True
    )
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(model.path.resolve())),
            "name": model.name,
            "parameters": model.parameters,
            "vocab_size": model.vocab_size,
            "context_length": model.context_length,
            "built_now": model.built,
            "chat_template_example": dg.MetadataValue.md(f"```\n{example}\n```"),
        },
    )
