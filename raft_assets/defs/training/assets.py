"""The training assets, one partition per recipe: `fsdp_checkpoint` (fine-tuning) and `hf_checkpoint` (its export)."""

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field

from raft_assets.contracts.inline_images import inline_png
from raft_assets.contracts.layout import Layout
from raft_assets.defs.dataset.assets import raft_dataset
from raft_assets.defs.deployment import gpu_op_tags
from raft_assets.defs.launchpad import config_class
from raft_assets.defs.metadata import file_link
from raft_assets.defs.partitions import recipes
from raft_assets.defs.recipes import RecipeRun, recipe_metadata, recipe_run, with_overrides
from raft_assets.defs.resources import ProjectPaths
from raft_assets.defs.training.base_model import base_model
from raft_assets.defs.training.trainer import TrainerResource
from raft_assets.hashing import content_hash
from raft_assets.settings import load_settings
from raft_assets.training.base_model import read_pointer
from raft_assets.training.checkpoint import (
    LATEST_FILE,
    LOSS_CURVE,
    PARAMS_FILE,
    PROBE_FILE,
    SUMMARY_PATHS,
    finished_summary,
    read_trainer_state,
)
from raft_assets.training.loss_plot import plot_loss_curve
from raft_assets.training.params import Hyperparameters, TrainParams

if TYPE_CHECKING:
    from raft_assets.training.export import Export

SETTINGS = load_settings()


FineTuneConfig = config_class("FineTuneConfig", Hyperparameters)
LOSS_PLOT = "loss_curve.png"  # in the run's folder


