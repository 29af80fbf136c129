"""Training throughput and model FLOPs utilisation (MFU) of an 8B-shaped Llama on one GPU.

Prepared for a lent GPU (none was lent while it was written; `--smoke` runs a tiny shape on the CPU to check
the script itself). It trains the way `raft_assets.training.train` does — FSDP2 `fully_shard` per decoder
layer and at the root, bf16 compute with fp32 master weights and gradient reduction, AdamW, activation
checkpointing, packed 8,192-token blocks — on random tokens, so it needs no checkpoint or data:

    .venv/bin/python benchmarks/bench_train_gpu.py --layers 16 [--record]

Llama 3 8B has 32 decoder layers; a full fine-tune of all 32 with fp32 AdamW state needs about 130 GB before
activations, more than one H200 holds, so the default keeps the 8B layer shape (4096 hidden, 14,336 MLP,
32 heads, 8 key/value heads, 128,256 vocabulary) with 16 layers: the per-layer work, and so MFU, is the same.
MFU = (6 x parameters + 12 x layers x hidden x context) x tokens/s / peak bf16 FLOP/s (989 TFLOP/s dense on
an H100/H200 SXM; pass --peak-tflops for another GPU).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from results import publish  # noqa: E402  (benchmarks/ is on sys.path when a script runs)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from transformers import LlamaConfig, LlamaForCausalLM

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADING = "## Training throughput on one GPU (8B-shaped Llama)"


def llama_config(layers: int, context: int, smoke: bool) -> LlamaConfig:
    if smoke:
        return LlamaConfig(
            hidden_size=64, intermediate_size=172, num_attention_heads=4, num_key_value_heads=2,
            num_hidden_layers=layers, vocab_size=512, max_position_embeddings=context, use_cache=False,
        )  # fmt: skip
    return LlamaConfig(
        hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
        num_hidden_layers=layers, vocab_size=128256, max_position_embeddings=context, rope_theta=500000.0,
        use_cache=False,
    )  # fmt: skip


def sharded_model(
    config: LlamaConfig, device: torch.device, dtype: torch.dtype, checkpointing: bool
) -> LlamaForCausalLM:
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    model.to_empty(device=device)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.02)
    model.model.rotary_emb = type(model.model.rotary_emb)(config).to(device)
    return model


def train_step(model: LlamaForCausalLM, optimizer: torch.optim.Optimizer, tokens: torch.Tensor) -> float:
    logits = model(input_ids=tokens[:, :-1]).logits
    loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def measure(args: argparse.Namespace) -> dict[str, float]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = llama_config(args.layers, args.context, args.smoke)
    model = sharded_model(config, device, dtype, args.activation_checkpointing)
    parameters = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    tokens = torch.randint(0, config.vocab_size, (1, args.context + 1), device=device)
    for _ in range(args.warmup):
        train_step(model, optimizer, tokens)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(args.steps):
        train_step(model, optimizer, tokens)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / args.steps
    tokens_per_s = args.context / seconds
    flops_per_token = 6 * parameters + 12 * config.num_hidden_layers * config.hidden_size * args.context
    return {
        "parameters_billion": parameters / 1e9,
        "seconds_per_step": seconds,
        "tokens_per_s": tokens_per_s,
        "mfu": flops_per_token * tokens_per_s / (args.peak_tflops * 1e12),
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan"),
    }


def report(args: argparse.Namespace, numbers: dict[str, float]) -> str:
    gpu = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU ({platform.processor() or platform.machine()})"
    )
    return "\n".join(
        [
            HEADING,
            "",
            f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; device: {gpu}; torch {torch.__version__}",
            f"- Command: `.venv/bin/python benchmarks/bench_train_gpu.py --layers {args.layers} --context {args.context}"
            f"{' --smoke' if args.smoke else ''}`; activation checkpointing {'on' if args.activation_checkpointing else 'off'}",
            "",
            "| parameters | context | s/step | tokens/s | MFU | peak memory |",
            "|---:|---:|---:|---:|---:|---:|",
            f"| {numbers['parameters_billion']:.2f} B | {args.context} | {numbers['seconds_per_step']:.3f} | "
            f"{numbers['tokens_per_s']:,.0f} | {numbers['mfu']:.1%} | {numbers['peak_memory_gb']:.1f} GB |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--context", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--no-activation-checkpointing", dest="activation_checkpointing", action="store_false")
    parser.add_argument("--smoke", action="store_true", help="a tiny shape on the CPU: checks the script only")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", rank=0, world_size=1)
    try:
        text = report(args, measure(args))
    finally:
        dist.destroy_process_group()
    publish(text, args.record, "smoke run" if args.smoke else None)


if __name__ == "__main__":
    main()
