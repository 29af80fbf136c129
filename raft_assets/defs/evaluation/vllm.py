"""The `vllm` resource: serves a checkpoint with `vllm serve` for the length of a `with` block, or attaches.

The command is a list of arguments, never a shell string. The server runs in its own process group, so
that stopping it also stops the workers it spawns: SIGTERM first, SIGKILL after a grace period, whatever
happened in the block. The API key reaches the server in its environment (VLLM_API_KEY), not on its command
line, which other users of the machine can read and which vLLM logs among its "non-default args"; it is
never logged.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
from pydantic import Field

POLL_INTERVAL_S = 0.25
PROBE_TIMEOUT_S = 5.0
LOG_TAIL_LINES = 40
REDACTED = "REDACTED"
_ANY_ADDRESS = {"0.0.0.0", "::"}


@dataclass(frozen=True)
class ServedModel:
    """An OpenAI-compatible endpoint and the model name to ask it for."""

    base_url: str  # ends with /v1
    model: str
    api_key: str | None = field(default=None, repr=False)
    log_file: Path | None = None  # the server's output, when this resource started it


class VLLMResource(dg.ConfigurableResource):
    """Starts `vllm serve` for a model and stops it afterwards, or attaches to a running server."""

    executable: str = Field(default="vllm", description="The `vllm` command (a name on PATH or a path).")
    attach_url: str | None = Field(
        default=None, description="Base URL of a running server (e.g. http://host:8000/v1): nothing is started."
    )
    tensor_parallel_size: int = Field(default=1, gt=0, description="GPUs the model is split over.")
    port: int = Field(default=8000, ge=0, lt=65536, description="Port to serve on; 0 picks a free one.")
    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1, description="Share of GPU memory vLLM may use.")
    max_model_len: int | None = Field(default=None, gt=0, description="Context length; default: the model's.")
    served_model_name: str | None = Field(default=None, description="Model name clients ask for; default: the path.")
    extra_args: list[str] = Field(default_factory=list, description="More arguments, one list item each.")
    startup_timeout_s: float = Field(default=600.0, gt=0, description="How long the server may take to be ready.")
    shutdown_grace_s: float = Field(default=30.0, ge=0, description="How long SIGTERM may take before SIGKILL.")
    api_key: str | None = Field(
        default=None, repr=False, description="Key the server requires; set it with dg.EnvVar. Sent as VLLM_API_KEY."
    )

    def command(self, model_path: str | Path, port: int | None = None) -> list[str]:
        """The `vllm serve` arguments; `port` overrides the configured one (serve() resolves port 0).

        The API key is not among them: see `environment`.
        """
        command = [
            self.executable,
            "serve",
            str(model_path),
            "--tensor-parallel-size",
            str(self.tensor_parallel_size),
            "--port",
            str(self.port if port is None else port),
            "--host",
            self.host,
            "--gpu-memory-utilization",
            str(self.gpu_memory_utilization),
        ]
        if self.max_model_len is not None:
            command += ["--max-model-len", str(self.max_model_len)]
        if self.served_model_name:
            command += ["--served-model-name", self.served_model_name]
        return [*command, *self.extra_args]

    def environment(self) -> dict[str, str]:
        """The server's environment: this process's, with the API key as VLLM_API_KEY when one is set."""
        environment = dict(os.environ)
        if self.api_key:
            environment["VLLM_API_KEY"] = self.api_key
        return environment

    @contextmanager
    def serve(
        self, model_path: str | Path, log: logging.Logger | None = None, log_dir: Path | None = None
    ) -> Iterator[ServedModel]:
        """The model behind an OpenAI-compatible endpoint for the block: started and stopped, or attached to.

        The server's output goes to `vllm_<port>.log` in `log_dir` (default: a temporary folder).
        """
        log = log or dg.get_dagster_logger()
        model = self.served_model_name or str(model_path)
        if self.attach_url:
            yield self._attach(model, log)
            return
        with _log_folder(log_dir) as folder:
            port = self.port or free_port(self.host)
            log_file = folder / f"vllm_{port}.log"
            served = ServedModel(f"http://{_client_host(self.host)}:{port}/v1", model, self.api_key, log_file)
            process = self._start(model_path, port, log_file, log)
            try:
                self._wait_until_ready(process, served)
                log.info(f"vllm: serving {model} at {served.base_url}")
                yield served
            finally:
                stop_process_group(process, self.shutdown_grace_s)
                log.info(f"vllm: stopped the server (exit code {process.returncode})")

    def _attach(self, model: str, log: logging.Logger) -> ServedModel:
        served = ServedModel(self.attach_url.rstrip("/"), model, self.api_key)
        try:
            models = list_models(served, use_proxies=True)
        except (OSError, ValueError) as error:
            raise dg.Failure(f"vllm: the server at {served.base_url} does not answer: {error}") from error
        if model not in models:
            raise dg.Failure(
                f"vllm: the server at {served.base_url} serves {models}, not {model!r} (set served_model_name)."
            )
        log.info(f"vllm: attached to {served.base_url} ({model})")
        return served

    def _start(self, model_path: str | Path, port: int, log_file: Path, log: logging.Logger) -> subprocess.Popen:
        command = self.command(model_path, port)
        log.info(f"vllm: starting `{shlex.join(redacted(command))}`, output in {log_file}")
        try:
            with log_file.open("wb") as output:
                return subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    env=self.environment(),
                    start_new_session=True,
                )
        except OSError as error:
            raise dg.Failure(
                f"vllm: cannot run {self.executable!r} ({error}); install the `gpu` extra or set `executable`."
            ) from error

    def _wait_until_ready(self, process: subprocess.Popen, served: ServedModel) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if process.poll() is not None:
                raise dg.Failure(
                    f"vllm: the server exited with code {process.returncode} before it was ready. "
                    f"Last lines of {served.log_file}:\n{log_tail(served.log_file)}"
                )
            if _answers(served):
                return
            if time.monotonic() > deadline:
                raise dg.Failure(
                    f"vllm: the server was not ready at {served.base_url} after {self.startup_timeout_s:g} s "
                    f"(startup_timeout_s). Last lines of {served.log_file}:\n{log_tail(served.log_file)}"
                )
            time.sleep(POLL_INTERVAL_S)


def redacted(command: list[str]) -> list[str]:
    """The command with the value of every `--api-key` (one passed in extra_args) replaced, for logs."""
    shown = []
    for argument in command:
        if shown and shown[-1] == "--api-key":
            argument = REDACTED
        elif argument.startswith("--api-key="):
            argument = f"--api-key={REDACTED}"
        shown.append(argument)
    return shown


def list_models(served: ServedModel, use_proxies: bool) -> list[str]:
    """The ids that `GET {base_url}/models` lists; raises OSError (URLError, HTTPError…) unless it answers 200."""
    request = urllib.request.Request(f"{served.base_url}/models")
    if served.api_key:
        request.add_header("Authorization", f"Bearer {served.api_key}")
    opener = (
        urllib.request.build_opener() if use_proxies else urllib.request.build_opener(urllib.request.ProxyHandler({}))
    )
    with opener.open(request, timeout=PROBE_TIMEOUT_S) as response:
        body = json.load(response)
    return [entry["id"] for entry in body.get("data", [])]


def _answers(served: ServedModel) -> bool:
    try:
        list_models(served, use_proxies=False)
    except (OSError, ValueError):
        return False
    return True


def stop_process_group(process: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the process's group, SIGKILL what is left after `grace_s` (or once the leader has exited)."""
    _signal_group(process, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    _signal_group(process, signal.SIGKILL)
    process.wait()


def _signal_group(process: subprocess.Popen, signum: signal.Signals) -> None:
    with suppress(ProcessLookupError):  # the whole group is gone already
        os.killpg(process.pid, signum)


@contextmanager
def _log_folder(folder: Path | None) -> Iterator[Path]:
    """`folder`, created if needed, or a temporary folder removed afterwards."""
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="vllm_") as temporary:
        yield Path(temporary)


def free_port(host: str) -> int:
    """A port that nothing listens on right now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def log_tail(path: Path | None, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log file, for error messages."""
    if path is None or not path.exists():
        return "(no output)"
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]) or "(no output)"


def _client_host(host: str) -> str:
    """Where a client on this machine reaches a server listening on `host`."""
    if host in _ANY_ADDRESS:
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
