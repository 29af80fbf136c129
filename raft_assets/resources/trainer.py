"""The `trainer` resource: runs the training script under torchrun, through Dagster Pipes.

The command is a list of arguments, never a shell string, so nothing in the configuration can inject a
command. Rank 0 of the script reports logs, per-step metrics and the final metadata back to the run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import dagster as dg
import torch
from pydantic import Field

TRAIN_MODULE = "raft_assets.training.train"


class TrainerResource(dg.ConfigurableResource):
    nproc_per_node: int | None = Field(
        default=None, gt=0, description="Processes per node; default: one per GPU, or 2 on a machine without GPUs."
    )
    nnodes: int = Field(default=1, gt=0)
    node_rank: int = Field(default=0, ge=0, description="This node's rank when nnodes > 1.")
    rdzv_endpoint: str | None = Field(default=None, description="host:port of the rendezvous, for nnodes > 1.")
    rdzv_id: str = "raft_assets"
    threads_per_process: int = Field(default=1, gt=0, description="OMP_NUM_THREADS of each process.")

    def processes(self) -> int:
        if self.nproc_per_node:
            return self.nproc_per_node
        return torch.cuda.device_count() if torch.cuda.is_available() else 2

    def command(self, params_file: Path) -> list[str]:
        launch = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={self.processes()}"]
        if self.nnodes == 1:
            launch.append("--standalone")
        else:
            if not self.rdzv_endpoint:
                raise dg.Failure("trainer: nnodes > 1 needs rdzv_endpoint (host:port of node 0).")
            launch += [
                f"--nnodes={self.nnodes}",
                f"--node_rank={self.node_rank}",
                "--rdzv_backend=c10d",
                f"--rdzv_endpoint={self.rdzv_endpoint}",
                f"--rdzv_id={self.rdzv_id}",
            ]
        return [*launch, "-m", TRAIN_MODULE, "--config", str(params_file)]

    def run(self, context: dg.AssetExecutionContext, params_file: Path) -> dg.MaterializeResult:
        """Train; the result carries the metadata that the script reported at the end."""
        invocation = dg.PipesSubprocessClient().run(
            command=self.command(params_file),
            context=context,
            env={"OMP_NUM_THREADS": str(self.threads_per_process)},
        )
        return invocation.get_materialize_result()
