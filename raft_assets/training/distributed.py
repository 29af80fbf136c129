"""The training processes: the process group torchrun set up, and dying with the launcher.

Under torchrun every worker joins the process group from the environment torchrun gives it (RANK, WORLD_SIZE,
MASTER_ADDR...); run directly with `python -m`, the script forms a group of one. On Linux a worker asks the kernel
to kill it when its launcher dies, so a killed run leaves no orphan training on.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: list[float]) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()


PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_launcher() -> None:
    """Under torchrun on Linux: have the kernel SIGKILL this worker as soon as its launcher dies.

    torchrun starts each worker in a session of its own, so when the launcher is killed with its process group
    (the `raft-assets run` or Dagster step that started it, killed with SIGKILL: no signal handler runs), the
    workers would train on as orphans, writing checkpoints into the run folder that the next materialization
    resumes from. A lost machine takes every process at once; this makes a lost launcher do the same.
    Elsewhere (no torchrun, another OS) it does nothing.
    """
    if sys.platform != "linux" or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    launcher = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != launcher:  # the launcher died between the two calls: it is gone already
        os.kill(os.getpid(), signal.SIGKILL)


def init_distributed(backend: str) -> Dist:
    """The process group torchrun set up the environment for (or a group of one when run without torchrun)."""
    if "RANK" not in os.environ:  # `python -m raft_assets.training.train`: one process, no launcher
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    cuda = torch.cuda.is_available() and backend != "gloo"
    backend = backend if backend != "auto" else ("nccl" if cuda else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend=backend, device_id=device if cuda else None)
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, device, backend)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
