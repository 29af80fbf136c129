"""A fine-tuning run's settings, declared once.

`Hyperparameters` holds every setting with its default, bounds and description; `TrainParams` adds the run's
files and is what the training script reads from `train_params.yaml`. The `fsdp_checkpoint` asset's launchpad
config is built from `Hyperparameters` (defs/training/config.py), so the two can never drift apart. Plain
dataclasses, not pydantic: the training script runs on GPU machines that have torch and transformers only.

"The reference" in the descriptions is the llama-recipes RAFT fine-tune of Llama 3 8B (a full fine-tune on 4
GPUs with FSDP): each says where the default follows it and where it differs. Two differences have no setting:
samples are packed whole, with attention inside each sample (the reference concatenates them and cuts the stream
into blocks, so a sample can span two blocks and attend to another), and `grad_clip` clips where it does not.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from raft_assets.fields import setting, validate_all
from raft_assets.files import write_text_atomically

SCHEDULES = ("cosine", "linear", "constant", "step")
PRECISIONS = ("auto", "bf16", "fp32")
METHODS = ("full", "lora")
BACKENDS = ("auto", "nccl", "gloo")


@dataclass(kw_only=True)
class Hyperparameters:
    """How to fine-tune: what the launchpad offers for `fsdp_checkpoint`."""

    method: str = setting(
        "full",
        "`full` (default), as the reference, whose authors found LoRA gave poor results; or `lora` (peft).",
        choices=METHODS,
    )
    epochs: int = setting(1, "1, as the reference.", gt=0)
    lr: float = setting(1e-5, "1e-5, as the reference (peak rate, reached after warmup).", gt=0)
    batch_size: int = setting(1, "Packed blocks per process per micro-batch: 1, as the reference.", gt=0)
    gradient_accumulation: int = setting(1, "Micro-batches per optimizer step: 1, as the reference.", gt=0)
    context_length: int | None = setting(
        None,
        "Tokens per packed block. Default: the base model's context, at most 8192 (for Llama 3 8B 8192, as the "
        "reference).",
        gt=0,
    )
    warmup_steps: int = setting(0, "Linear warmup steps: none by default, as the reference.", ge=0)
    schedule: str = setting(
        "cosine",
        "`cosine` (default; decays to 0 at the last step). The reference uses `step` (StepLR: the rate times "
        "`step_gamma` after each epoch), which over its one epoch is a constant rate.",
        choices=SCHEDULES,
    )
    step_gamma: float = setting(0.85, "The `step` schedule's factor per epoch: 0.85, as the reference.", gt=0, le=1)
    weight_decay: float = setting(0.0, "AdamW weight decay: 0, as the reference.", ge=0)
    grad_clip: float | None = setting(
        1.0, "Gradient norm clipped to this (None: no clipping). The reference does not clip.", gt=0
    )
    seed: int = setting(42, "Seeds the data order, LoRA initialization and dropout: 42, as the reference.")
    precision: str = setting(
        "auto",
        "`auto`: bf16 mixed precision on GPUs (fp32 master weights and gradient reduction), as the reference's "
        "FSDP mixed precision; fp32 on CPUs.",
        choices=PRECISIONS,
    )
    activation_checkpointing: bool = setting(
        False,
        "Off by default; the reference turns it on. It recomputes each decoder layer's activations in the backward "
        "pass: about a third more compute for much less activation memory.",
    )
    attn_implementation: str = setting(
        "auto",
        "`auto`: flash_attention_2 when installed on CUDA, else sdpa; or a transformers attention implementation "
        "(sdpa, eager, flex_attention).",
    )
    lora_r: int = setting(8, "LoRA rank: 8, as the reference's peft config.", gt=0)
    lora_alpha: int = setting(
        16,
        "LoRA scaling numerator: 16; the reference's peft config has 32 (and adapts q_proj and v_proj only).",
        gt=0,
    )
    lora_dropout: float = setting(0.05, "Dropout on the LoRA path: 0.05, as the reference.", ge=0, le=1)
    lora_targets: list[str] = setting(
        description="The projections LoRA adapts: q, k, v and o.",
        factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
    )
    backend: str = setting("auto", "`auto`: NCCL on CUDA, else gloo.", choices=BACKENDS)
    max_steps: int | None = setting(None, "Stop early (smoke runs); the reference runs every step.", gt=0)
    save_every_steps: int | None = setting(
        50,
        "Checkpoint cadence, besides the checkpoint at the end: a killed run resumes there, and the export takes "
        "the last one. The reference saves only at the end of an epoch, and only when the validation loss improved.",
        gt=0,
    )
    eval_every_steps: int | None = setting(
        None,
        "Validation loss on the test records every so many steps, besides the one at the end. The reference "
        "validates at the end of each epoch.",
        gt=0,
    )
    eval_max_batches: int | None = setting(None, "Most validation micro-batches per process (None: all).", gt=0)
    use_wandb: bool = setting(
        False,
        "Log to Weights & Biases when `wandb` is installed; off by default (the reference's command turns it on).",
    )

    def __post_init__(self) -> None:
        validate_all(self)


@dataclass(kw_only=True)
class TrainParams(Hyperparameters):
    """Everything a fine-tuning run depends on: its hyper-parameters and its files (`context_length` resolved)."""

    base_model: str
    train_file: str
    output_dir: str
    test_file: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.context_length is None:
            raise ValueError("context_length must be set for a run (the asset resolves it from the base model)")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainParams:
        known = {spec.name for spec in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training parameters: {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def load(cls, path: Path) -> TrainParams:
        return cls.from_dict(yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> Path:
        write_text_atomically(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False))
        return Path(path)


def lora_config(params: Hyperparameters):
    """The PEFT LoRA configuration of a run (the conversion wraps the base model with the same one)."""
    from peft import LoraConfig

    return LoraConfig(
        r=params.lora_r,
        lora_alpha=params.lora_alpha,
        lora_dropout=params.lora_dropout,
        target_modules=list(params.lora_targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
