"""Two GPU assets in runs in progress together through a real `dagster dev` never run at the same time (pool `gpu`)."""

import shutil
import time
from collections.abc import Callable

import dagster as dg
import pytest

from raft_assets.contracts.recipes import DEFAULT_RECIPE
from raft_assets.defs.partitions import doc_sources, recipes
from raft_assets_tests.conftest import ONE_TRAINING_PROCESS, QUICK_VALIDATION, SOURCES, write_sources
from raft_assets_tests.dagster_dev import DagsterDev, GraphQLServerError, dagster_dev, dev_env
from raft_assets_tests.openai_server import OpenAITestServer
from raft_assets_tests.whole_graph import judge

pytestmark = [pytest.mark.dagster_dev, pytest.mark.torchrun]

REPOSITORY = """{ repositoriesOrError { ... on RepositoryConnection { nodes {
    name location { name } sensors { id name sensorState { status ticks(limit: 1) { status } } } } } } }"""
STOP_SENSOR = "mutation($id: String) { stopSensor(id: $id) { __typename ... on PythonError { message } } }"
LAUNCH = """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
    __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""
RUN = """query($id: ID!) { runOrError(runId: $id) { ... on Run {
    status startTime endTime stepStats { stepKey status startTime endTime } } } }"""
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}
GPU_POOL = "gpu"


def launch(server: DagsterDev, repository: dict, configs: dict[str, dict]) -> str:
    """A run of per-recipe assets (with their configs) for the default recipe (training in one process)."""
    selector = {
        "repositoryLocationName": repository["location"]["name"],
        "repositoryName": repository["name"],
        "jobName": "__ASSET_JOB",
        "assetSelection": [{"path": [asset]} for asset in configs],
    }
    params = {
        "selector": selector,
        "runConfigData": {
            "ops": {asset: {"config": config} for asset, config in configs.items()},
            "resources": ONE_TRAINING_PROCESS,
        },
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": DEFAULT_RECIPE}]},
    }
    launched = server.graphql(LAUNCH, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return launched["run"]["runId"]


def stop_sensors(server: DagsterDev, timeout: float = 120) -> dict:
    """Stop every sensor, for good: a tick in progress when it is stopped writes its sensor's state back at its end
    as it read it (running), so stop again until every sensor is stopped with no tick in progress, twice in a row.
    A stop can also fail: Dagster's `stop_sensor` adds the state of a sensor that has none yet, and when the daemon's
    first tick of that sensor added it meanwhile (a loaded machine), the insert fails ("InstigatorState ... is
    already present in storage", a 500); the next round stops the state that is now there. Returns the repository."""
    deadline, settled, failed = time.monotonic() + timeout, 0, []
    while settled < 2:
        assert time.monotonic() < deadline, f"the sensors do not stay stopped (stops that raced a first tick: {failed})"
        [repository] = server.graphql(REPOSITORY)["repositoriesOrError"]["nodes"]
        running = [sensor for sensor in repository["sensors"] if sensor["sensorState"]["status"] != "STOPPED"]
        ticking = [s for s in repository["sensors"] if any(t["status"] == "STARTED" for t in s["sensorState"]["ticks"])]
        for sensor in running:
            try:
                server.graphql(STOP_SENSOR, {"id": sensor["id"]})
            except GraphQLServerError as error:
                if "already present in storage" not in str(error):  # not the race with the daemon's first tick
                    raise
                failed.append(sensor["name"])
        settled = 0 if running or ticking else settled + 1
        time.sleep(0.5)
    return repository


def wait_for(server: DagsterDev, run_ids: list[str], timeout: float = 600) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [server.graphql(RUN, {"id": run_id})["runOrError"] for run_id in run_ids]
        if all(run["status"] in FINISHED for run in runs):
            return runs
        time.sleep(0.5)
    raise AssertionError(f"runs not finished after {timeout} s: {[run['status'] for run in runs]}")


def wait_until(ready: Callable[[], bool], what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.5)


def test_two_gpu_assets_submitted_together_never_overlap(sample_pipeline, tmp_path):
    """The evaluation run's GPU step waits on the judge (its test server holds every request) until the training
    run's GPU step waits for the pool: then the pool, not the run queue, is what keeps the two GPU steps apart.

    The training run begins with raft_dataset, outside the pool. Dagster's run queue holds back a run whose first
    steps all wait for a full pool (`block_op_concurrency_limited_runs`, on with `concurrency.pools`): a run of
    fsdp_checkpoint alone stayed queued while the evaluation held the slot, unless the daemon had taken both runs
    from the queue in the tick before the pool existed, and the test waited for it in vain."""
    project, _, _ = sample_pipeline
    data_dir = shutil.copytree(project.data_dir, tmp_path / "generated")
    checkpoint_dir = shutil.copytree(project.checkpoint_dir, tmp_path / "checkpoints")
    no_sources = write_sources(tmp_path / "sources.yaml", [])  # the sensors have nothing to add or watch
    judge_server = OpenAITestServer(judge, models=["judge"], hold_after=0)
    with judge_server:
        env = dev_env(
            tmp_path,
            no_sources,
            RAFT_DATA_DIR=str(data_dir),
            RAFT_CHECKPOINT_DIR=str(checkpoint_dir),
            RAFT_JUDGE_BASE_URL=judge_server.base_url,
            RAFT_JUDGE_MODEL="judge",
        )
        with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
            instance.add_dynamic_partitions(recipes.name, [DEFAULT_RECIPE])
            with dagster_dev(env) as server:
                repository = stop_sensors(server)  # only the two runs below: no automation reacting to them
                # raft_dataset reads every source (the sensors would have removed them)
                instance.add_dynamic_partitions(doc_sources.name, SOURCES)
                evaluation = launch(
                    server,
                    repository,
                    {
                        "eval_report": {
                            "models": ["base"],
                            "top_k": [3],
                            "without_context": False,
                            "max_new_tokens": 8,
                            "max_questions": 2,
                        }
                    },
                )
                training = launch(
                    server,
                    repository,
                    {
                        "raft_dataset": {},
                        "fsdp_checkpoint": {
                            "max_steps": 1,
                            "save_every_steps": 1,
                            "context_length": 2048,
                            **QUICK_VALIDATION,
                        },
                    },
                )
                wait_until(lambda: (stats := judge_server.stats).requests > stats.model_listings, "asked the judge")
                storage = instance.event_log_storage
                wait_until(
                    lambda: (
                        (pool := storage.get_concurrency_info(GPU_POOL)).active_run_ids == {evaluation}
                        and training in pool.pending_run_ids
                    ),
                    "the training step waiting for the pool that the evaluation's step holds",
                )
                judge_server.release()
                runs = wait_for(server, [training, evaluation])

    assert [run["status"] for run in runs] == ["SUCCESS", "SUCCESS"]
    train_step = next(step for step in runs[0]["stepStats"] if step["stepKey"] == "fsdp_checkpoint")
    [eval_step] = runs[1]["stepStats"]
    # The runs themselves were in progress together (the run queue let both start) ...
    assert max(run["startTime"] for run in runs) < min(run["endTime"] for run in runs)
    # ... but their GPU steps ran one after the other: the evaluation's, then the training's.
    assert eval_step["endTime"] <= train_step["startTime"], (eval_step, train_step)
    assert judge_server.stats.completed > 0  # the judge's replies came after its hold
