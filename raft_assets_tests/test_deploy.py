"""deploy/ against the code, so that the Kubernetes files cannot drift from what they configure.

The code location loads with the k8s executor and the Helm values' environment; the run configs validate against
the asset job's config schema; the Helm values and the manifests name only variables the code reads, and agree
with each other and with the trainer's torchrun command; dagster-k8s turns the GPU steps' op tags (and the run
config's step settings) into pod specs with their GPUs. No cluster is needed: everything goes through
dagster-k8s's and the Kubernetes client's own models. (test_trainer_resource.py trains on two nodes over
loopback, one of them started with the arguments of deploy/k8s/train-workers.yaml.)
"""

import argparse
import importlib.util
import json
import re
import subprocess
import tomllib
from pathlib import Path, PurePosixPath

import dagster as dg
import kubernetes
import pytest
import yaml
from dagster_k8s import k8s_job_executor
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import (
    DagsterK8sJobConfig,
    UserDefinedDagsterK8sConfig,
    construct_dagster_k8s_job,
    get_user_defined_k8s_config,
)
from dagster_k8s.models import k8s_model_from_dict, k8s_snake_case_dict

from raft_assets.cli.serve import add_serve_arguments, argument_problem
from raft_assets.defs.deployment import gpu_op_tags
from raft_assets.defs.training.trainer import TrainerResource
from raft_assets.serving.protocol import API_KEY_VARIABLE
from raft_assets.settings import load_settings
from raft_assets_tests.dagster_dev import DAGSTER, REPO, dev_env

DEPLOY = REPO / "deploy"
RUN_CONFIG = DEPLOY / "run_config"
GPU_STEPS = {"fsdp_checkpoint": "RAFT_K8S_TRAIN_GPUS", "eval_report": "RAFT_K8S_EVAL_GPUS"}
MODELS = {"Service": kubernetes.client.V1Service, "Job": kubernetes.client.V1Job}
MODELS["PersistentVolumeClaim"] = kubernetes.client.V1PersistentVolumeClaim
MODELS["Deployment"] = kubernetes.client.V1Deployment
POD_IP = "10.1.2.3"  # what the downward API gives a pod; the run config reads it with {env: POD_IP}


def read_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def run_config(*names: str) -> dict:
    """The run config files concatenated, as the README tells users to paste them into the Launchpad."""
    return yaml.safe_load("\n".join((RUN_CONFIG / name).read_text(encoding="utf-8") for name in names))


def manifests(name: str) -> dict[str, dict]:
    """The objects of deploy/k8s/NAME, by kind, each checked against the Kubernetes client's model of its kind."""
    objects = {}
    for document in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text(encoding="utf-8")):
        k8s_model_from_dict(MODELS[document["kind"]], k8s_snake_case_dict(MODELS[document["kind"]], document))
        objects[document["kind"]] = document
    return objects


@pytest.fixture(scope="module")
def values() -> dict:
    return read_yaml(DEPLOY / "helm" / "values.yaml")


@pytest.fixture(scope="module")
def deployment(values) -> dict:
    [deployment] = values["dagster-user-deployments"]["deployments"]
    return deployment


@pytest.fixture(scope="module")
def helm_env(deployment) -> dict[str, str]:
    """The code location's environment from the Helm values (the Secret's keys are not in them)."""
    return {entry["name"]: entry["value"] for entry in deployment["env"]}


