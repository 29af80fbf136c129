"""Fine-tune a causal LM on RAFT records with FSDP2: one readable loop, in the style of torchtune's recipes.

    torchrun --nproc_per_node N -m raft_assets.training.train --config OUTPUT_DIR/train_params.yaml

Nothing in it is node-specific: with `--nnodes M --rdzv_backend c10d --rdzv_endpoint HOST:PORT` the same
script trains on M nodes (the output folder must then be on storage every node sees). On CUDA it uses NCCL
and bf16 mixed precision; on a CPU, gloo and fp32, which is how the tests run it.

The loop:
- every rank tokenizes and packs the data the same way (`data.py`) and takes its own disjoint slice;
- the model is built on the meta device on every rank, sharded with `fully_shard` (each decoder layer, then
  the root), materialized, and filled from the base checkpoint that rank 0 alone reads (broadcast with
  `set_model_state_dict(full_state_dict=True, broadcast_from_rank0=True)`);
- the loss is the mean cross-entropy over all label tokens of the optimizer step, across gradient accumulation
  and ranks (token-weighted: each micro-batch's summed loss is divided by the step's global label-token count,
  and multiplied by the world size because FSDP averages gradients over ranks);
- sharded checkpoints (model and optimizer, DCP) every `save_every_steps` and at the end, resumed
  exactly from `OUTPUT_DIR/latest` on restart; each holds the probe record, the per-token log-probabilities
  of a fixed text computed by the sharded model as trained, which its export must reproduce;
- rank 0 writes `metrics.jsonl`, and under Dagster Pipes streams each step and reports the materialization
  (`reporting.py`);
- under torchrun a worker dies with its launcher (Linux), so a killed run leaves no orphan training on
  (`distributed.py`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as transformers_logging

from raft_assets.files import write_text_atomically
from raft_assets.training.checkpoint import (
    METRICS_FILE,
    PARAMS_FILE,
    PROBE_TEXT,
    STATE_FILE,
    Probe,
    latest_checkpoint,
    read_trainer_state,
    step_folder_name,
    token_logprobs,
    write_latest,
)
from raft_assets.training.data import IGNORE_INDEX, RankShards, collate, model_inputs, pack, tokenize_file
from raft_assets.training.distributed import Dist, die_with_launcher, init_distributed
from raft_assets.training.params import TrainParams, lora_config
from raft_assets.training.reporting import Reporter, open_reporter

__all__ = ["TrainParams", "main", "train"]


# --- precision and attention ------------------------------------------------------------------------


def compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if precision == "bf16" else torch.float32


def attention_implementation(requested: str, device: torch.device) -> str:
    if requested != "auto":
        return requested
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


# --- the model -------------------------------------------------------------------------------------------


def build_model(params: TrainParams, env: Dist, dtype: torch.dtype, attn: str) -> torch.nn.Module:
    """The base model (LoRA-wrapped for method: lora), sharded with FSDP2 and loaded from the base checkpoint.

    Parameters stay float32 (the optimizer's master weights); with bf16 FSDP casts them for compute and
    reduces gradients in float32. Only rank 0 reads the checkpoint into memory (once, on the CPU).
    """
    config = AutoConfig.from_pretrained(params.base_model)
    config.use_cache = False
    full_state: dict[str, torch.Tensor] = {}
    if env.main:  # the reference weights: the checkpoint, plus the seeded LoRA initialization
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(params.seed)
            reference = _wrap(
                AutoModelForCausalLM.from_pretrained(
                    params.base_model, config=config, dtype=torch.float32, use_safetensors=True
                ),
                params,
            )
        full_state = reference.state_dict()
        del reference
    with torch.device("meta"):
        model = _wrap(AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=attn), params)
    if params.activation_checkpointing:
        enable_activation_checkpointing(_hf_model(model))
    rotary = _rotary_modules(model)

    mesh = init_device_mesh(env.device.type, (env.world_size,))
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for layer in _hf_model(model).model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    model.to_empty(device=env.device)
    for parent, name, module in rotary:  # non-persistent buffers are in no state dict: compute them again
        setattr(parent, name, type(module)(module.config).to(env.device))
    set_model_state_dict(
        model, full_state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=True)
    )
    del full_state
    return model


def _wrap(model: torch.nn.Module, params: TrainParams) -> torch.nn.Module:
    if params.method != "lora":
        return model
    from peft import get_peft_model

    with warnings.catch_warnings():  # peft reads transformers' deprecated `is_gradient_checkpointing`
        warnings.simplefilter("ignore", FutureWarning)
        return get_peft_model(model, lora_config(params))


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Transformers' own activation checkpointing of each decoder layer (non-reentrant, as FSDP2 needs): it wraps
    the layers' calls, so parameter names, and with them the checkpoint's keys, stay the same."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x names it so
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _hf_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _rotary_modules(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str, torch.nn.Module]]:
    """(parent, attribute, module) of the rotary embeddings; fails on any other non-persistent buffer, which
    materializing from the meta device would leave uninitialized."""
    found, unknown = [], []
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child).__name__.endswith("RotaryEmbedding") and hasattr(child, "config"):
                found.append((parent, name, child))
    rotary_ids = {id(module) for _, _, module in found}
    for module in model.modules():
        if module._non_persistent_buffers_set and id(module) not in rotary_ids:
            unknown.append(type(module).__name__)
    if unknown:
        raise NotImplementedError(f"cannot initialize the non-persistent buffers of {sorted(set(unknown))}")
    return found


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [parameter for parameter in model.parameters() if parameter.requires_grad]


def lr_lambda(params: TrainParams, total_steps: int, steps_per_epoch: int):
    """The learning-rate factor after `step` optimizer steps: linear warmup, then the schedule."""

    def factor(step: int) -> float:
        if step < params.warmup_steps:
            return (step + 1) / params.warmup_steps
        if params.schedule == "step":
            return params.step_gamma ** (step // steps_per_epoch)
        progress = min(1.0, (step - params.warmup_steps) / max(1, total_steps - params.warmup_steps))
        if params.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if params.schedule == "linear":
            return 1.0 - progress
        return 1.0

    return factor


# --- one step --------------------------------------------------------------------------------------------


def loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor], attn: str, dtype: torch.dtype) -> torch.Tensor:
    """Summed cross-entropy of a micro-batch over its label tokens (labels shifted by one inside each row)."""
    inputs = model_inputs(batch, attn, dtype)
    if attn.startswith("flash_attention") and batch["input_ids"].shape[0] > 1:
        # flash attention finds packed samples from position_ids only in a single row: flatten the blocks
        inputs = {key: value.reshape(1, -1) for key, value in inputs.items()}
    logits = model(**inputs, use_cache=False).logits
    labels = batch["labels"]
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )


def every(interval: int | None, step: int) -> bool:
    return bool(interval) and step % interval == 0


def label_tokens(batch: dict[str, torch.Tensor]) -> int:
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def train_step(model, optimizer, scheduler, micro_batches, env: Dist, attn, dtype, pad_id, grad_clip) -> dict[str, Any]:
    """One optimizer step over this rank's micro-batches: the loss is the mean cross-entropy over every label
    token of the step, on all ranks together (so a rank or micro-batch with more answer tokens weighs more)."""
    batches = [collate(blocks, pad_id) for blocks in micro_batches]
    local_tokens = sum(len(block) for blocks in micro_batches for block in blocks)
    local_computed = sum(batch["input_ids"].numel() for batch in batches)  # with the padding
    global_labels, global_tokens, global_computed = env.all_sum(
        [sum(label_tokens(batch) for batch in batches), local_tokens, local_computed]
    )
    step_loss = torch.zeros((), dtype=torch.float64, device=env.device)
    for batch in batches:  # gradients are reduce-scattered after each micro-batch, so they stay sharded
        loss = loss_sum(model, to_device(batch, env.device), attn, dtype)
        # FSDP averages gradients over ranks: times world_size, over the step's label tokens on all ranks
        (loss * env.world_size / max(global_labels, 1)).backward()
        step_loss += loss.detach()
    grad_norm = None
    if grad_clip is not None:
        norm = torch.nn.utils.clip_grad_norm_(trainable_parameters(model), grad_clip)
        grad_norm = float(norm.full_tensor() if isinstance(norm, DTensor) else norm)
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    (total_loss,) = env.all_sum([float(step_loss)])
    return {
        "loss": total_loss / max(global_labels, 1),
        "lr": lr,
        "tokens": int(global_tokens),
        "computed_tokens": int(global_computed),
        "label_tokens": int(global_labels),
        "grad_norm": grad_norm,
    }


@torch.no_grad()
def evaluate(model, shards: RankShards, env: Dist, attn: str, dtype: torch.dtype, pad_id: int, limit: int | None):
    """Validation loss: mean cross-entropy over every label token of the test blocks, across ranks."""
    model.eval()
    total, tokens = 0.0, 0
    for i, blocks in enumerate(shards.epoch(0)):
        if limit is not None and i >= limit:
            break
        batch = to_device(collate(blocks, pad_id), env.device)
        total += float(loss_sum(model, batch, attn, dtype))
        tokens += label_tokens(batch)
    model.train()
    total, tokens = env.all_sum([total, tokens])
    return total / tokens if tokens else None


# --- checkpoints -----------------------------------------------------------------------------------------


def record_probe(model: torch.nn.Module, input_ids: list[int], env: Dist, dtype: torch.dtype) -> Probe:
    """The probe text's per-token log-probabilities on the model as trained. Every rank runs the forward (each
    holds a shard of every layer); the result is the same on all."""
    model.eval()
    logprobs = token_logprobs(model, input_ids, env.device)
    model.train()
    return Probe(PROBE_TEXT, input_ids, logprobs.tolist(), dtype=str(dtype).removeprefix("torch."))


def state_options(params: TrainParams) -> StateDictOptions:
    # LoRA: only the adapter weights (and their optimizer state) are saved; the base stays the base checkpoint.
    return StateDictOptions(ignore_frozen_params=params.method == "lora")


def save_checkpoint(
    output_dir: Path, step: int, model, optimizer, trainer_state: dict[str, Any], probe: Probe, env: Dist, params
):
    """DCP shards of model and optimizer, the trainer state and the probe record into a hidden folder, renamed
    into place, then `latest` names it."""
    name = step_folder_name(step)
    partial, final = output_dir / f".{name}.partial", output_dir / name
    if env.main:
        shutil.rmtree(partial, ignore_errors=True)
    dist.barrier()
    model_state, optim_state = get_state_dict(model, optimizer, options=state_options(params))
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(partial))
    dist.barrier()  # every shard is written
    if env.main:
        write_text_atomically(partial / STATE_FILE, json.dumps(trainer_state, indent=2) + "\n")
        probe.save(partial)
        shutil.rmtree(final, ignore_errors=True)  # a complete folder a killed run saved but never pointed at
        partial.rename(final)
        write_latest(output_dir, name)
    dist.barrier()
    return final


def load_checkpoint(folder: Path, model, optimizer, params: TrainParams) -> dict[str, Any]:
    options = state_options(params)
    model_state, optim_state = get_state_dict(model, optimizer, options=options)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"], options=options)
    return read_trainer_state(folder)


# --- the recipe ------------------------------------------------------------------------------------------


def train(params: TrainParams) -> dict[str, Any]:
    transformers_logging.disable_progress_bar()
    env = init_distributed(params.backend)
    try:
        with contextlib.ExitStack() as stack:
            output_dir = Path(params.output_dir)
            if env.main:
                output_dir.mkdir(parents=True, exist_ok=True)
                params.save(output_dir / PARAMS_FILE)
            dist.barrier()
            reporter = open_reporter(stack, params, env, output_dir)
            return _train(params, env, reporter, output_dir)
    finally:
        dist.destroy_process_group()


def _train(params: TrainParams, env: Dist, reporter: Reporter, output_dir: Path) -> dict[str, Any]:
    torch.manual_seed(params.seed)
    dtype = compute_dtype(params.precision, env.device)
    attn = attention_implementation(params.attn_implementation, env.device)

    # Data: every rank tokenizes and packs the same way, then takes its own slice.
    tokenizer = AutoTokenizer.from_pretrained(params.base_model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    probe_ids = tokenizer(PROBE_TEXT)["input_ids"]
    train_packing = pack(tokenize_file(tokenizer, Path(params.train_file)), params.context_length)
    if not train_packing.blocks:
        raise ValueError(f"no training sample of {params.train_file} fits in {params.context_length} tokens")
    shards = RankShards(
        train_packing.blocks,
        rank=env.rank,
        world_size=env.world_size,
        batch_size=params.batch_size,
        seed=params.seed,
    )
    eval_shards = None
    if params.test_file:
        test_packing = pack(tokenize_file(tokenizer, Path(params.test_file)), params.context_length)
        eval_shards = RankShards(
            test_packing.blocks,
            rank=env.rank,
            world_size=env.world_size,
            batch_size=params.batch_size,
            shuffle=False,
        )
    steps_per_epoch = math.ceil(len(shards) / params.gradient_accumulation)
    total_steps = params.epochs * steps_per_epoch
    if params.max_steps is not None:
        total_steps = min(total_steps, params.max_steps)
    reporter.facts = {
        "context_fill": round(train_packing.efficiency, 4),
        "train_samples": train_packing.samples,
        "dropped_samples": train_packing.dropped,
        "train_blocks": len(train_packing.blocks),
    }
    reporter.log(
        f"world {env.world_size} ({env.backend}, {env.device.type}), {str(dtype).removeprefix('torch.')} compute, "
        f"{attn} attention, {params.method} fine-tune; train {json.dumps(train_packing.summary())}; "
        f"{steps_per_epoch} steps per epoch, {total_steps} steps"
    )

    model = build_model(params, env, dtype, attn)
    model.train()
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=params.lr, weight_decay=params.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(params, total_steps, steps_per_epoch))
    reporter.log(
        f"{sum(p.numel() for p in trainable_parameters(model)):,} trainable of "
        f"{sum(p.numel() for p in model.parameters()):,} parameters"
    )

    step, epoch, skip = 0, 0, 0
    resume = latest_checkpoint(output_dir)
    if resume is not None:
        state = load_checkpoint(resume, model, optimizer, params)
        step, epoch, skip = state["step"], state["epoch"], state["step_in_epoch"]
        scheduler.load_state_dict(state["scheduler"])
        if state["world_size"] != env.world_size:
            reporter.log(f"warning: {resume.name} was saved by {state['world_size']} ranks: the data order changes")
        if state["total_steps"] != total_steps:
            reporter.log(
                f"warning: {resume.name} was saved by a run of {state['total_steps']} steps, not {total_steps}"
            )
        reporter.keep_metrics_until(step)
        reporter.log(f"resumed from {resume.name}: step {step}, epoch {epoch}, {skip} steps into it")
    elif reporter.main:
        (output_dir / METRICS_FILE).unlink(missing_ok=True)

    last_saved = resume if resume is not None and step >= total_steps else None
    while step < total_steps and epoch < params.epochs:
        micro_batches = shards.epoch(epoch)
        steps = [
            micro_batches[i : i + params.gradient_accumulation]
            for i in range(0, len(micro_batches), params.gradient_accumulation)
        ]
        for index in range(skip, len(steps)):
            if step >= total_steps:
                break
            started = time.perf_counter()
            torch.manual_seed(params.seed * 1_000_003 + step * env.world_size + env.rank)  # dropout, reproducibly
            record = train_step(model, optimizer, scheduler, steps[index], env, attn, dtype, pad_id, params.grad_clip)
            step += 1
            record = {
                "step": step,
                "epoch": round(epoch + (index + 1) / len(steps), 4),
                **record,
                "tokens_per_s": round(record["tokens"] / (time.perf_counter() - started), 1),
            }
            done = step >= total_steps
            if eval_shards is not None and (done or every(params.eval_every_steps, step)):
                val_loss = evaluate(model, eval_shards, env, attn, dtype, pad_id, params.eval_max_batches)
                if val_loss is not None:
                    record["val_loss"] = val_loss
            reporter.step(record)
            if done or every(params.save_every_steps, step):
                position = (epoch, index + 1) if index + 1 < len(steps) else (epoch + 1, 0)
                trainer_state = {
                    "step": step,
                    "epoch": position[0],
                    "step_in_epoch": position[1],
                    "total_steps": total_steps,
                    "world_size": env.world_size,
                    "scheduler": scheduler.state_dict(),
                }
                probe = record_probe(model, probe_ids, env, dtype)
                last_saved = save_checkpoint(output_dir, step, model, optimizer, trainer_state, probe, env, params)
                reporter.log(f"saved {last_saved.name}")
        epoch, skip = epoch + 1, 0
    if last_saved is None:  # nothing left to train (a finished run started again)
        last_saved = latest_checkpoint(output_dir)
    return reporter.finish(last_saved)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help=f"the run's {PARAMS_FILE}")
    args = parser.parse_args(argv)
    die_with_launcher()
    train(TrainParams.load(args.config))


if __name__ == "__main__":
    sys.exit(main())
