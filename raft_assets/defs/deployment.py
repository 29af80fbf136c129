"""Where the steps run: in local processes by default, in their own Kubernetes pods with `RAFT_EXECUTOR=k8s`.

The same definitions load in both places; only the executor and the pod specs of the GPU steps differ
(see deploy/README.md).
"""

from __future__ import annotations

import dagster as dg

EXECUTORS = ("multiprocess", "k8s")
POD_IP = "POD_IP"  # the GPU step pod's own address, for torchrun --local_addr (the trainer's `local_addr`)
SHM_VOLUME = "dshm"


def forkserver_unless_told(config: dict) -> dict:
    """Dagster's multiprocess executor starting its step processes from a forkserver that imported the code location
    once per run, unless the run config names a `start_method`: a spawned step imports it again (seconds per step).
    A step that needs torch (training, the export, local answering) imports it itself, after the fork."""
    return {"start_method": {"forkserver": {}}, **config}


MULTIPROCESS = dg.multiprocess_executor.configured(
    forkserver_unless_told, name="multiprocess", config_schema=dg.multiprocess_executor.config_schema.as_field()
)


def executor(name: str) -> dg.ExecutorDefinition:
    """The executor `name`d by `RAFT_EXECUTOR`: `multiprocess` (default) or `k8s` (one pod per step, dagster-k8s)."""
    if name == "multiprocess":
        return MULTIPROCESS
    if name == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    raise ValueError(f"RAFT_EXECUTOR={name!r}: expected one of {', '.join(EXECUTORS)}.")


def gpu_op_tags(gpus: int) -> dict[str, object]:
    """The `dagster-k8s/config` of a GPU step's pod (ignored by the local executor).

    `nvidia.com/gpu` GPUs; a memory-backed /dev/shm, since NCCL and vLLM's tensor-parallel workers exchange
    tensors through shared memory and a container gets 64 MB by default; and `POD_IP`, the pod's address,
    which multi-node training gives torchrun as `--local_addr`.
    """
    resources = {"nvidia.com/gpu": str(gpus)}
    container = {
        "resources": {"requests": resources, "limits": resources},
        "env": [{"name": POD_IP, "value_from": {"field_ref": {"field_path": "status.podIP"}}}],
        "volume_mounts": [{"name": SHM_VOLUME, "mount_path": "/dev/shm"}],
    }
    pod = {"volumes": [{"name": SHM_VOLUME, "empty_dir": {"medium": "Memory"}}]}
    return {"dagster-k8s/config": {"container_config": container, "pod_spec_config": pod}}
