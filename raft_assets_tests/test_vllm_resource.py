"""The `vllm` resource against a stand-in `vllm` executable: a script that parses the same arguments and
serves `GET /v1/models` with http.server, with switches for crashing, never getting ready and ignoring SIGTERM."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import dagster as dg
import pytest

from raft_assets.defs.evaluation.vllm import ServedModel, VLLMResource, free_port, list_models, redacted

STAND_IN = """#!{python}
import argparse, json, os, signal, subprocess, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("command", choices=["serve"])
parser.add_argument("model")
parser.add_argument("--tensor-parallel-size", type=int, required=True)
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--host", required=True)
parser.add_argument("--gpu-memory-utilization", type=float, required=True)
parser.add_argument("--max-model-len", type=int)
parser.add_argument("--served-model-name")
parser.add_argument("--api-key")
# the stand-in's own switches, passed through extra_args
parser.add_argument("--delay", type=float, default=0.5)
parser.add_argument("--pid-file")
parser.add_argument("--crash", action="store_true")
parser.add_argument("--never-ready", action="store_true")
parser.add_argument("--ignore-sigterm", action="store_true")
args = parser.parse_args()
args.api_key = args.api_key or os.environ.get("VLLM_API_KEY")  # as vLLM: --api-key, else VLLM_API_KEY

if args.crash:
    sys.exit("stand-in: CUDA out of memory while loading " + args.model)
if args.ignore_sigterm:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by the worker too
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # like vLLM's workers
if args.pid_file:
    with open(args.pid_file, "w") as pids:
        json.dump([worker.pid, __import__("os").getpid()], pids)
print("stand-in: loading", args.model, flush=True)
time.sleep(600 if args.never_ready else args.delay)


