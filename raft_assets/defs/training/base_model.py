"""The `base_model` asset: the model to fine-tune, resolved (a local folder, a cached hub id) or built (`tiny`).

Its own module: the dataset needs it (its tokenizer measures the records) and training needs the dataset.
"""

import dagster as dg
from pydantic import Field

from raft_assets.contracts.tables import read_all_partitions
from raft_assets.defs.ingestion.assets import chunks
from raft_assets.defs.metadata import file_link
from raft_assets.defs.partitions import doc_sources, every_partition
from raft_assets.defs.resources import ProjectPaths
from raft_assets.hashing import tree_fingerprint
from raft_assets.settings import load_settings
from raft_assets.training.base_model import load_tokenizer, resolve_base_model, write_pointer


class BaseModelConfig(dg.Config):
    name: str = Field(
        default=load_settings().base_model,
        description="A local model directory, a Hugging Face id already in the local cache, or `tiny`.",
    )


@dg.asset(group_name="training", kinds={"pytorch", "huggingface"}, deps=[every_partition(chunks)])
def base_model(context: dg.AssetExecutionContext, config: BaseModelConfig, paths: ProjectPaths) -> dg.MaterializeResult:
    """The model to fine-tune; `tiny` is a small Llama built locally, its tokenizer trained on the chunks."""
    sources = context.instance.get_dynamic_partitions(doc_sources.name)
    layout = paths.layout
    model = resolve_base_model(
        config.name,
        layout,
        lambda: read_all_partitions(layout, "chunks", sources, ["chunk_id", "text"]).sort("chunk_id")["text"],
    )
    write_pointer(model, layout)
    tokenizer = load_tokenizer(model)
    example = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is FSDP?"}], tokenize=False, add_generation_prompt=True
    )
    return dg.MaterializeResult(
        metadata={
            **file_link(model.path),
            "name": model.name,
            "parameters": model.parameters,
            "vocab_size": model.vocab_size,
            "context_length": model.context_length,
            "built_now": model.built,
            "chat_template_example": dg.MetadataValue.md(f"```\n{example}\n```"),
        },
        data_version=dg.DataVersion(tree_fingerprint(model.path)),
    )