def file_digest(*paths: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for path in paths:
        with path.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def train_params(config: dg.Config, run: RecipeRun) -> TrainParams:
    """The run's parameters (the run config's, with the recipe's `fine_tune` overrides); the run folder is named by
    a hash of them and of the data, so an interrupted run is resumed by the next materialization, and new data or
    settings start a new run."""
    layout = run.layout
    model = read_pointer(layout)
    train_file, test_file = layout.raft_file("train"), layout.raft_file("test")
    settings = with_overrides(config, run.recipe, "fine_tune")
    settings["context_length"] = settings["context_length"] or model.context_length
    run = content_hash(json.dumps(settings, sort_keys=True), str(model.path), file_digest(train_file, test_file))[:12]
    return TrainParams(
        base_model=str(model.path),
        train_file=str(train_file.resolve()),
        test_file=str(test_file.resolve()) if test_file.stat().st_size else None,
        output_dir=str((layout.fsdp_folder / run).resolve()),
        **settings,
    )


@dg.asset(
    group_name="training",
    kinds={"pytorch", "torchrun"},
    partitions_def=recipes,
    deps=[raft_dataset, base_model],
    pool="gpu",
    op_tags=gpu_op_tags(SETTINGS.train_gpus),
)
def fsdp_checkpoint(
    context: dg.AssetExecutionContext, config: FineTuneConfig, paths: ProjectPaths, trainer: TrainerResource
) -> dg.MaterializeResult:
    """Fine-tune the base model on the recipe's raft_train.jsonl with FSDP2 under torchrun; sharded DCP
    checkpoints. A run that already trained all its steps (the same settings and data) is not launched again."""
    run = recipe_run(context, paths)
    params = train_params(config, run)
    run_dir = Path(params.output_dir)
    resuming = (run_dir / LATEST_FILE).is_file()
    if finished := finished_summary(run_dir):
        context.log.info(f"Run {run_dir.name} in {run_dir} trained all its steps before: not launched again")
        reported = finished_run_metadata(finished)
        processes = read_trainer_state(Path(finished["last_checkpoint"]))["world_size"]
    else:
        context.log.info(f"{'Resuming' if resuming else 'Starting'} run {run_dir.name} in {run_dir}")
        result = trainer.run(context, params.save(run_dir / PARAMS_FILE))
        reported = dict(result.metadata or {})
        processes = trainer.processes() * trainer.nnodes
    Layout.set_latest_run(run_dir)
    if curve := getattr(reported.get(LOSS_CURVE), "value", None):
        plot = plot_loss_curve(curve, run_dir / LOSS_PLOT)
        reported["loss_plot"] = dg.MetadataValue.md(inline_png(plot, "loss curve"))
    return dg.MaterializeResult(
        metadata={
            **reported,
            **file_link(run_dir),
            **recipe_metadata(run.recipe),
            "run": run_dir.name,
            "resumed": resuming,
            "launched": finished is None,
            "processes": processes,
        },
        data_version=dg.DataVersion(content_hash(run_dir.name, (run_dir / LATEST_FILE).read_text())),
    )


def finished_run_metadata(summary: dict[str, Any]) -> dict[str, Any]:
    """What the training of a finished run reported through Pipes, from its `summary.json`."""
    return {
        **{key: value for key, value in summary.items() if value is not None},
        **{key: dg.MetadataValue.path(summary[key]) for key in SUMMARY_PATHS},
        LOSS_CURVE: dg.MetadataValue.json(summary[LOSS_CURVE]),
    }


class ExportConfig(dg.Config):
    """How closely the export must reproduce the trained model: the blocking check `matches_training`."""

    # In fp32 the sharded forward of training and the single-process forward of the export differ at most in the
    # order of sums: 0 to 1e-6 nats on the tiny model. bf16 keeps 8 significant bits, so a logit near 20 is
    # rounded in steps of 0.125, and training (flash attention, sharded matmuls on GPUs) and the export (SDPA on a
    # CPU) round at different places: a token's log-probability can move by a few tenths. A weight in the wrong
    # place moves them by more the more the model has learnt (two layers swapped in the tiny model after 3 steps
    # of training: 0.58 nats already); in a fine-tuned 8B model it garbles the predictions.
    max_logprob_diff_fp32: float = Field(
        default=1e-3,
        gt=0,
        le=1.0,
        description="Largest per-token log-probability difference (nats) from training on the probe text, for a "
        "run that computed in float32.",
    )
    max_logprob_diff_bf16: float = Field(
        default=0.5,
        gt=0,
        le=5.0,
        description="The same for a run that computed in bfloat16, whose rounding differs between the GPU kernels "
        "of training and the export's.",
    )

    def tolerance(self, dtype: str) -> float:
        return self.max_logprob_diff_bf16 if dtype == "bfloat16" else self.max_logprob_diff_fp32


MATCHES_TRAINING = dg.AssetCheckSpec(
    "matches_training",
    asset="hf_checkpoint",
    blocking=True,
    description="The exported safetensors, loaded back in the training's compute dtype, give the per-token "
    "log-probabilities of a fixed probe text that the trained, sharded model recorded when it saved the checkpoint "
    "(probe.json), within `max_logprob_diff_fp32` or `max_logprob_diff_bf16`: a weight mapped to the wrong place "
    "fails it.",
)


def matches_training(export: "Export", config: ExportConfig, run_dir: Path) -> dg.AssetCheckResult:
    if export.max_logprob_diff_vs_training is None:
        return dg.AssetCheckResult(
            check_name=MATCHES_TRAINING.name,
            passed=False,
            description=f"{export.step_folder.name} of run {run_dir.name} has no probe record ({PROBE_FILE}): it was "
            "saved by a training script that did not record one, so the export cannot be compared with the trained "
            f"model. Train the run again to verify it: delete {run_dir} and materialize fsdp_checkpoint.",
        )
    diff = export.max_logprob_diff_vs_training
    tolerance = config.tolerance(export.compute_dtype)
    dtype = export.compute_dtype
    return dg.AssetCheckResult(
        check_name=MATCHES_TRAINING.name,
        passed=diff <= tolerance,
        metadata={"max_logprob_diff_vs_training": diff, "tolerance": tolerance, "compute_dtype": dtype},
        description=f"The probe text's per-token log-probabilities differ from the trained model's by at most "
        f"{diff:.3g} nats in {dtype}; the tolerance is {tolerance:g}.",
    )


@dg.asset(
    group_name="training",
    kinds={"pytorch", "safetensors"},
    partitions_def=recipes,
    deps=[fsdp_checkpoint],
    check_specs=[MATCHES_TRAINING],
)
def hf_checkpoint(context: dg.AssetExecutionContext, config: ExportConfig, paths: ProjectPaths) -> dg.MaterializeResult:
    """The fine-tuned model as a Hugging Face checkpoint (safetensors, config, tokenizer with chat template),
    checked against what the trained model computed; written once per checkpoint (`training.export`)."""
    layout = recipe_run(context, paths).layout
    run_dir = Layout.latest_run(layout.fsdp_folder)
    if run_dir is None:
        raise dg.Failure(f"No fine-tuning run of recipe {layout.recipe!r} yet: materialize its fsdp_checkpoint first.")
    run = run_dir.name
    target = layout.hf_folder / run
    from raft_assets.training.export import export_hf_checkpoint  # here: torch and transformers, seconds to import

    export = export_hf_checkpoint(run_dir, target)
    Layout.set_latest_run(target)
    check = matches_training(export, config, run_dir)
    done = "Saved" if export.written else f"Kept {export.step_folder.name}'s export, unchanged, in"
    context.log.info(f"{done} {target}. {check.description}")
    differences = {
        "max_logprob_diff_vs_training": export.max_logprob_diff_vs_training,
        "max_logprob_diff_vs_fp32": export.max_logprob_diff_vs_fp32,
    }
    return dg.MaterializeResult(
        metadata={
            **file_link(target),
            "run": run,
            "from_checkpoint": export.step_folder.name,
            "written": export.written,
            "dtype": export.dtype,
            "parameters": export.parameters,
            **{key: value for key, value in differences.items() if value is not None},
            "files": ", ".join(sorted(p.name for p in target.iterdir())),
        },
        data_version=dg.DataVersion(content_hash(run, export.step_folder.name)),
        check_results=[check],
    )