class Models(BaseHTTPRequestHandler):
    def do_GET(self):
        if args.api_key and self.headers.get("Authorization") != "Bearer " + args.api_key:
            self.send_response(401)
            self.end_headers()
            return
        body = json.dumps({{"object": "list", "data": [{{"id": args.served_model_name or args.model}}]}}).encode()
        self.send_response(200 if self.path == "/v1/models" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


HTTPServer((args.host, args.port), Models).serve_forever()
"""


@pytest.fixture
def stand_in(tmp_path: Path) -> str:
    script = tmp_path / "vllm"
    script.write_text(STAND_IN.format(python=sys.executable), encoding="utf-8")
    script.chmod(0o755)
    return str(script)


def alive(pid: int) -> bool:
    """Running: neither gone nor a zombie (left to an init that may not reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def all_gone(pids: list[int], timeout_s: float = 5.0) -> bool:
    """Whether every process has ended within a moment: a killed worker takes a few ms to die."""
    deadline = time.monotonic() + timeout_s
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_default_command():
    assert VLLMResource().command("/models/Meta-Llama-3-8B-Instruct") == [
        "vllm",
        "serve",
        "/models/Meta-Llama-3-8B-Instruct",
        "--tensor-parallel-size",
        "1",
        "--port",
        "8000",
        "--host",
        "127.0.0.1",
        "--gpu-memory-utilization",
        "0.9",
    ]


def test_full_command_and_its_redacted_form():
    resource = VLLMResource(
        executable="/opt/venv/bin/vllm",
        tensor_parallel_size=2,
        port=8001,
        host="0.0.0.0",
        gpu_memory_utilization=0.85,
        max_model_len=8192,
        served_model_name="raft-8b",
        api_key="s3cret",
        extra_args=["--dtype", "bfloat16", "--enable-prefix-caching"],
    )
    command = resource.command(Path("checkpoints/hf/run 1"))
    assert command == [
        "/opt/venv/bin/vllm",
        "serve",
        "checkpoints/hf/run 1",  # one argument, spaces and all: no shell in between
        "--tensor-parallel-size",
        "2",
        "--port",
        "8001",
        "--host",
        "0.0.0.0",
        "--gpu-memory-utilization",
        "0.85",
        "--max-model-len",
        "8192",
        "--served-model-name",
        "raft-8b",
        "--dtype",
        "bfloat16",
        "--enable-prefix-caching",
    ]
    assert resource.command("m", port=9000)[5:7] == ["--port", "9000"]
    assert resource.environment()["VLLM_API_KEY"] == "s3cret"  # the key goes in the environment, not in argv
    assert VLLMResource().environment() == dict(os.environ)  # no key: the environment as it is
    extra = ["--api-key", "other", "--api-key=another"]
    assert redacted([*command, *extra]) == [*command, "--api-key", "REDACTED", "--api-key=REDACTED"]


def test_serve_waits_until_a_stand_in_server_is_ready_and_stops_it(stand_in, tmp_path, caplog):
    pid_file = tmp_path / "pids.json"
    resource = VLLMResource(
        executable=stand_in, port=0, api_key="s3cret", extra_args=["--delay", "1", "--pid-file", str(pid_file)]
    )
    log = logging.getLogger("test_vllm")
    with (
        caplog.at_level(logging.INFO, logger="test_vllm"),
        resource.serve("checkpoints/hf/run1", log=log, log_dir=tmp_path / "logs") as served,
    ):
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", served.base_url)
        assert served.model == "checkpoints/hf/run1" and served.api_key == "s3cret"
        assert list_models(served, use_proxies=False) == ["checkpoints/hf/run1"]  # ready, key accepted
        pids = json.loads(pid_file.read_text())
        assert all(alive(pid) for pid in pids)
    assert all_gone(pids)  # the server and its worker
    assert "stand-in: loading checkpoints/hf/run1" in served.log_file.read_text()
    assert served.log_file.parent == tmp_path / "logs"
    assert "s3cret" not in caplog.text and "--api-key" not in caplog.text
    assert "s3cret" not in repr(served)


def test_a_stand_in_server_stops_when_the_block_raises(stand_in, tmp_path):
    pid_file = tmp_path / "pids.json"
    resource = VLLMResource(
        executable=stand_in,
        port=free_port("127.0.0.1"),
        served_model_name="raft-8b",
        extra_args=["--pid-file", str(pid_file)],
    )
    with pytest.raises(RuntimeError, match="evaluation broke"), resource.serve("checkpoints/hf/run1") as served:
        assert served.model == "raft-8b"
        assert served.base_url == f"http://127.0.0.1:{resource.port}/v1"
        assert list_models(served, use_proxies=False) == ["raft-8b"]
        raise RuntimeError("evaluation broke")
    assert all_gone(json.loads(pid_file.read_text()))


def test_a_stand_in_server_that_ignores_sigterm_is_killed_after_the_grace_period(stand_in, tmp_path):
    pid_file = tmp_path / "pids.json"
    resource = VLLMResource(
        executable=stand_in,
        port=0,
        shutdown_grace_s=0.5,
        extra_args=["--delay", "0", "--ignore-sigterm", "--pid-file", str(pid_file)],
    )
    with resource.serve("m"):
        pids = json.loads(pid_file.read_text())
    assert all_gone(pids)


def test_a_stand_in_server_that_exits_fails_fast_with_its_output(stand_in):
    resource = VLLMResource(executable=stand_in, port=0, extra_args=["--crash"])
    with (
        pytest.raises(dg.Failure, match=r"exited with code 1(.|\n)*CUDA out of memory while loading m"),
        resource.serve("m"),
    ):
        pytest.fail("the block must not run")


def test_a_stand_in_server_that_never_gets_ready_times_out(stand_in, tmp_path):
    pid_file = tmp_path / "pids.json"
    resource = VLLMResource(
        executable=stand_in, port=0, startup_timeout_s=1.5, extra_args=["--never-ready", "--pid-file", str(pid_file)]
    )
    with (
        pytest.raises(dg.Failure, match=r"not ready at .* after 1.5 s(.|\n)*stand-in: loading m"),
        resource.serve("m"),
    ):
        pytest.fail("the block must not run")
    assert all_gone(json.loads(pid_file.read_text()))


def test_a_missing_executable_is_a_clear_error(tmp_path):
    with (
        pytest.raises(dg.Failure, match="cannot run"),
        VLLMResource(executable=str(tmp_path / "nope"), port=0).serve("m"),
    ):
        pytest.fail("the block must not run")


class _Models(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"object": "list", "data": [{"id": "raft-8b"}]}).encode()
        self.send_response(200 if self.path == "/v1/models" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def running_server() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Models)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    server.server_close()


def test_attach_starts_nothing_and_checks_a_stand_in_server(running_server, tmp_path):
    never_run = str(tmp_path / "not-vllm")  # starting anything would fail with "cannot run"
    resource = VLLMResource(executable=never_run, attach_url=running_server + "/", served_model_name="raft-8b")
    with resource.serve("checkpoints/hf/run1") as served:
        assert served == ServedModel(running_server, "raft-8b")
    with (
        pytest.raises(dg.Failure, match=r"serves \['raft-8b'\], not 'checkpoints/hf/run1'"),
        VLLMResource(executable=never_run, attach_url=running_server).serve("checkpoints/hf/run1"),
    ):
        pytest.fail("the block must not run")
    closed = f"http://127.0.0.1:{free_port('127.0.0.1')}/v1"
    with pytest.raises(dg.Failure, match="does not answer"), VLLMResource(attach_url=closed).serve("raft-8b"):
        pytest.fail("the block must not run")
