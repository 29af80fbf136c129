"""The `trainer` resource: runs the training script under torchrun, through Dagster Pipes.

The command is a list of arguments, never a shell string, so nothing in the configuration can inject a
command. Rank 0 of the script reports logs, per-step metrics and the final metadata back to the run.

On several nodes this process is node 0 and the other nodes run the same torchrun command on their own
(deploy/k8s/train-workers.yaml on Kubernetes): they meet at the c10d rendezvous and read the run's parameters
from `shared_params_file`, which node 0 writes before it starts.
"""

from __future__ import annotations

import sys
from pathlib import Path

import dagster as dg
from pydantic import Field

from raft_assets.files import write_text_atomically

TRAIN_MODULE = "raft_assets.training.train"


class TrainerResource(dg.ConfigurableResource):
    nproc_per_node: int | None = Field(
        default=None, gt=0, description="Processes per node; default: one per GPU, or 2 on a machine without GPUs."
    )
    nnodes: int = Field(default=1, gt=0)
    node_rank: int = Field(default=0, ge=0, description="This node's rank when nnodes > 1.")
    rdzv_endpoint: str | None = Field(default=None, description="host:port of the rendezvous, for nnodes > 1.")
    rdzv_id: str = Field(default="raft_assets", description="The rendezvous' name: the same on every node.")
    local_addr: str | None = Field(
        default=None,
        description="For nnodes > 1: the address other nodes reach this one at (torchrun --local_addr), e.g. the "
        "pod IP on Kubernetes; default: torchrun's, this host's FQDN.",
    )
    shared_params_file: str | None = Field(
        default=None,
        description="A fixed path on storage that every node sees: before torchrun starts, the run's "
        "train_params.yaml is copied there, for the other nodes' `--config` when nnodes > 1.",
    )
    threads_per_process: int = Field(default=1, gt=0, description="OMP_NUM_THREADS of each process.")

    def processes(self) -> int:
        if self.nproc_per_node:
            return self.nproc_per_node
        import torch  # here, not at the top: seconds to import, which only the training step pays

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
            if self.local_addr:
                launch.append(f"--local_addr={self.local_addr}")
        return [*launch, "-m", TRAIN_MODULE, "--config", str(params_file)]

    def share_params(self, params_file: Path) -> Path | None:
        """Copy the run's parameters to `shared_params_file` (atomically), where the other nodes read them."""
        if not self.shared_params_file:
            return None
        shared = Path(self.shared_params_file)
        write_text_atomically(shared, params_file.read_text(encoding="utf-8"))
        return shared

    def run(self, context: dg.AssetExecutionContext, params_file: Path) -> dg.MaterializeResult:
        """Train; the result carries the metadata that the script reported at the end."""
        if shared := self.share_params(params_file):
            context.log.info(f"trainer: the other nodes read the run's parameters from {shared}")
        invocation = dg.PipesSubprocessClient().run(
            command=self.command(params_file),
            context=context,
            env={"OMP_NUM_THREADS": str(self.threads_per_process)},
        )
        return invocation.get_materialize_result()
