"""What a training run tells the world: the log, `metrics.jsonl`, Dagster Pipes, Weights & Biases.

Only one process reports (rank 0, or the first that has Dagster Pipes when a multi-node run was launched from
another node); the others stay silent. The training loop calls `step` once per optimizer step and `finish` at the
end, which also reports the materialization's metadata through Pipes.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from raft_assets.files import write_text_atomically
from raft_assets.training.checkpoint import LOSS_CURVE, METRICS_FILE, SUMMARY_PATHS, read_metrics, write_summary
from raft_assets.training.distributed import Dist
from raft_assets.training.params import TrainParams


@dataclass
class Reporter:
    """Rank 0's outputs: the log, `metrics.jsonl`, Dagster Pipes and Weights & Biases (the others stay silent)."""

    output_dir: Path
    main: bool
    pipes: Any = None
    wandb: Any = None
    facts: dict[str, Any] = field(default_factory=dict)

    def log(self, message: str) -> None:
        if not self.main:
            return
        print(message, flush=True)
        if self.pipes is not None:
            self.pipes.log.info(message)

    def step(self, record: dict[str, Any]) -> None:
        if not self.main:
            return
        line = json.dumps(record)
        with (self.output_dir / METRICS_FILE).open("a", encoding="utf-8") as metrics:
            metrics.write(line + "\n")
        self.log(line)
        if self.wandb is not None:
            self.wandb.log({key: value for key, value in record.items() if key != "step"}, step=record["step"])

    def keep_metrics_until(self, step: int) -> None:
        """On resume: forget the lines of steps after the checkpoint (they are trained again)."""
        if not self.main:
            return
        kept = [record for record in read_metrics(self.output_dir) if record["step"] <= step]
        write_text_atomically(self.output_dir / METRICS_FILE, "".join(json.dumps(record) + "\n" for record in kept))

    def finish(self, last_checkpoint: Path) -> dict[str, Any]:
        """The run's summary: logged, written to `summary.json`, reported through Pipes and to W&B."""
        if not self.main:
            return {}
        records = read_metrics(self.output_dir)
        losses = [record for record in records if "loss" in record]
        val_losses = [record["val_loss"] for record in records if record.get("val_loss") is not None]
        speeds = [record["tokens_per_s"] for record in records if record.get("tokens_per_s")]
        summary = {
            "steps": records[-1]["step"] if records else 0,
            "final_train_loss": losses[-1]["loss"] if losses else None,
            "final_val_loss": val_losses[-1] if val_losses else None,
            "best_val_loss": min(val_losses) if val_losses else None,
            "tokens_per_s": round(sum(speeds) / len(speeds), 1) if speeds else None,
            "train_tokens": sum(record.get("tokens", 0) for record in records),
            # the share of the tokens the model computed that were sample tokens, not padding
            "packing_efficiency": round(
                sum(r.get("tokens", 0) for r in records) / max(sum(r.get("computed_tokens", 0) for r in records), 1), 4
            ),
            **self.facts,
            "output_dir": str(self.output_dir.resolve()),
            "last_checkpoint": str(last_checkpoint.resolve()),
        }
        self.log("done: " + json.dumps(summary))
        curve = [{"step": r["step"], "loss": r["loss"], "val_loss": r.get("val_loss")} for r in records]
        write_summary(self.output_dir, {**summary, LOSS_CURVE: curve})
        if self.pipes is not None:
            metadata: dict[str, Any] = {key: value for key, value in summary.items() if value is not None}
            for key in SUMMARY_PATHS:
                metadata[key] = {"raw_value": summary[key], "type": "path"}
            metadata[LOSS_CURVE] = {"raw_value": curve, "type": "json"}
            self.pipes.report_asset_materialization(metadata=metadata)
        if self.wandb is not None:
            self.wandb.summary.update({key: value for key, value in summary.items() if value is not None})
        return summary


def reporting_rank(env: Dist) -> int:
    """The rank that logs and reports: rank 0, unless Dagster Pipes was set up on another node only (with a c10d
    rendezvous, global ranks need not follow --node_rank): then the first local rank 0 that has Pipes."""
    has_pipes = bool(os.environ.get("DAGSTER_PIPES_CONTEXT")) and env.local_rank == 0
    candidate = torch.tensor([env.rank if has_pipes else env.world_size], device=env.device)
    dist.all_reduce(candidate, op=dist.ReduceOp.MIN)
    return int(candidate) if int(candidate) < env.world_size else 0


def open_reporter(stack: contextlib.ExitStack, params: TrainParams, env: Dist, output_dir: Path) -> Reporter:
    reporter = Reporter(output_dir=output_dir, main=env.rank == reporting_rank(env))
    if not reporter.main:
        return reporter
    if os.environ.get("DAGSTER_PIPES_CONTEXT"):
        from dagster_pipes import open_dagster_pipes

        reporter.pipes = stack.enter_context(open_dagster_pipes())
    if params.use_wandb and importlib.util.find_spec("wandb") is not None:
        import wandb

        reporter.wandb = wandb
        wandb.init(project=os.environ.get("WANDB_PROJECT", "raft"), config=params.to_dict(), dir=str(output_dir))
        stack.callback(wandb.finish)
    return reporter
