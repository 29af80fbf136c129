"""Helpers shared by the benchmarks: writing a section of RESULTS.md (replaced in place when it is there,
appended otherwise), the machine description, running a measured step in a child process, and starting the
OpenAI-compatible test server in a process of its own."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).with_name("RESULTS.md")


def record(section: str, results_file: Path = RESULTS) -> None:
    """`section` starts with its `## ` heading; the old section runs up to the next `## ` heading."""
    heading = section.splitlines()[0]
    text = results_file.read_text(encoding="utf-8") if results_file.exists() else "# Benchmark results\n"
    lines = text.splitlines()
    if heading in lines:
        start = lines.index(heading)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start:end] = section.rstrip("\n").splitlines() + ([""] if end < len(lines) else [])
    else:
        lines += ["", *section.rstrip("\n").splitlines()]
    results_file.write_text("\n".join(lines).rstrip("\n") + "\n", encoding="utf-8")


def publish(section: str, record_it: bool, not_recordable: str | None = None) -> None:
    """Print a benchmark's section; with `record_it`, write it into RESULTS.md too, unless `not_recordable`
    says why this run's figures must not be kept (a profiled or smoke run)."""
    print(section)
    if not_recordable:
        print(f"({not_recordable}: not recorded)")
    elif record_it:
        record(section)
        print(f"Recorded in {RESULTS.relative_to(RESULTS.parents[1])}")


def start_test_server(
    repo: Path, latency_s: float, capacity: int, responder: str | None = None
) -> tuple[subprocess.Popen, str]:
    """`raft_assets_tests.openai_server` in its own process (`responder`: MODULE:FUNCTION answering each request);
    returns the process and its base URL."""
    options = ["--latency", str(latency_s), "--capacity", str(capacity)]
    options += ["--responder", responder] if responder else []
    process = subprocess.Popen(
        [sys.executable, "-m", "raft_assets_tests.openai_server", *options], cwd=repo, stdout=subprocess.PIPE, text=True
    )
    return process, process.stdout.readline().split()[-1]


def _shell(command: list[str]) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=False).stdout.strip()


def machine_description(packages: list[str]) -> dict[str, str]:
    """Date, CPUs, memory, load and the versions of `packages`: the header of a results section."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "?")
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    total_kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in packages)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return {
        "date": _shell(["date"]),
        "cpus": f"{_shell(['nproc'])} × {model}",
        "memory": f"{total_kb / 1024**2:.1f} GiB",
        "load": load,
        "python": f"Python {platform.python_version()} ({platform.system()} {platform.release()})",
        "packages": versions,
    }


def memory_status_mb(field: str) -> float:
    """A field of /proc/self/status (VmRSS, VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass(frozen=True)
class ChildRun:
    wall_s: float  # the child process from start to exit
    rusage_maxrss_mb: float  # ru_maxrss of the child, from wait4
    result: dict[str, Any]  # what the child wrote to its result file


@dataclass(frozen=True)
class Waited:
    """A child process run to its end: its exit status, wall time and wait4's rusage (the child and every process
    it waited for)."""

    status: int
    wall_s: float
    usage: resource.struct_rusage

    @property
    def cpu_s(self) -> float:
        return self.usage.ru_utime + self.usage.ru_stime


def run_logged(command: list[str], cwd: Path, log_file: Path, env: dict[str, str] | None = None) -> Waited:
    """Run `command` to its end with its output in `log_file`."""
    started = time.perf_counter()
    with log_file.open("wb") as log:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    return Waited(os.waitstatus_to_exitcode(status), time.perf_counter() - started, usage)


def run_child(command: list[str], cwd: Path, result_file: Path, log_file: Path, echo_log: bool = False) -> ChildRun:
    """Run `command` (a fresh interpreter) with its output in `log_file`; wall time and rusage come from wait4.

    Exits with the end of the log when the child fails; otherwise returns the JSON it wrote to `result_file`.
    """
    run = run_logged(command, cwd, log_file)
    if run.status != 0:
        sys.exit(f"The child {command[1:]} failed (exit {run.status}):\n{log_file.read_text()[-5000:]}")
    if echo_log:
        print(log_file.read_text())
    return ChildRun(run.wall_s, run.usage.ru_maxrss / 1024, json.loads(result_file.read_text(encoding="utf-8")))
