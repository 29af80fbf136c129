"""Where the steps run: in local processes by default, in their own Kubernetes pods with `RAFT_EXECUTOR=k8s`.

The same definitions load in both places; only the executor and the pod specs of the GPU steps differ
(see deploy/README.md).
"""

from __future__ import annotations

import os

import dagster as dg

EXECUTORS = ("multiprocess", "k8s")


def executor() -> dg.ExecutorDefinition:
    """The executor named by `RAFT_EXECUTOR`: `multiprocess` (default) or `k8s` (one pod per step, dagster-k8s)."""
    name = os.environ.get("RAFT_EXECUTOR", "multiprocess")
    if name == "multiprocess":
        return dg.multiprocess_executor
    if name == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    raise ValueError(f"RAFT_EXECUTOR={name!r}: expected one of {', '.join(EXECUTORS)}.")


def gpu_op_tags(gpus_variable: str, default_gpus: int) -> dict[str, object]:
    """Op tags that give the step's pod `nvidia.com/gpu` GPUs (the number from `gpus_variable`); ignored locally."""
    gpus = os.environ.get(gpus_variable, str(default_gpus))
    if not gpus.isdigit() or int(gpus) < 1:
        raise ValueError(f"{gpus_variable}={gpus!r}: expected a whole number of GPUs, at least 1.")
    resources = {"nvidia.com/gpu": gpus}
    return {"dagster-k8s/config": {"container_config": {"resources": {"requests": resources, "limits": resources}}}}
