"""From a sharded FSDP checkpoint to a Hugging Face checkpoint that transformers and vLLM load, verified against
the model that was trained.

The shards are loaded into the base architecture in one process (LoRA weights merged into it) and saved as
safetensors in the training dtype with the config, tokenizer (and its chat template) and generation config.
Then the saved files are loaded back, and their per-token log-probabilities of the probe text are compared with
the ones the training script recorded from the sharded model when it saved the checkpoint (`probe.json`): any
weight that went to the wrong place between the shards and the files shows there. (Comparing the export with
a reloaded copy of itself could not show it: both come from the same mapping.)

An export is written once per checkpoint: its folder holds a record (`export.json`) of the checkpoint it came
from and of its own files, and while neither changed, the next materialization loads and compares the files
without writing them again (for an 8B model, minutes of work and 16 GB saved; and the evaluation's cached answers
of the fine-tuned model, keyed by the files, stay valid).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from raft_assets.files import replace_dir, staging_dir
from raft_assets.hashing import tree_fingerprint
from raft_assets.training.checkpoint import (
    PROBE_TEXT,
    Probe,
    latest_checkpoint,
    load_into_model,
    load_params,
    token_logprobs,
)
from raft_assets.training.params import TrainParams, lora_config

EXPORT_RECORD = "export.json"


@dataclass(frozen=True)
class ExportRecord:
    """What an export folder was written from, saved in it with the files."""

    checkpoint: str  # `tree_fingerprint` of the step folder exported
    files: str  # `tree_fingerprint` of the folder's other files, as saved
    fp32_token_logprobs: list[float]  # of the probe text, by the trained weights in float32 before saving

    @classmethod
    def load(cls, folder: Path) -> ExportRecord | None:
        """The folder's record; None without one, or with one that is not a record (the export is written again)."""
        try:
            return cls(**json.loads((folder / EXPORT_RECORD).read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None

    def describes(self, folder: Path, checkpoint: str) -> bool:
        """Whether `folder` is still the export of the checkpoint with this fingerprint, its files as saved."""
        return self.checkpoint == checkpoint and self.files == tree_fingerprint(folder, leaving_out=EXPORT_RECORD)


@dataclass(frozen=True)
class Export:
    path: Path
    step_folder: Path
    written: bool  # False: the folder already held this checkpoint's export, unchanged, and was only compared
    dtype: str  # of the saved weights: bfloat16, float32
    compute_dtype: str  # of the comparison: the dtype the training computed the probe in
    parameters: int
    # the exported files vs the trained, sharded model on the probe text; None when the checkpoint has no probe
    # record (saved by a training script older than the record)
    max_logprob_diff_vs_training: float | None
    # the exported files in `compute_dtype` vs the trained weights in float32: the rounding of that dtype alone,
    # the yardstick for the difference from training
    max_logprob_diff_vs_fp32: float


def training_dtype(params: TrainParams) -> torch.dtype:
    """bf16 when the run trained in bf16 (explicitly, or `auto` for a bf16 model), else fp32."""
    if params.precision == "bf16":
        return torch.bfloat16
    if params.precision == "fp32":
        return torch.float32
    config_dtype = getattr(AutoConfig.from_pretrained(params.base_model), "dtype", None)
    return torch.bfloat16 if config_dtype in (torch.bfloat16, "bfloat16") else torch.float32


def trained_model(params: TrainParams, step_folder: Path) -> torch.nn.Module:
    """The base architecture with the checkpoint's weights, LoRA merged, in fp32."""
    model = AutoModelForCausalLM.from_pretrained(params.base_model, dtype=torch.float32, use_safetensors=True)
    if params.method == "lora":
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(params))
        load_into_model(model, step_folder)
        return model.merge_and_unload()
    load_into_model(model, step_folder)
    return model


def save(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, target: Path, checkpoint: str, fp32: torch.Tensor
) -> None:
    """The model, tokenizer and the export's record into a folder beside `target`, renamed into place."""
    staging = staging_dir(target, "exporting")
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        record = ExportRecord(checkpoint, tree_fingerprint(staging, leaving_out=EXPORT_RECORD), fp32.tolist())
        (staging / EXPORT_RECORD).write_text(json.dumps(asdict(record)) + "\n", encoding="utf-8")
        replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def export_hf_checkpoint(run_dir: Path, target: Path) -> Export:
    """`run_dir`'s latest checkpoint exported to `target` (unless `target` already holds it, unchanged) and
    compared with the trained model."""
    params = load_params(run_dir)
    step_folder = latest_checkpoint(run_dir)
    if step_folder is None:
        raise FileNotFoundError(f"{run_dir} has no complete checkpoint: materialize fsdp_checkpoint first.")
    tokenizer = AutoTokenizer.from_pretrained(params.base_model)
    probe = Probe.load(step_folder)
    dtype = training_dtype(params)
    compute_dtype = getattr(torch, probe.dtype) if probe else dtype
    input_ids = probe.input_ids if probe else tokenizer(PROBE_TEXT)["input_ids"]

    checkpoint = tree_fingerprint(step_folder)
    record = ExportRecord.load(target)
    written = record is None or not record.describes(target, checkpoint)
    if written:
        model = trained_model(params, step_folder).eval()
        fp32_logprobs = token_logprobs(model, input_ids)
        save(model.to(dtype), tokenizer, target, checkpoint, fp32_logprobs)
        del model
    else:
        fp32_logprobs = torch.tensor(record.fp32_token_logprobs)

    exported = AutoModelForCausalLM.from_pretrained(target, dtype=compute_dtype, use_safetensors=True).eval()
    logprobs = token_logprobs(exported, input_ids)
    return Export(
        path=target,
        step_folder=step_folder,
        written=written,
        dtype=dtype_name(dtype),
        compute_dtype=dtype_name(compute_dtype),
        parameters=sum(p.numel() for p in exported.parameters()),
        max_logprob_diff_vs_training=max_abs_diff(logprobs, torch.tensor(probe.token_logprobs)) if probe else None,
        max_logprob_diff_vs_fp32=max_abs_diff(logprobs, fp32_logprobs),
    )
