"""Writing a benchmark's section of RESULTS.md: replaced in place when it is there, appended otherwise."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

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
