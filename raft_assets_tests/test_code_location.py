"""The code location loads in Dagster's own tools: `dagster definitions validate` and `dagster dev`."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[1]
DAGSTER = str(Path(sys.executable).parent / "dagster")

ASSET_NODES = "{ assetNodes { assetKey { path } groupName isPartitioned } }"


def dagster_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    return {**os.environ, "DAGSTER_HOME": str(home), "RAFT_DATA_DIR": str(tmp_path / "generated")}


@pytest.mark.parametrize("target", [["-w", "workspace.yaml"], ["-m", "raft_assets.definitions"]])
def test_definitions_validate(tmp_path, target):
    result = subprocess.run(
        [DAGSTER, "definitions", "validate", *target],
        cwd=REPO,
        env=dagster_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Validation successful for code location raft_assets" in result.stdout + result.stderr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def dagster_dev(tmp_path):
    """`dagster dev` (webserver and daemon) on a free port; yields the GraphQL URL."""
    port = free_port()
    process = subprocess.Popen(
        [DAGSTER, "dev", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO,
        env=dagster_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/graphql"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert process.poll() is None, "dagster dev exited"
            try:
                if requests.post(url, json={"query": ASSET_NODES}, timeout=5).ok:
                    break
            except requests.ConnectionError:
                time.sleep(1)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_dagster_dev_serves_the_asset_graph(dagster_dev):
    response = requests.post(dagster_dev, json={"query": ASSET_NODES}, timeout=30).json()
    nodes = {tuple(node["assetKey"]["path"]): node for node in response["data"]["assetNodes"]}
    assert set(nodes) >= {("documents",), ("chunks",)}
    assert nodes[("documents",)]["isPartitioned"] and nodes[("chunks",)]["groupName"] == "ingestion"

    query = (
        "{ repositoriesOrError { ... on RepositoryConnection { nodes { sensors { name sensorState { status } } } } } }"
    )
    repositories = requests.post(dagster_dev, json={"query": query}, timeout=30).json()
    [repository] = repositories["data"]["repositoriesOrError"]["nodes"]
    states = {sensor["name"]: sensor["sensorState"]["status"] for sensor in repository["sensors"]}
    assert states["doc_sources_sensor"] == "RUNNING"
