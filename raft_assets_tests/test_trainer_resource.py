import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from raft_assets.defs.training.trainer import TRAIN_MODULE, TrainerResource
from raft_assets_tests.dagster_dev import REPO, free_port
from raft_assets_tests.test_deploy import manifests, run_config, worker_command
from raft_assets_tests.test_train_script import inputs as train_inputs  # noqa: F401 (a fixture: tiny model, data)
from raft_assets_tests.test_train_script import write_config


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


def test_shared_params_are_copied_atomically_for_the_other_nodes(tmp_path):
    params = tmp_path / "run" / "train_params.yaml"
    params.parent.mkdir()
    params.write_text("base_model: /models/x\n", encoding="utf-8")
    shared = tmp_path / "shared" / "multinode" / "train_params.yaml"
    assert TrainerResource().share_params(params) is None  # not configured: nothing written
    assert TrainerResource(shared_params_file=str(shared)).share_params(params) == shared
    assert shared.read_text(encoding="utf-8") == "base_model: /models/x\n"
    assert [p.name for p in shared.parent.iterdir()] == ["train_params.yaml"]  # no temporary file left


def test_local_addr_is_passed_to_torchrun_on_several_nodes_only():
    multi = TrainerResource(nproc_per_node=1, nnodes=2, rdzv_endpoint="h:1", local_addr="10.0.0.7")
    assert "--local_addr=10.0.0.7" in multi.command(Path("p.yaml"))
    single = TrainerResource(nproc_per_node=1, local_addr="10.0.0.7")
    assert not any(argument.startswith("--local_addr") for argument in single.command(Path("p.yaml")))


@pytest.mark.torchrun
@pytest.mark.timeout(240)
@pytest.mark.filterwarnings("ignore:AssetExecutionContext.run_id is deprecated:DeprecationWarning")  # dagster's Pipes
def test_a_worker_started_as_the_kubernetes_manifest_says_joins_the_training_the_resource_starts(
    train_inputs,  # noqa: F811 (the fixture imported above)
    tmp_path,
):
    """Two nodes on this machine, one process each. Node 0 is this resource under Dagster Pipes, configured as
    deploy/run_config/train-multinode.yaml configures the fsdp_checkpoint step pod; node 1 runs the command of
    deploy/k8s/train-workers.yaml. Loopback addresses, one process per node and a temporary shared folder
    replace the cluster's; everything else is the files' own."""
    config = run_config("train-multinode.yaml")["resources"]["trainer"]["config"]
    port, shared = free_port(), tmp_path / "shared" / "train_params.yaml"
    service_port = config["rdzv_endpoint"].rsplit(":", 1)[1]
    loopback = {
        "python": sys.executable,
        f"--nproc_per_node={config['nproc_per_node']}": "--nproc_per_node=1",
        f"--rdzv_endpoint=raft-train-rdzv:{service_port}": f"--rdzv_endpoint=127.0.0.1:{port}",
        config["shared_params_file"]: str(shared),
    }
    manifest = worker_command(0, "127.0.0.1")
    worker = [loopback.get(argument, argument) for argument in manifest]
    assert sum(a != b for a, b in zip(worker, manifest, strict=True)) == len(loopback)
    loopback_node0 = {"nproc_per_node": 1, "rdzv_endpoint": f"localhost:{port}", "local_addr": "127.0.0.1"}
    node0 = TrainerResource(**{**config, **loopback_node0, "shared_params_file": str(shared)})
    shared.parent.mkdir()
    shared.write_text("an earlier run's: node 0 replaces it before the other nodes read it\n", encoding="utf-8")
    output_dir = tmp_path / "run"
    params_file = write_config(output_dir, train_inputs, max_steps=2, save_every_steps=None, eval_every_steps=None)

    @dg.asset
    def fsdp_checkpoint(context: dg.AssetExecutionContext, trainer: TrainerResource) -> dg.MaterializeResult:
        return trainer.run(context, params_file)

    log = tmp_path / "worker.log"
    with log.open("w") as output:
        process = subprocess.Popen(worker, cwd=REPO, env=worker_env(), stdout=output, stderr=subprocess.STDOUT)
        try:
            result = dg.materialize([fsdp_checkpoint], resources={"trainer": node0}, raise_on_error=False)
            process.wait(timeout=120)
        finally:
            process.kill()
    assert result.success and process.returncode == 0, log.read_text()[-3000:]
    assert shared.read_text(encoding="utf-8") == params_file.read_text(encoding="utf-8")
    (materialization,) = result.asset_materializations_for_node("fsdp_checkpoint")
    assert materialization.metadata["steps"].value == 2  # through Pipes, whichever node got global rank 0
    assert {p.name for p in (output_dir / "step_000002").glob("*.distcp")} == {"__0_0.distcp", "__1_0.distcp"}


def worker_env() -> dict[str, str]:
    """This environment without Dagster Pipes (a worker pod has none), with the manifest's variables."""
    [container] = manifests("train-workers.yaml")["Job"]["spec"]["template"]["spec"]["containers"]
    env = {key: value for key, value in os.environ.items() if not key.startswith("DAGSTER_PIPES")}
    return env | {entry["name"]: entry["value"] for entry in container["env"] if "value" in entry}
