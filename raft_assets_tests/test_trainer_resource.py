import sys
from pathlib import Path

import dagster as dg
import pytest

from raft_assets.resources.trainer import TRAIN_MODULE, TrainerResource


def test_single_node_command_is_a_standalone_torchrun():
    command = TrainerResource(nproc_per_node=4).command(Path("/runs/a b/train_params.yaml"))
    assert command == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=4",
        "--standalone",
        "-m",
        TRAIN_MODULE,
        "--config",
        "/runs/a b/train_params.yaml",  # one argument, spaces and all: no shell in between
    ]


def test_multi_node_command_uses_the_c10d_rendezvous():
    trainer = TrainerResource(nproc_per_node=8, nnodes=2, node_rank=1, rdzv_endpoint="node0:29400", rdzv_id="job7")
    command = trainer.command(Path("p.yaml"))
    assert command[3:9] == [
        "--nproc_per_node=8",
        "--nnodes=2",
        "--node_rank=1",
        "--rdzv_backend=c10d",
        "--rdzv_endpoint=node0:29400",
        "--rdzv_id=job7",
    ]
    with pytest.raises(dg.Failure, match="rdzv_endpoint"):
        TrainerResource(nnodes=2).command(Path("p.yaml"))


def test_default_processes_without_gpus():
    assert TrainerResource().processes() == 2
