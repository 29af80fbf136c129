"""The training assets: `base_model`, `fsdp_checkpoint` (fine-tuning) and `hf_checkpoint` (its export)."""

import hashlib
import json
import os
from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field

from raft_assets.deployment import gpu_op_tags
from raft_assets.files import write_text_atomically
from raft_assets.hashing import content_hash, tree_fingerprint
from raft_assets.ingestion.assets import chunks
from raft_assets.partitions import doc_sources, every_source
from raft_assets.resources.paths import ProjectPaths
from raft_assets.resources.trainer import TrainerResource
from raft_assets.storage import file_link, read_all_partitions
from raft_assets.training.base_model import load_tokenizer, read_pointer, resolve_base_model, write_pointer
from raft_assets.training.checkpoint import TrainParams
from raft_assets.training.export import export_hf_checkpoint

MAX_CONTEXT_LENGTH = 8192  # the reference fine-tunes Llama 3 8B with 8,192-token blocks
LATEST_RUN = "latest_run"  # in checkpoints/fsdp/ and checkpoints/hf/: the name of the newest run


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


class FineTuneConfig(dg.Config):
    """The run's hyper-parameters (see raft_assets/training/checkpoint.py TrainParams); defaults as the reference."""

    method: Literal["full", "lora"] = "full"
    epochs: int = Field(default=1, gt=0)
    lr: float = Field(default=1e-5, gt=0)
    batch_size: int = Field(default=1, gt=0, description="Packed blocks per process per micro-batch.")
    gradient_accumulation: int = Field(default=1, gt=0)
    context_length: int | None = Field(default=None, gt=0, description="Default: the base model's, at most 8192.")
    warmup_steps: int = Field(default=0, ge=0)
    schedule: Literal["cosine", "linear", "constant", "step"] = "cosine"
    weight_decay: float = 0.0
    seed: int = 42
    precision: Literal["auto", "bf16", "fp32"] = Field(default="auto", description="auto: bf16 on GPU, fp32 on CPU.")
    activation_checkpointing: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    max_steps: int | None = Field(default=None, gt=0, description="Stop early (smoke runs).")
    save_every_steps: int | None = Field(
        default=50, gt=0, description="Checkpoint cadence: a killed run resumes there."
    )
    eval_every_steps: int | None = Field(default=None, gt=0)
    use_wandb: bool = False


def file_digest(*paths: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for path in paths:
        with path.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def train_params(config: FineTuneConfig, paths: ProjectPaths) -> TrainParams:
    """The run's parameters; the run folder is named by a hash of them and of the data, so an interrupted
    run is resumed by the next materialization, and new data or settings start a new run."""
    model = read_pointer(Path(paths.checkpoint_dir))
    raft = Path(paths.data_dir) / "raft"
    train_file, test_file = raft / "raft_train.jsonl", raft / "raft_test.jsonl"
    settings = config.model_dump()
    settings["context_length"] = config.context_length or min(model.context_length, MAX_CONTEXT_LENGTH)
    run = content_hash(json.dumps(settings, sort_keys=True), str(model.path), file_digest(train_file, test_file))[:12]
    return TrainParams(
        base_model=str(model.path),
        train_file=str(train_file.resolve()),
        test_file=str(test_file.resolve()) if test_file.stat().st_size else None,
        output_dir=str((Path(paths.checkpoint_dir) / "fsdp" / run).resolve()),
        **settings,
    )


@dg.asset(
    group_name="training",
    kinds={"pytorch", "torchrun"},
    deps=["raft_dataset", base_model],
    pool="gpu",
    op_tags=gpu_op_tags("RAFT_K8S_TRAIN_GPUS", 8),
)
def fsdp_checkpoint(
    context: dg.AssetExecutionContext, config: FineTuneConfig, paths: ProjectPaths, trainer: TrainerResource
) -> dg.MaterializeResult:
    """Fine-tune the base model on raft_train.jsonl with FSDP2 under torchrun; sharded DCP checkpoints."""
    params = train_params(config, paths)
    run_dir = Path(params.output_dir)
    resuming = (run_dir / "latest").is_file()
    context.log.info(f"{'Resuming' if resuming else 'Starting'} run {run_dir.name} in {run_dir}")
    params.save(run_dir / "train_params.yaml")
    result = trainer.run(context, run_dir / "train_params.yaml")
    write_text_atomically(run_dir.parent / LATEST_RUN, run_dir.name)
    return dg.MaterializeResult(
        metadata={
            **(result.metadata or {}),
            **file_link(run_dir),
            "run": run_dir.name,
            "resumed": resuming,
            "processes": trainer.processes() * trainer.nnodes,
        },
        data_version=dg.DataVersion(content_hash(run_dir.name, (run_dir / "latest").read_text())),
    )


@dg.asset(group_name="training", kinds={"pytorch", "safetensors"}, deps=[fsdp_checkpoint])
def hf_checkpoint(context: dg.AssetExecutionContext, paths: ProjectPaths) -> dg.MaterializeResult:
    """The fine-tuned model as a Hugging Face checkpoint (safetensors, config, tokenizer with chat template)."""
    fsdp = Path(paths.checkpoint_dir) / "fsdp"
    if not (fsdp / LATEST_RUN).is_file():
        raise dg.Failure("No fine-tuning run yet: materialize fsdp_checkpoint first.")
    run = (fsdp / LATEST_RUN).read_text().strip()
    target = Path(paths.checkpoint_dir) / "hf" / run
    export = export_hf_checkpoint(fsdp / run, target)
    write_text_atomically(target.parent / LATEST_RUN, run)
    context.log.info(f"Saved {target}; logits of the reloaded model differ by at most {export.max_logit_diff:g}")
    return dg.MaterializeResult(
        metadata={
            **file_link(target),
            "run": run,
            "from_checkpoint": export.step_folder.name,
            "dtype": str(export.dtype).removeprefix("torch."),
            "parameters": export.parameters,
            "max_logit_diff": export.max_logit_diff,
            "max_logit_diff_vs_fp32": export.max_logit_diff_vs_fp32,
            "files": ", ".join(sorted(p.name for p in target.iterdir())),
        },
        data_version=dg.DataVersion(content_hash(run, export.step_folder.name)),
    )