@pytest.fixture(scope="module")
def k8s_job(helm_env) -> dg.JobDefinition:
    """The asset job of definitions.py, executed afresh under the Helm values' environment (the module already
    imported keeps the executor of the environment it was first imported in)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in helm_env.items():
            patch.setenv(name, value)
        spec = importlib.util.spec_from_file_location("k8s_definitions", REPO / "raft_assets" / "definitions.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.defs.resolve_implicit_global_asset_job_def()


@pytest.fixture
def pod_ip(monkeypatch):
    monkeypatch.setenv("POD_IP", POD_IP)


def validate(job: dg.JobDefinition, config: dict, *selection: str) -> dict:
    """The run config as Dagster resolves it for a run of `selection` (all assets when empty)."""
    if selection:
        job = job.get_subset(asset_selection={dg.AssetKey(name) for name in selection})
    return dg.validate_run_config(job, config)


# --- the code location ------------------------------------------------------------------------------------


@pytest.mark.slow  # `dagster definitions validate`
def test_the_code_location_loads_with_the_k8s_executor_and_the_helm_environment(tmp_path, helm_env):
    env = dev_env(tmp_path, **helm_env, RAFT_LLM_API_KEY="from-the-secret", RAFT_JUDGE_API_KEY="from-the-secret")
    assert env["RAFT_EXECUTOR"] == "k8s"
    result = subprocess.run(
        [DAGSTER, "definitions", "validate", "-m", "raft_assets.definitions"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful for code location raft_assets" in result.stdout + result.stderr


def test_the_helm_deployment_serves_the_projects_module(deployment):
    module = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["dagster"]["module_name"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", module]
    assert deployment["includeConfigInLaunchedRuns"]["enabled"]  # runs and steps get its env, secrets, volume


def test_the_executor_is_dagster_k8s_and_the_run_configs_validate(k8s_job, pod_ip):
    assert k8s_job.executor_def is k8s_job_executor
    executor = validate(k8s_job, run_config("k8s.yaml"))["execution"]["k8s"]
    assert set(executor["per_step_k8s_config"]) <= {node.name for node in k8s_job.graph.nodes}

    for selection in [(), ("fsdp_checkpoint",)]:
        resolved = validate(k8s_job, run_config("k8s.yaml", "train-multinode.yaml"), *selection)
        trainer = resolved["resources"]["trainer"]["config"]
        assert trainer["local_addr"] == POD_IP and trainer["nnodes"] > 1
    for selection in [(), ("eval_report",)]:
        resolved = validate(k8s_job, run_config("k8s.yaml", "eval-vllm.yaml"), *selection)
        assert resolved["ops"]["eval_report"]["config"]["serve_with_vllm"]

    with pytest.raises(dg.DagsterInvalidConfigError):  # the validation does reject what the executor doesn't know
        validate(k8s_job, {"execution": {"config": {"per_step_k8s_config": {"fsdp_checkpoint": {"no": 1}}}}})


# --- the Helm values and the manifests --------------------------------------------------------------------


def variables_the_code_reads() -> set[str]:
    """Every RAFT_* variable in the package: the literal names, and `<prefix>_<suffix>` of `endpoint_variables`."""
    sources = {path: path.read_text(encoding="utf-8") for path in (REPO / "raft_assets").rglob("*.py")}
    names = {name for text in sources.values() for name in re.findall(r"\bRAFT_[A-Z0-9_]*[A-Z0-9]\b", text)}
    settings = sources[REPO / "raft_assets" / "settings.py"]
    prefixes = set(re.findall(r'endpoint_variables\("(RAFT_[A-Z0-9_]+)"', settings))
    suffixes = set(re.findall(r"\{prefix\}_([A-Z0-9_]+)", settings))
    assert prefixes and suffixes >= {"BASE_URL", "API_KEY"}
    return names | {f"{prefix}_{suffix}" for prefix in prefixes for suffix in suffixes}


def test_deploy_names_only_variables_that_the_code_reads():
    known = variables_the_code_reads()
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            named = set(re.findall(r"\bRAFT_[A-Z0-9_]*[A-Z0-9]\b", path.read_text(encoding="utf-8")))
            assert named <= known, f"{path.relative_to(REPO)} names {sorted(named - known)}, which no code reads"


def test_the_helm_values_configure_the_code_location_without_secrets(values, deployment, helm_env):
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert helm_env["RAFT_EXECUTOR"] == "k8s"
    for entry in deployment["env"]:
        kubernetes_object(kubernetes.client.V1EnvVar, entry)
        assert not re.search(r"KEY|TOKEN|PASSWORD|SECRET", entry["name"]), f"{entry['name']}: use envSecrets"
    assert deployment["envSecrets"] and "postgresqlPassword" not in values["postgresql"]

    concurrency = values["concurrency"]
    assert concurrency["enabled"] and concurrency["pools"]["granularity"] == "op"
    assert concurrency["pools"]["defaultLimit"] >= 1 and concurrency["runs"]["maxConcurrentRuns"] >= 1


def kubernetes_object(model: type, document: dict):
    return k8s_model_from_dict(model, k8s_snake_case_dict(model, document))


def shared_mount(pod_volumes: list[dict], mounts: list[dict], claim: str) -> PurePosixPath:
    """Where a pod mounts the PersistentVolumeClaim `claim`."""
    [volume] = [v for v in pod_volumes if v.get("persistentVolumeClaim", {}).get("claimName") == claim]
    [mount] = [m for m in mounts if m["name"] == volume["name"]]
    return PurePosixPath(mount["mountPath"])


def test_every_pod_mounts_the_one_read_write_many_volume_that_holds_the_files(deployment, helm_env, pod_ip):
    claim = manifests("shared-storage.yaml")["PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for volume in deployment["volumes"]:
        kubernetes_object(kubernetes.client.V1Volume, volume)
    mount = shared_mount(deployment["volumes"], deployment["volumeMounts"], claim["metadata"]["name"])
    for name in ["RAFT_SOURCES", "RAFT_DATA_DIR", "RAFT_CHECKPOINT_DIR", "RAFT_BASE_MODEL", "HF_HOME"]:
        assert PurePosixPath(helm_env[name]).is_relative_to(mount), name

    pod = manifests("train-workers.yaml")["Job"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert shared_mount(pod["volumes"], container["volumeMounts"], claim["metadata"]["name"]) == mount
    trainer = run_config("train-multinode.yaml")["resources"]["trainer"]["config"]
    assert PurePosixPath(trainer["shared_params_file"]).is_relative_to(mount)
    image = deployment["image"]
    assert container["image"] == f"{image['repository']}:{image['tag']}"


def worker_command(index: int, pod_ip: str) -> list[str]:
    """What a pod of the workers Job runs, as its shell and Kubernetes expand it (`index`: JOB_COMPLETION_INDEX)."""
    [container] = manifests("train-workers.yaml")["Job"]["spec"]["template"]["spec"]["containers"]
    shell, flag, script, name = container["command"]
    assert (shell, flag, name) == ("sh", "-c", "torchrun")
    launcher = (
        script.removeprefix("exec ").removesuffix(' "$@"').replace("$((JOB_COMPLETION_INDEX + 1))", str(index + 1))
    )
    assert "$" not in launcher, script  # the shell computes the rank, nothing else
    return [*launcher.split(" "), *(arg.replace("$(POD_IP)", pod_ip) for arg in container["args"])]


@pytest.fixture
def trainer_config(k8s_job, pod_ip) -> dict:
    """The trainer's config for a multi-node run: train-multinode.yaml as Dagster resolves it."""
    resolved = validate(k8s_job, run_config("k8s.yaml", "train-multinode.yaml"), "fsdp_checkpoint")
    return resolved["resources"]["trainer"]["config"]


