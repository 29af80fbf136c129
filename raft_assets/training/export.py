"""From a sharded FSDP checkpoint to a Hugging Face checkpoint that transformers and vLLM load.

The shards are loaded into the base architecture in one process (LoRA weights merged into it), saved as
safetensors in the training dtype with the config, tokenizer (and its chat template) and generation
config, then loaded back to check that the saved model computes what the trained one does.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from raft_assets.files import replace_dir, staging_dir
from raft_assets.training.checkpoint import TrainParams, latest_checkpoint, load_into_model, load_params, lora_config

VERIFY_TEXT = "What is the context length of Llama 3? Answer with a quote from the documents."


@dataclass(frozen=True)
class Export:
    path: Path
    step_folder: Path
    dtype: torch.dtype
    parameters: int
    max_logit_diff: float  # saved-and-reloaded vs the trained model in the same dtype (0 when lossless)
    max_logit_diff_vs_fp32: float  # what saving in the training dtype changes


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


def export_hf_checkpoint(run_dir: Path, target: Path) -> Export:
    params = load_params(run_dir)
    step_folder = latest_checkpoint(run_dir)
    if step_folder is None:
        raise FileNotFoundError(f"{run_dir} has no complete checkpoint: materialize fsdp_checkpoint first.")
    tokenizer = AutoTokenizer.from_pretrained(params.base_model)
    model = trained_model(params, step_folder).eval()
    batch = tokenizer(VERIFY_TEXT, return_tensors="pt")
    dtype = training_dtype(params)
    with torch.no_grad():
        fp32_logits = model(**batch).logits.float()
        model.to(dtype)
        trained_logits = model(**batch).logits.float()

    staging = staging_dir(target, "exporting")
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    reloaded = AutoModelForCausalLM.from_pretrained(target, dtype=dtype, use_safetensors=True).eval()
    with torch.no_grad():
        reloaded_logits = reloaded(**batch).logits.float()
    return Export(
        path=target,
        step_folder=step_folder,
        dtype=dtype,
        parameters=sum(p.numel() for p in reloaded.parameters()),
        max_logit_diff=float((reloaded_logits - trained_logits).abs().max()),
        max_logit_diff_vs_fp32=float((reloaded_logits - fp32_logits).abs().max()),
    )
