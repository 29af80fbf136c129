"""`dagster dev` (webserver and daemon) in a subprocess on a free port, and GraphQL calls to it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from raft_assets.defs.instance import TEMPLATE
from raft_assets_tests.conftest import cli_env

REPO = Path(__file__).resolve().parents[1]
DAGSTER = str(Path(sys.executable).parent / "dagster")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def dev_env(tmp_path: Path, sources: Path | None = None, **extra: str) -> dict[str, str]:
    """`cli_env` with DAGSTER_HOME holding the project's dagster.yaml, as `make dev` prepares it."""
    env = cli_env(tmp_path, sources, **extra)
    home = Path(env["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(TEMPLATE, home / "dagster.yaml")
    return env


class GraphQLServerError(AssertionError):
    """A GraphQL resolver raised: the webserver answered 500 with the error's message."""


@dataclass(frozen=True)
class DagsterDev:
    """A running `dagster dev`: its UI address, a GraphQL client, and the file its output goes to."""

    url: str
    log: Path

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        response = requests.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60)
        if response.status_code >= 500:
            raise GraphQLServerError(f"{response.status_code}: {response.text[:3000]}")
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def output(self) -> str:
        """The end of what `dagster dev` (webserver, daemon, code server) printed."""
        return self.log.read_text(errors="replace")[-6000:]


@contextmanager
def dagster_dev(env: dict[str, str], startup_timeout: float = 180) -> Iterator[DagsterDev]:
    """Start `dagster dev` in the repository with `env` (its DAGSTER_HOME, RAFT_* variables), its output to
    `dagster_dev.log` beside DAGSTER_HOME; stop it after."""
    port = free_port()
    log = Path(env["DAGSTER_HOME"]).parent / "dagster_dev.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [DAGSTER, "dev", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = DagsterDev(f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            assert process.poll() is None, "dagster dev exited:\n" + server.output()
            assert time.monotonic() < deadline, (
                f"dagster dev did not serve within {startup_timeout} s:\n{server.output()}"
            )
            try:
                server.graphql("{ assetNodes { id } }")
                break
            except (requests.RequestException, GraphQLServerError):  # not listening yet, or the code not loaded
                time.sleep(1)
        yield server
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