def test_the_workers_run_the_trainers_torchrun_command_as_the_next_nodes(helm_env, trainer_config):
    trainer = TrainerResource(**trainer_config)
    objects = manifests("train-workers.yaml")
    job, service = objects["Job"], objects["Service"]
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == trainer.nnodes - 1
    [port] = service["spec"]["ports"]
    assert trainer.rdzv_endpoint == f"localhost:{port['port']}"  # node 0 hosts the rendezvous

    for index in range(trainer.nnodes - 1):
        worker = worker_command(index, "10.9.9.9")
        endpoint = f"{service['metadata']['name']}:{port['port']}"
        node = TrainerResource(
            **{**trainer_config, "node_rank": index + 1, "rdzv_endpoint": endpoint, "local_addr": "10.9.9.9"}
        )
        expected = node.command(Path(trainer.shared_params_file))
        assert worker[:3] == ["python", "-m", "torch.distributed.run"] and expected[1:3] == worker[1:3]
        options, script = worker[3 : worker.index("-m", 3)], worker[worker.index("-m", 3) :]
        assert sorted(options) == sorted(expected[3 : expected.index("-m", 3)])
        assert script == expected[expected.index("-m", 3) :]

    [container] = job["spec"]["template"]["spec"]["containers"]
    env = {entry["name"]: entry for entry in container["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["OMP_NUM_THREADS"]["value"] == str(trainer.threads_per_process)
    gpus = helm_env["RAFT_K8S_TRAIN_GPUS"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == gpus == str(trainer.nproc_per_node)


def test_the_rendezvous_service_selects_the_fsdp_checkpoint_step_pod(k8s_job):
    service = manifests("train-workers.yaml")["Service"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    pod = step_pod(k8s_job, "fsdp_checkpoint", {})
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()


def test_the_eval_run_config_sets_vllm_tensor_parallelism_to_the_eval_pods_gpus(helm_env):
    vllm = run_config("eval-vllm.yaml")["resources"]["vllm"]["config"]
    assert str(vllm["tensor_parallel_size"]) == helm_env["RAFT_K8S_EVAL_GPUS"]


def test_the_serve_deployment_runs_the_serve_command_on_the_shared_index_and_checkpoints(deployment, helm_env):
    objects = manifests("serve.yaml")
    pod_template = objects["Deployment"]["spec"]["template"]
    pod = pod_template["spec"]
    [container] = pod["containers"]
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    assert container["command"] == ["raft-assets", "serve"]
    args = parser.parse_args(container["args"])
    assert argument_problem(args) is None
    assert (args.backend, args.host) == ("vllm", "0.0.0.0")  # vLLM in the pod; the service on every interface
    gpus = container["resources"]["limits"]["nvidia.com/gpu"]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == gpus == str(args.tensor_parallel_size)
    image = deployment["image"]
    assert container["image"] == f"{image['repository']}:{image['tag']}"

    # The index and the checkpoints where the pipeline's steps write them, on the shared volume.
    env = {entry["name"]: entry for entry in container["env"]}
    for name in ["RAFT_DATA_DIR", "RAFT_CHECKPOINT_DIR", "HF_HOME"]:
        assert env[name]["value"] == helm_env[name], name
    claim = manifests("shared-storage.yaml")["PersistentVolumeClaim"]["metadata"]["name"]
    mount = shared_mount(pod["volumes"], container["volumeMounts"], claim)
    assert PurePosixPath(helm_env["RAFT_DATA_DIR"]).is_relative_to(mount)
    [shm] = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    assert [v["emptyDir"] for v in pod["volumes"] if v["name"] == shm["name"]] == [{"medium": "Memory"}]
    # The service's key from the deployment's Secret, when it holds one.
    key = env[API_KEY_VARIABLE]["valueFrom"]["secretKeyRef"]
    assert key == {"name": deployment["envSecrets"][0]["name"], "key": API_KEY_VARIABLE, "optional": True}

    # The Service reaches the pods on the port the command listens on; the probes ask /health, which needs no key.
    [port] = container["ports"]
    assert port["containerPort"] == args.port
    service = objects["Service"]
    [service_port] = service["spec"]["ports"]
    assert service_port["targetPort"] == port["name"]
    labels = pod_template["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= labels
    assert objects["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": port["name"]}, probe


# --- the GPU steps' pods ----------------------------------------------------------------------------------


def step_pod(job: dg.JobDefinition, step: str, executor_config: dict) -> dict:
    """The pod template of the Kubernetes Job that the k8s_job_executor launches for `step`, built the way its
    step handler builds it: the executor's step config, then the op's `dagster-k8s/config` tag, then the
    per-step config, merged by dagster-k8s and turned into a V1Job by dagster-k8s."""
    step_config = UserDefinedDagsterK8sConfig.from_dict(executor_config.get("step_k8s_config", {}))
    op_tags = get_user_defined_k8s_config(job.graph.node_named(step).tags)  # validates the tag
    per_step = UserDefinedDagsterK8sConfig.from_dict(executor_config.get("per_step_k8s_config", {}).get(step, {}))
    context = K8sContainerContext(run_k8s_config=step_config)
    for layer in (op_tags, per_step):
        context = context.merge(K8sContainerContext(run_k8s_config=layer))
    v1_job = construct_dagster_k8s_job(
        job_config=DagsterK8sJobConfig(job_image="registry.example.com/raft-assets:0.1.0"),
        args=["dagster", "api", "execute_step"],
        job_name=f"dagster-step-{step.replace('_', '-')}",
        user_defined_k8s_config=context.run_k8s_config,
        component="step_worker",
        labels={"dagster/op": step},
    )
    return kubernetes.client.ApiClient().sanitize_for_serialization(v1_job)["spec"]["template"]


def test_the_gpu_steps_get_their_gpus_shared_memory_and_pod_ip(k8s_job):
    executor = run_config("k8s.yaml")["execution"]["config"]
    for step in GPU_STEPS:
        # as many as the op tag says (RAFT_K8S_*_GPUS when the asset's module was imported, see below)
        tag = json.loads(k8s_job.graph.node_named(step).tags["dagster-k8s/config"])
        gpus = tag["container_config"]["resources"]["limits"]["nvidia.com/gpu"]
        pod = step_pod(k8s_job, step, executor)
        [container] = pod["spec"]["containers"]
        resources = container["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == gpus
        per_step = executor["per_step_k8s_config"][step]["container_config"]["resources"]
        assert resources["requests"]["memory"] == per_step["requests"]["memory"]  # merged, not replaced
        [shm] = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == shm["name"]]
        assert volume["emptyDir"] == {"medium": "Memory"}
        [pod_ip] = [e for e in container["env"] if e["name"] == "POD_IP"]
        assert pod_ip["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        assert pod["spec"]["tolerations"]

    cpu_pod = step_pod(k8s_job, "chunks", executor)
    [container] = cpu_pod["spec"]["containers"]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]


@pytest.mark.parametrize("gpus", ["4", "16"])
def test_the_gpu_count_comes_from_the_variable(monkeypatch, gpus):
    monkeypatch.setenv("RAFT_K8S_TRAIN_GPUS", gpus)
    config = get_user_defined_k8s_config(
        {key: json.dumps(value) for key, value in gpu_op_tags(load_settings().train_gpus).items()}
    )
    assert config.container_config["resources"]["limits"] == {"nvidia.com/gpu": gpus}


@pytest.mark.parametrize("gpus", ["eight", "0", "-1", "2.5", ""])
def test_an_invalid_gpu_count_is_a_clear_error(monkeypatch, gpus):
    monkeypatch.setenv("RAFT_K8S_TRAIN_GPUS", gpus)
    with pytest.raises(ValueError, match=rf"RAFT_K8S_TRAIN_GPUS={gpus!r}: expected a whole number of GPUs"):
        load_settings()
